"""Read a training log (DLLogger JSON lines, docs/ARCHITECTURE.md "Training log") into one continuous run.

The file is untrusted and may be in any state: still being written (a torn last line), appended to by a resumed
run (steps written twice), or damaged. `read_log` keeps what it can, warns about what it skips, and fails only
when nothing usable is left. It needs only the standard library, so the console summary and the benchmark can
use it without matplotlib.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

LOG_NAME = "experiment_raport.json"  # NVIDIA's default name, kept so their users find it where they expect
_PREFIX = "DLLL "
_MAX_LINES_LISTED = 5

logger = logging.getLogger("resnext.report")


@dataclass(frozen=True)
class ResumePoint:
    """Where a restarted session picked up: the checkpoint's epoch (0-based) and optimizer steps into it."""

    epoch: int
    step_in_epoch: int
    global_step: int | None = None
    checkpoint: str | None = None


@dataclass
class Session:
    """One start of `resnext train` writing to this log (a fresh start or a resume)."""

    parameters: dict
    resume: ResumePoint | None = None
    started: str | None = None  # "datetime" of its first entry, as logged
    elapsed: float = 0.0  # seconds it ran: the largest "elapsedtime" among its entries
    superseded: int = 0  # entries of earlier sessions it replaced (dropped past its starting point)


@dataclass
class RunLog:
    """A training run as one timeline: for every step the values written last, stale branches dropped.

    iterations: (epoch, step) -> data of the per-iteration entries, in order.
    epochs: epoch -> data of the epoch-end entries (train and validation merged), in order.
    summary: data of the end-of-run entry ({} while the run has not ended).
    """

    path: Path
    sessions: list[Session] = field(default_factory=list)
    iterations: dict[tuple[int, int], dict] = field(default_factory=dict)
    epochs: dict[int, dict] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    metadata: dict[str, dict] = field(default_factory=dict)
    skipped_lines: list[int] = field(default_factory=list)  # 1-based numbers of the lines that were skipped
    evaluations: list[dict] = field(default_factory=list)  # `resnext train --evaluate` results appended to the log
    last_datetime: str | None = None

    @property
    def parameters(self) -> dict:
        """The run arguments in effect now: those of the latest session."""
        return self.sessions[-1].parameters if self.sessions else {}

    @property
    def resume_points(self) -> list[ResumePoint]:
        return [session.resume for session in self.sessions if session.resume is not None]

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    @property
    def wall_time(self) -> float:
        """Seconds spent in all sessions together, including work a resume later redid."""
        return sum(session.elapsed for session in self.sessions)

    @property
    def iterations_per_epoch(self) -> int | None:
        """Optimizer steps per epoch as logged; without it, the largest step seen (a lower bound)."""
        logged = self.parameters.get("iterations_per_epoch")
        if isinstance(logged, int) and not isinstance(logged, bool) and logged > 0:
            return logged
        return max((step for _, step in self.iterations), default=None)

    def epoch_position(self, epoch: int, step: int) -> float:
        """Fractional epochs done after `step` optimizer steps of `epoch` (0-based): the x axis of every curve."""
        return _position(epoch, step, self.iterations_per_epoch)

    @property
    def progress(self) -> float:
        """Fractional epochs done according to the latest entry (0.0 before the first step)."""
        last_iteration = self.epoch_position(*max(self.iterations)) if self.iterations else 0.0
        last_epoch = max(self.epochs) + 1.0 if self.epochs else 0.0
        return max(last_iteration, last_epoch)

    def iteration_series(self, metric: str) -> tuple[list[float], list[float]]:
        """(x in fractional epochs, value) of `metric` in the per-iteration entries that hold a number for it."""
        per_epoch = self.iterations_per_epoch
        return _unzip([(_position(epoch, step, per_epoch), number(data.get(metric)))
                       for (epoch, step), data in self.iterations.items()])

    def epoch_series(self, metric: str) -> tuple[list[float], list[float]]:
        """(x = epoch + 1, i.e. the end of the epoch, value) of `metric` in the epoch-end entries."""
        points = [(epoch + 1.0, number(data.get(metric))) for epoch, data in self.epochs.items()]
        return _unzip(points)

    def best_epoch(self, metric: str = "val.top1") -> int | None:
        """The (0-based) epoch with the highest `metric`; the earliest one on a tie; None when none has it."""
        best = None
        for epoch, data in self.epochs.items():
            value = number(data.get(metric))
            if value is not None and not math.isnan(value) and (best is None or value > best[1]):
                best = (epoch, value)
        return best[0] if best else None


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf}


def number(value) -> float | None:
    """A logged value as a float when it is a number, else None.

    JSON has no NaN or infinity: our logger writes them as the strings "nan", "inf", "-inf", Python's json module
    as the bare words NaN and Infinity; both read back as floats, so a diverged step stays visible.
    """
    if isinstance(value, str):
        return _NON_FINITE.get(value.lower())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _position(epoch: int, step: int, per_epoch: int | None) -> float:
    return epoch + step / per_epoch if per_epoch else float(epoch)


def _unzip(points: list[tuple[float, float | None]]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def find_log(run: str | Path) -> Path:
    """The log of a run: RUN_DIR/experiment_raport.json, or the path itself when it is a file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise UserError(f"'{run}' does not exist; give a training workspace or its {LOG_NAME} file.")
    log_path = run / LOG_NAME
    if not log_path.is_file():
        raise UserError(f"no training log in '{run}': expected {LOG_NAME} there; if the run was started with "
                        "--raport-file, give that file instead.")
    return log_path


def read_log(path: str | Path) -> RunLog:
    """Read a training log (or the workspace holding it) into one continuous timeline.

    Rules, for a log appended to by several sessions: a session that resumes from a checkpoint at (epoch E,
    step K) drops the earlier entries past that point (they belong to the abandoned branch, and the resumed run
    writes them again), a session without a RESUME entry started from scratch and drops everything before it;
    for a step written twice in one timeline, the values written last win. Lines that are not valid entries
    are skipped with one warning naming their numbers. A log without a single valid entry is a UserError.
    """
    path = find_log(path)
    run = RunLog(path=path)
    starting = False  # a PARAMETER entry was read; the next entry says whether this session resumes
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as err:
        raise UserError(f"cannot read training log '{path}': {err.strerror or err}.") from None
    valid = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        entry = _parse(line)
        if entry is None:
            run.skipped_lines.append(line_number)
            continue
        valid += 1
        if entry.get("type") == "METADATA":
            run.metadata[entry["metric"]] = entry["metadata"]
            continue
        kind, key, data = entry["kind"], entry["key"], entry["data"]
        if kind == "PARAMETER":
            run.sessions.append(Session(parameters=dict(data)))
            starting = True
        elif not run.sessions:  # entries before any PARAMETER: a log whose header was lost
            run.sessions.append(Session(parameters={}))
        session = run.sessions[-1]
        if kind == "EVALUATE":
            # `train --evaluate` measured a checkpoint: not a training session, so it neither restarts the
            # timeline nor replaces the run's parameters.
            run.evaluations.append(dict(data))
            if starting:
                run.sessions.pop()
                starting = False
            continue
        if kind == "RESUME":
            point = _resume_point(data)
            if point is None:
                run.skipped_lines.append(line_number)
                continue
            session.resume = point
            if starting:
                session.superseded = _truncate(run, point.epoch, point.step_in_epoch)
                starting = False
        elif kind != "PARAMETER":
            if starting:  # no RESUME after PARAMETER: this session started from scratch
                session.superseded = _truncate(run, 0, 0)
                starting = False
            target = {"iteration": run.iterations, "epoch": run.epochs}.get(kind)
            if target is None:
                run.summary.update(data)
            else:
                target.setdefault(key, {}).update(data)
        if session.started is None:
            session.started = entry["datetime"]
        session.elapsed = max(session.elapsed, entry["elapsed"])
        run.last_datetime = entry["datetime"] or run.last_datetime
    if valid == 0:
        raise UserError(f"training log '{path}' holds no entries"
                        + (" (every line is malformed)" if run.skipped_lines else "")
                        + "; check the path, or wait until the run has written its first lines.")
    if run.skipped_lines:
        listed = ", ".join(map(str, run.skipped_lines[:_MAX_LINES_LISTED]))
        more = " ..." if len(run.skipped_lines) > _MAX_LINES_LISTED else ""
        torn = " (the last one is incomplete: the run may still be writing it)" \
            if run.skipped_lines[-1] == len(lines) and not _ends_with_newline(path) else ""
        logger.warning("%s: skipped %d malformed line(s): %s%s%s", path, len(run.skipped_lines), listed, more, torn)
    run.iterations = dict(sorted(run.iterations.items()))
    run.epochs = dict(sorted(run.epochs.items()))
    return run


def _parse(line: str) -> dict | None:
    """One log line as {"kind", "key", "data", "datetime", "elapsed"} (or a METADATA entry); None if malformed."""
    text = line.strip()
    if text.startswith(_PREFIX):
        text = text[len(_PREFIX):]
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    if entry.get("type") == "METADATA":
        ok = isinstance(entry.get("metric"), str) and isinstance(entry.get("metadata"), dict)
        return entry if ok else None
    data = entry.get("data")
    if not isinstance(data, dict):
        return None
    kind, key = _classify(entry.get("step"))
    if kind is None:
        return None
    elapsed = _float_or_none(entry.get("elapsedtime"))
    moment = entry.get("datetime")
    return {"kind": kind, "key": key, "data": data, "datetime": moment if isinstance(moment, str) else None,
            "elapsed": elapsed if elapsed is not None and math.isfinite(elapsed) else 0.0}


def _classify(step) -> tuple[str | None, object]:
    if step in ("PARAMETER", "RESUME", "EVALUATE"):
        return step, None
    if not isinstance(step, list) or len(step) > 2:
        return None, None
    if not all(isinstance(part, int) and not isinstance(part, bool) and part >= 0 for part in step):
        return None, None
    if len(step) == 2:
        return "iteration", (step[0], step[1])
    if len(step) == 1:
        return "epoch", step[0]
    return "summary", None


def _resume_point(data: dict) -> ResumePoint | None:
    epoch, step = data.get("resume.epoch"), data.get("resume.step_in_epoch", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)):
        return None
    global_step = data.get("resume.global_step")
    checkpoint = data.get("resume.checkpoint")
    return ResumePoint(epoch, step, global_step if isinstance(global_step, int) else None,
                       checkpoint if isinstance(checkpoint, str) else None)


def _truncate(run: RunLog, epoch: int, step: int) -> int:
    """Drop the entries past (epoch, step): epoch-end entries of `epoch` and later, the summary. Returns how many."""
    before = len(run.iterations) + len(run.epochs) + bool(run.summary)
    run.iterations = {key: data for key, data in run.iterations.items() if key <= (epoch, step)}
    run.epochs = {key: data for key, data in run.epochs.items() if key < epoch}
    run.summary = {}
    return before - len(run.iterations) - len(run.epochs)


def _float_or_none(value) -> float | None:
    # DLLogger writes elapsedtime as a number, older versions as a string
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"
