"""The evaluation JSON that `resnext evaluate` writes (docs/ARCHITECTURE.md), checked before anything draws it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..paths import atomic_write
from .log import number

EVALUATION_NAME = "evaluation.json"


@dataclass
class ClassResult:
    name: str
    images: int
    top1: float  # percent


@dataclass
class Evaluation:
    """Evaluation results; every number None when absent. Accuracies in percent, as the log's val.top1."""

    top1: float | None = None
    top5: float | None = None
    loss: float | None = None
    images: int | None = None
    img_s: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # mean, p90, p95, p99, p100
    weights: str | None = None
    arch: str | None = None
    per_class: list[ClassResult] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    confusion: list[list[float]] | None = None  # rows: true class, columns: predicted class


def check_evaluation(evaluation: dict, source: str = "evaluation results") -> Evaluation:
    """Validate the evaluation dict; a UserError says which field is wrong (it may come from an edited file)."""
    if not isinstance(evaluation, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(evaluation).__name__}.")

    def bad(what: str) -> UserError:
        return UserError(f"{source}: {what}; write it again with `resnext evaluate --json`.")

    result = Evaluation()
    for key in ("top1", "top5", "loss", "img_s"):
        if evaluation.get(key) is not None:
            value = number(evaluation[key])
            if value is None:
                raise bad(f"'{key}' must be a number")
            setattr(result, key, value)
    images = evaluation.get("images")
    if images is not None:
        if not _count(images):
            raise bad("'images' must be a whole number >= 0")
        result.images = images
    latency = evaluation.get("latency_ms") or {}
    if not isinstance(latency, dict) or any(number(v) is None for v in latency.values()):
        raise bad("'latency_ms' must map names (mean, p90, ...) to numbers")
    result.latency_ms = {str(k): float(v) for k, v in latency.items()}
    for key in ("weights", "arch"):
        if evaluation.get(key) is not None:
            setattr(result, key, str(evaluation[key]))

    per_class = evaluation.get("per_class") or []
    if not isinstance(per_class, list):
        raise bad("'per_class' must be a list of {name, images, top1}")
    for item in per_class:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and _count(item.get("images"))
                and number(item.get("top1")) is not None):
            raise bad("every 'per_class' item must be {\"name\": text, \"images\": count, \"top1\": percent}")
        result.per_class.append(ClassResult(item["name"], item["images"], float(item["top1"])))

    names = evaluation.get("class_names") or [item.name for item in result.per_class]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise bad("'class_names' must be a list of names")
    result.class_names = names
    confusion = evaluation.get("confusion")
    if confusion is not None:
        size = len(names)
        if not (isinstance(confusion, list) and len(confusion) == size
                and all(isinstance(row, list) and len(row) == size for row in confusion)
                and all(number(v) is not None and v >= 0 for row in confusion for v in row)):
            raise bad(f"'confusion' must be a {size} x {size} table of counts (one row and column per class)")
        result.confusion = [[float(v) for v in row] for row in confusion]
    return result


def write_evaluation(evaluation: dict, path: str | Path) -> Path:
    """Write the evaluation dict (resnext.inference.evaluate_weights) as JSON, atomically; returns the path.

    Named EVALUATION_NAME in a training workspace, `resnext report` shows it with the run (`resnext evaluate
    --output-json` and `resnext demo` write it this way).
    """
    text = json.dumps(evaluation, indent=1)
    return atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def read_evaluation(path: Path) -> Evaluation:
    """Read and check an evaluation JSON file; a UserError names the file when it is unreadable or wrong."""
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read evaluation results '{path}' ({err}); "
                        "write it again with `resnext evaluate --json`.") from None
    return check_evaluation(evaluation, source=f"'{path}'")


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
