import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

# Under `pytest -n 2` each worker gets one core: more threads per process only oversubscribe the machine
# (a small batch took 10x longer with 2 threads in each of 2 workers). Subprocesses inherit the same limit.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> Path:
    """The embedded Fashion-MNIST subset, materialized once per test session (train/ and val/)."""
    from resnext.data import embedded

    return embedded.materialize(tmp_path_factory.mktemp("embedded") / "fashion-mnist")


def copy_subset(source: Path, dest: Path, train_per_class: int, val_per_class: int) -> Path:
    """A smaller dataset with the same layout: the first images of each class folder."""
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for class_dir in sorted((source / split).iterdir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                shutil.copy(image, target / image.name)
    return dest


@pytest.fixture(scope="session")
def small_data(embedded_data, tmp_path_factory) -> Path:
    """10 classes x 16 train / 6 val images of the embedded data: seconds per epoch on a CPU."""
    return copy_subset(embedded_data, tmp_path_factory.mktemp("small") / "data", 16, 6)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own: killpg misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL `process` and everything it started, so a timed-out test leaves nothing running."""
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_command(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """subprocess.run that kills the whole process tree on timeout (torchrun's workers included)."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(args[:6])} ... timed out after {timeout} s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
