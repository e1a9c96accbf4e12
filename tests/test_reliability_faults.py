"""Failing writes and numerical faults, injected in-process into the real `resnext train` entry point.

Failing writes (docs/reliability.md, "Failed writes"): a checkpoint write that fails (disk full, permission
denied) leaves the earlier checkpoints intact, warns, and training continues; if the write that fails is the last
one before the run exits (end of training, preemption), the run exits 1 with one line that names the intact
checkpoint. A log line that cannot be written warns once and training continues; a log file that cannot be opened
stops the run before it starts.

Numerical faults: an inf/NaN loss skips that optimizer update and is reported with its step; a sustained run of
them stops the job (exit 3) with the last good checkpoint kept.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess

import pytest
import torch

from resnext import logger as run_logger_module
from resnext.checkpoint import list_checkpoints, read_checkpoint

from reliability_support import (TRAIN_ARGS, assert_identical_training_state, parameters, reference_state,
                                 tiny_dataset, train_in_process)


@pytest.fixture(scope="module")
def tiny(embedded_data, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "reliability"
    data = tiny_dataset(embedded_data, base)
    return data, reference_state(data, base)


class FullDisk:
    """A file handle that takes `capacity` bytes, then fails every write with OSError(`error`), as a full disk (or
    a file system whose permissions changed) does: torch.save then raises what it raises on a real full disk, its zip
    writer's RuntimeError ("unexpected pos") with the OSError as its context."""

    def __init__(self, handle, error: int, capacity: int = 1000):
        self.handle, self.error, self.capacity = handle, error, capacity

    def write(self, data):
        if len(data) > self.capacity:
            raise OSError(self.error, os.strerror(self.error))
        self.capacity -= len(data)
        return self.handle.write(data)

    def flush(self):
        return self.handle.flush()


def failing_save(monkeypatch, fail_calls, error):
    """torch.save whose writes fail with `error` after 1000 bytes on the given call numbers (1-based)."""
    real_save = torch.save
    calls = []

    def save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) in fail_calls:
            handle = FullDisk(handle, error)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_the_injected_fault_is_the_exception_a_full_disk_gives(tmp_path):
    """The injection above must raise what torch.save raises on a real full disk, not an OSError of its own."""
    with open(tmp_path / "x.pt", "wb") as handle, pytest.raises(RuntimeError, match="unexpected pos") as raised:
        torch.save({"weights": torch.zeros(10_000)}, FullDisk(handle, errno.ENOSPC))
    assert isinstance(raised.value.__context__, OSError) and raised.value.__context__.errno == errno.ENOSPC


@contextlib.contextmanager
def small_filesystem(path, size_bytes: int):
    """A real tmpfs of `size_bytes` mounted at `path` (root only); skips the test where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and CAP_SYS_ADMIN: "
                    + (mounted.stderr.strip() if mounted else "not root"))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("disk", ["real tmpfs", "injected"])
def test_a_full_disk_warns_trains_on_and_exits_1_naming_the_intact_checkpoint(tiny, tmp_path, monkeypatch, capsys,
                                                                              caplog, disk):
    """Issue 11, case 5: the workspace on a small filesystem; the third checkpoint no longer fits."""
    data, _ = tiny
    size = (data.parent / "reference" / "checkpoint.pth.tar").stat().st_size  # one checkpoint of this run
    with contextlib.ExitStack() as stack:
        if disk == "real tmpfs":
            workspace = stack.enter_context(small_filesystem(tmp_path / "disk", int(size * 2.5) + 64 * 1024))
        else:
            workspace = tmp_path / "workspace"
            failing_save(monkeypatch, set(range(3, 100)), errno.ENOSPC)
        code = train_in_process([data, *TRAIN_ARGS, "--gather-checkpoints", "2", "--workspace", workspace])
        err = capsys.readouterr().err
        assert code == 1, err[-3000:]
        assert "Traceback" not in err
        warnings = [r.getMessage() for r in caplog.records if "could not write checkpoint" in r.getMessage()]
        assert len(warnings) == 13  # every write from the third on: training went on
        assert warnings[0].startswith("warning: could not write checkpoint ") and warnings[0].endswith(
            "(No space left on device); the previous checkpoint "
            f"({workspace / 'checkpoint-0000-00000002.pt'}) is intact and training continues."), warnings[0]
        last_line = err.strip().splitlines()[-1]
        assert last_line.startswith("resnext train: error: training stopped without its last checkpoint: could not "
                                    "write checkpoint "), last_line
        assert f"(No space left on device); the previous checkpoint ({workspace / 'checkpoint-0000-00000002.pt'}) " \
               "is intact" in last_line
        assert [path.name for path in list_checkpoints(workspace)] == ["checkpoint-0000-00000002.pt",
                                                                       "checkpoint-0000-00000001.pt"]
        read_checkpoint(workspace / "checkpoint-0000-00000002.pt")
        assert not list(workspace.glob(".checkpoint-*.tmp"))


def by_global_step(workspace) -> dict:
    return {read_checkpoint(path)["global_step"]: path for path in list_checkpoints(workspace)}


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_training_goes_on(tiny, tmp_path, monkeypatch, caplog):
    data, reference = tiny
    failing_save(monkeypatch, {4}, errno.ENOSPC)  # the checkpoint after global step 4: disk full
    workspace = tmp_path / "workspace"
    assert train_in_process([data, *TRAIN_ARGS, "--gather-checkpoints", "-1", "--workspace", workspace]) == 0
    warning = [r.getMessage() for r in caplog.records if "could not write checkpoint" in r.getMessage()]
    assert len(warning) == 1
    assert "checkpoint-0000-00000004.pt (No space left on device)" in warning[0]
    assert "checkpoint-0000-00000003.pt) is intact and training continues" in warning[0]
    assert sorted(by_global_step(workspace)) == [1, 2, 3, *range(5, 16)]  # every other checkpoint reads back
    assert not list(workspace.glob(".*.tmp")), "the failed write left its temporary file"
    # The failed write changed nothing in training.
    assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))


@pytest.mark.parametrize("exit_path", ["end of training", "preemption"])
def test_a_failed_last_checkpoint_exits_non_zero_and_names_the_intact_one(tiny, tmp_path, monkeypatch, capsys,
                                                                          exit_path):
    data, _ = tiny
    workspace = tmp_path / "workspace"
    argv = [data, *TRAIN_ARGS, "--workspace", workspace]
    if exit_path == "preemption":
        from resnext import training

        observe = training.LossHealth.observe

        def observe_then_sigterm(self, loss, step):  # the scheduler preempts the job during step 6
            observe(self, loss, step)
            if step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(training.LossHealth, "observe", observe_then_sigterm)
        failing_save(monkeypatch, set(range(6, 100)), errno.EACCES)  # permissions lost after 5 checkpoints
        intact, lost = "checkpoint-0001-00000005.pt", "checkpoint-0001-00000007.pt"
    else:
        failing_save(monkeypatch, set(range(14, 100)), errno.EACCES)
        intact, lost = "checkpoint-0002-00000013.pt", "checkpoint-0003-00000015.pt"
    assert train_in_process(argv) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("resnext train: error: training stopped without its last checkpoint: could not "
                                f"write checkpoint {workspace / lost} (Permission denied)"), last_line
    assert f"({workspace / intact}) is intact" in last_line
    assert list_checkpoints(workspace)[0].name == intact
    read_checkpoint(workspace / intact)
    assert not list(workspace.glob(".*.tmp"))


class FailingLogFile:
    """A log file handle whose writes fail with EACCES after the first `good` lines (permissions changed)."""

    def __init__(self, handle, good: int):
        self.handle, self.good = handle, good

    def write(self, text):
        self.good -= 1
        if self.good < 0:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return self.handle.write(text)

    def flush(self):
        return self.handle.flush()

    def close(self):
        return self.handle.close()


def test_a_failing_log_warns_once_and_training_goes_on(tiny, tmp_path, monkeypatch, caplog):
    data, reference = tiny
    real_init = run_logger_module.RunLogger.__init__

    def init_then_fail_later(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if self._file is not None:
            self._file = FailingLogFile(self._file, good=5)  # PARAMETER and the first steps

    monkeypatch.setattr(run_logger_module.RunLogger, "__init__", init_then_fail_later)
    workspace = tmp_path / "workspace"
    assert train_in_process([data, *TRAIN_ARGS, "--workspace", workspace]) == 0
    warnings = [r.getMessage() for r in caplog.records if "cannot write the log file" in r.getMessage()]
    assert len(warnings) == 1 and "Permission denied" in warnings[0] and "training continues" in warnings[0]
    assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))


def test_a_log_file_that_cannot_be_opened_stops_before_training(tiny, tmp_path, monkeypatch, capsys):
    data, _ = tiny
    workspace = tmp_path / "workspace"

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(run_logger_module, "open", refuse, raising=False)
    assert train_in_process([data, *TRAIN_ARGS, "--workspace", workspace]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"resnext train: error: Permission denied: {workspace / 'experiment_raport.json'}"]
    assert not list_checkpoints(workspace)


# ---- numerical faults -------------------------------------------------------------------------------------------

def poison_losses(monkeypatch, values: dict[int, float]) -> None:
    """Multiply the training loss of the given global steps (0-based) by the given value (nan or inf)."""
    real = torch.nn.functional.cross_entropy
    steps = []

    def cross_entropy(*args, **kwargs):
        loss = real(*args, **kwargs)
        if not torch.is_grad_enabled():  # validation
            return loss
        steps.append(1)
        factor = values.get(len(steps) - 1)
        return loss * factor if factor is not None else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)


def test_isolated_nan_and_inf_losses_skip_their_update_and_are_reported(tiny, tmp_path, monkeypatch, caplog):
    data, _ = tiny
    poison_losses(monkeypatch, {2: float("nan"), 7: float("inf")})
    workspace = tmp_path / "workspace"
    assert train_in_process([data, *TRAIN_ARGS, "--gather-checkpoints", "-1", "--workspace", workspace]) == 0
    reports = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(reports) == 2
    assert "the last at global step 2" in reports[0] and "the last at global step 7" in reports[1]
    states = {step: read_checkpoint(path) for step, path in by_global_step(workspace).items()}
    for poisoned in (2, 7):  # the checkpoint after the poisoned step holds the weights and momentum from before it
        before, after = states[poisoned], states[poisoned + 1]
        assert all(torch.equal(v, parameters(after)[k]) for k, v in parameters(before).items()), poisoned
        assert all(torch.equal(before["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
                   for i, s in after["optimizer"]["state"].items())
    moved = parameters(states[4])
    assert not all(torch.equal(v, moved[k]) for k, v in parameters(states[3]).items())  # a clean step does update
    assert all(bool(torch.isfinite(v).all()) for v in parameters(states[15]).values())


def test_sustained_nan_losses_stop_the_job_and_keep_the_last_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    data, _ = tiny
    poison_losses(monkeypatch, {step: float("nan") for step in range(6, 100)})
    workspace = tmp_path / "workspace"
    code = train_in_process([data, *TRAIN_ARGS, "--max-nonfinite-steps", "3", "--gather-checkpoints", "-1",
                             "--workspace", workspace])
    assert code == 3
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("resnext train: error: training stopped: the loss was not finite for 3 consecutive "
                                "steps (last at global step 8); the last good checkpoint is kept."), last_line
    newest = read_checkpoint(list_checkpoints(workspace)[0])
    assert newest["global_step"] <= 8
    last_good = read_checkpoint(next(p for p in list_checkpoints(workspace) if p.name.endswith("00000006.pt")))
    assert all(torch.equal(v, parameters(newest)[k]) for k, v in parameters(last_good).items())
    assert all(bool(torch.isfinite(v).all()) for v in parameters(newest).values())
