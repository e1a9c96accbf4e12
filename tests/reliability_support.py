"""Shared pieces of the reliability tests: a tiny run, its uninterrupted reference, log reading, exact comparison.

The run: resnext_tiny at 32 px on 10 classes x 4 training images (5 optimizer steps of 8 per epoch, 3 epochs),
EMA and MixUp on (so their state and random draws must survive a restart too), a checkpoint after every step,
deterministic kernels. One process, one thread: about 3 s of training here.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

from conftest import copy_subset, kill_tree

STEPS_PER_EPOCH = 5
EPOCHS = 3
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
TRAIN_ARGS = ["--preset", "resnext", "--arch", "resnext_tiny", "--image-size", "32", "-b", "8", "-j", "0",
              "--epochs", str(EPOCHS),
              "--warmup", "1", "--seed", "7", "--print-freq", "1", "--checkpoint-interval", "1", "--use-ema", "0.9",
              "--mixup", "0.2", "--deterministic", "--no-tensorboard", "--no-progress", "--gather-checkpoints", "2"]

_CACHE: dict[Path, object] = {}


def tiny_dataset(embedded: Path, base: Path) -> Path:
    """10 classes x 4 train / 2 val images in `base`/data (made once per process and base folder)."""
    data = base / "data"
    if data not in _CACHE:
        if not data.exists():
            copy_subset(embedded, data, 4, 2)
        _CACHE[data] = data
    return data


@contextlib.contextmanager
def one_thread_deterministic():
    """What a `python -m resnext train --deterministic` subprocess with OMP_NUM_THREADS=1 has, undone afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def train_in_process(argv: list[str]) -> int:
    """`resnext train ARGV` in this process (the real CLI entry point); returns its exit status."""
    from resnext.cli import main

    with one_thread_deterministic():
        return main(["train", *map(str, argv)])


def reference_state(data: Path, base: Path) -> dict:
    """The final checkpoint of the uninterrupted run (trained once per process and base folder)."""
    workspace = base / "reference"
    if workspace not in _CACHE:
        from resnext.checkpoint import read_checkpoint

        assert train_in_process([data, *TRAIN_ARGS, "--workspace", workspace]) == 0
        _CACHE[workspace] = read_checkpoint(workspace / "checkpoint.pth.tar")
    return _CACHE[workspace]


# ---- exact comparison ---------------------------------------------------------------------------------------

def _leaves(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}/{index}")
    else:
        yield prefix, value


def assert_identical_training_state(expected: dict, actual: dict) -> None:
    """Every tensor (torch.equal) and number of model, EMA, optimizer and loss scaler state, and the position."""
    for key in ("epoch", "step_in_epoch", "global_step"):
        assert actual[key] == expected[key], key
    for part in ("model", "ema", "optimizer", "scaler"):
        want, got = dict(_leaves(expected[part])), dict(_leaves(actual[part]))
        assert want.keys() == got.keys(), part
        different = [key for key, value in want.items()
                     if not (torch.equal(value, got[key]) if isinstance(value, torch.Tensor) else value == got[key])]
        assert not different, f"{part}: {len(different)} of {len(want)} entries differ, e.g. {different[:3]}"


def parameters(state: dict) -> dict:
    """The trainable tensors of a checkpoint's model (BatchNorm running statistics left out)."""
    return {k: v for k, v in state["model"].items() if not k.endswith(("running_mean", "running_var", "tracked"))}


# ---- the DLLogger log ---------------------------------------------------------------------------------------

def log_runs(workspace: Path) -> list[list[dict]]:
    """The log's LOG entries split into one list per (re)start; a line torn by a kill is skipped."""
    path = workspace / "experiment_raport.json"
    runs: list[list[dict]] = []
    if not path.exists():
        return runs
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line[5:]) if line.startswith("DLLL ") else None
        except json.JSONDecodeError:
            continue
        if not entry or entry.get("type") != "LOG":
            continue
        if entry["step"] == "PARAMETER":
            runs.append([])
        if runs:
            runs[-1].append(entry)
    return runs


def step_entries(run: list[dict]) -> list[tuple[int, float]]:
    """(global step, timestamp) of the run's per-step entries ([epoch, step] with --print-freq 1)."""
    return [(e["step"][0] * STEPS_PER_EPOCH + e["step"][1], float(e["timestamp"])) for e in run
            if isinstance(e["step"], list) and len(e["step"]) == 2]


def resume_entry(run: list[dict]) -> dict | None:
    return next((e["data"] for e in run if e["step"] == "RESUME"), None)


def summary_entry(run: list[dict]) -> dict | None:
    return next((e["data"] for e in run if e["step"] == []), None)


# ---- subprocesses -------------------------------------------------------------------------------------------

def start(command: list, workdir: Path, name: str, faults: dict | None = None, **env: str) -> subprocess.Popen:
    """Start `command` with the fault wrapper's environment (plus `env`), output to WORKDIR/NAME.out and .err."""
    from faults import environment

    with open(workdir / f"{name}.out", "w") as stdout, open(workdir / f"{name}.err", "w") as stderr:
        return subprocess.Popen(list(map(str, command)), stdout=stdout, stderr=stderr, env=environment(faults, **env),
                                start_new_session=True)


def start_train(argv: list, workdir: Path, name: str, faults: dict | None = None) -> subprocess.Popen:
    """`python -m faults train ARGV`: `resnext train ARGV` with `faults` switched on."""
    return start([sys.executable, "-m", "faults", "train", *argv], workdir, name, faults)


def finish(process: subprocess.Popen, timeout: float = 180) -> int:
    """Wait for `process`; past `timeout`, SIGKILL it and everything it started, and fail."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        process.wait()
        raise AssertionError(f"{' '.join(map(str, process.args[:8]))}... did not finish within {timeout} s") from None


def wait_for_step(workspace: Path, run_index: int, step: int, process: subprocess.Popen, timeout: float = 180) -> int:
    """Poll the log until restart `run_index` has finished global step >= `step`; returns the step seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = log_runs(workspace)
        if len(runs) > run_index:
            done = [s for s, _ in step_entries(runs[run_index])]
            if done and max(done) >= step:
                return max(done)
        assert process.poll() is None, f"the run exited ({process.returncode}) before step {step}"
        time.sleep(0.02)
    raise AssertionError(f"no step {step} in the log after {timeout} s")


# ---- damaging files -----------------------------------------------------------------------------------------

class RunsCode:
    """A pickle that, if ever unpickled, creates `marker` (os.system in __reduce__): proof that nothing loads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def flip_one_byte(checkpoint: Path) -> str:
    """Flip one bit in the middle of the largest tensor of a checkpoint in place (bit rot); returns the entry."""
    with zipfile.ZipFile(checkpoint) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED
    with open(checkpoint, "r+b") as handle:
        handle.seek(entry.header_offset)
        local_header = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        offset = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x10]))
    return entry.filename
