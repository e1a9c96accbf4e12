"""A real training run shared by the evaluate / predict / export / serve tests (imported by them as a fixture).

Three visually distinct classes of the embedded Fashion-MNIST data (bag, sneaker, trouser), 64 training and 16
held-out images each, resnext_tiny at 32 px with EMA: about 100 optimizer steps, a few seconds on one core, and
about 95% top-1 on the held-out images, so predictions on them have known answers.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

CLASSES = ("bag", "sneaker", "trouser")
TRAIN_PER_CLASS = 64
VAL_PER_CLASS = 16
EPOCHS = 3
IMAGE_SIZE = 32

_RUNS: dict[Path, "TrainedRun"] = {}


@dataclass(frozen=True)
class TrainedRun:
    data: Path  # dataset root with train/ and val/
    workspace: Path
    checkpoints: list[Path]  # one per epoch, in order: checkpoints[e] holds the weights after epoch e
    best: Path  # model_best.pth.tar
    epochs: dict[int, dict]  # the training log's epoch-end entries (val.top1, val_ema.top1, ...)

    @property
    def val(self) -> Path:
        return self.data / "val"


def train_once(embedded: Path, base: Path) -> TrainedRun:
    """Train on a subset of `embedded` into `base` (once per process and base folder)."""
    if base in _RUNS:
        return _RUNS[base]
    from resnext.recipe import TrainConfig, preset
    from resnext.training import train
    from resnext.report import read_log

    data = base / "data"
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for name in CLASSES:
            (data / split / name).mkdir(parents=True)
            for image in sorted((embedded / split / name).iterdir())[:count]:
                shutil.copy(image, data / split / name / image.name)
    workspace = base / "run"
    config = TrainConfig(**{**preset("resnext"), **dict(
        preset="resnext", data=str(data), arch="resnext_tiny", image_size=IMAGE_SIZE, batch_size=8, epochs=EPOCHS,
        warmup=0, lr=0.02, use_ema=0.9, workers=0, seed=0, workspace=str(workspace), gather_checkpoints=-1,
        tensorboard=False, progress=False, print_freq=100)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is several times faster than two fighting for cores
    try:
        train(config)
    finally:
        torch.set_num_threads(threads)
    checkpoints = sorted(workspace.glob("checkpoint-*.pt"))
    assert len(checkpoints) == EPOCHS
    run = TrainedRun(data=data, workspace=workspace, checkpoints=checkpoints, best=workspace / "model_best.pth.tar",
                     epochs=read_log(workspace).epochs)
    _RUNS[base] = run
    return run


@pytest.fixture(scope="session")
def trained(embedded_data, tmp_path_factory) -> TrainedRun:
    return train_once(embedded_data, tmp_path_factory.getbasetemp() / "inference-trained")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread for these modules' tests (measured on the 2-core CI machine under load: a batch of the
    tiny model takes 30 ms on one thread and 300-800 ms on two, which spin against each other and other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_user_error(capsys, command: str, argv: list, message: str) -> None:
    """`resnext COMMAND ARGV` exits 2 with one line `resnext COMMAND: error: ...MESSAGE...` on stderr."""
    from resnext.cli import main

    assert main([command, *map(str, argv)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resnext {command}: error: ") and message in lines[0], lines
