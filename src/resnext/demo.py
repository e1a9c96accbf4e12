"""`resnext demo`: the main job on the embedded dataset, end to end, in minutes.

It materializes the Fashion-MNIST subset that ships with the package (class folders of JPEGs, the layout users
have), trains with the recipe, evaluates the best checkpoint (WORKSPACE/evaluation.json), and writes the run's
report, which shows that evaluation beside the training curves. On a CPU it trains the
small `resnext_tiny` at 32 px; on a GPU the real ResNeXt101-32x4d at 64 px with AMP.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .recipe import TrainConfig, preset

notices = logging.getLogger("resnext")


def demo_config(workspace: str | Path, data: str | Path, device: str | None = None, epochs: int | None = None,
                seed: int = 0) -> TrainConfig:
    """The demo's settings for the device it runs on: our recipe (--preset resnext) otherwise."""
    on_gpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    common = dict(preset("resnext"), preset="resnext", data=str(data), workspace=str(workspace), device=device,
                  seed=seed, print_freq=20, resume="auto")
    common.pop("arch")
    if on_gpu:
        return TrainConfig(arch="resnext101_32x4d", image_size=64, batch_size=128, epochs=epochs or 10,
                           workers=4, **common)  # --precision auto: AMP on the GPU
    return TrainConfig(arch="resnext_tiny", image_size=32, batch_size=64, epochs=epochs or 15,
                       workers=2, **common)


def run_demo(workspace: str | Path = "resnext-demo", device: str | None = None, epochs: int | None = None,
             report: bool = True) -> dict:
    """Train on the embedded dataset, evaluate the best checkpoint, write the report; returns what it prints."""
    from .data.embedded import materialize
    from .checkpoint import BEST_FILENAME
    from .training import train
    from .inference import evaluate_weights

    data = materialize()
    config = demo_config(workspace, data, device=device, epochs=epochs)
    summary = train(config)  # a second demo in the same folder finds the run finished and only evaluates
    best = Path(workspace) / BEST_FILENAME
    evaluation = evaluate_weights(data / "val", best, batch_size=config.batch_size, workers=config.workers,
                                  device=device)
    from .report.evaluation import EVALUATION_NAME, write_evaluation

    write_evaluation(evaluation, Path(workspace) / EVALUATION_NAME)  # the report shows it beside the training
    result = {"workspace": str(Path(workspace)), "dataset": str(data), "arch": config.arch,
              "epochs": config.epochs, "best_epoch": summary.get("best.epoch"), "top1": evaluation["top1"],
              "top5": evaluation["top5"], "eval_img_s": evaluation["img_s"],
              "train_seconds": summary.get("run.time"), "checkpoint": str(best)}
    if report:
        from .errors import UserError
        from .report import write_report

        try:
            result["report"] = str(write_report([Path(workspace)]))
        except UserError as err:  # matplotlib is an optional extra
            notices.info(f"report skipped: {err}")
    return result
