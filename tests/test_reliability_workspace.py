"""A workspace belongs to one run, and a resumed run says what it changed.

- A second `resnext train` on the workspace of a live run is refused in one line naming the holder (host, pid,
  since when); after the first run dies (SIGKILL: its lock goes with it) the next run takes the workspace over with
  a notice and removes the temporary files of the dead run's interrupted checkpoint write.
- Resuming with options that differ from the checkpoint's (--lr, --epochs, ...) uses the new values and says so in
  one line, with the learning rate at the resumed step before and now.
"""
from __future__ import annotations

import signal
import socket

import pytest

from resnext.checkpoint import read_checkpoint

from reliability_support import (TRAIN_ARGS, assert_identical_training_state, finish, log_runs, reference_state,
                                 start_train, tiny_dataset, train_in_process, wait_for_step)


@pytest.fixture(scope="module")
def tiny(embedded_data, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "reliability"
    data = tiny_dataset(embedded_data, base)
    return data, reference_state(data, base)


@pytest.mark.slow
def test_a_second_run_on_a_live_workspace_is_refused_and_a_dead_runs_lock_is_taken_over(tiny, tmp_path):
    data, reference = tiny
    workspace = tmp_path / "workspace"
    argv = [data, *TRAIN_ARGS, "--workspace", workspace]
    # Slow steps keep the first run alive while the second starts, however loaded the machine.
    first = start_train(argv, tmp_path, "first", faults={"step_delay": 5.0})
    try:
        wait_for_step(workspace, 0, 2, first)
        second = start_train([*argv, "--resume", "auto"], tmp_path, "second")
        assert finish(second) == 2
        lines = (tmp_path / "second.err").read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"resnext train: error: --workspace '{workspace}' is in use by another run (host "
                                   f"{socket.gethostname()}, pid {first.pid}, since "), lines[0]
        assert first.poll() is None, "the refused run disturbed the first one"
    finally:
        first.send_signal(signal.SIGKILL)
        finish(first)
    assert len(log_runs(workspace)) == 1, "the refused run wrote to the first run's log"
    # The dead run's interrupted checkpoint write, as a SIGKILL inside torch.save leaves it.
    (workspace / ".checkpoint-0000-00000004.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 torn")

    third = start_train([*argv, "--resume", "auto"], tmp_path, "third")
    assert finish(third) == 0, (tmp_path / "third.err").read_text()[-3000:]
    err = (tmp_path / "third.err").read_text()
    assert (f"notice: taking over --workspace '{workspace}' from a run that ended without releasing it (host "
            f"{socket.gethostname()}, pid {first.pid}, since ") in err
    assert "notice: removed 1 temporary file(s) of checkpoint writes that an earlier run left unfinished " \
           "(.checkpoint-0000-00000004.pt.k1ll3d.tmp)" in err
    assert not list(workspace.glob(".checkpoint-*.tmp"))
    assert not (workspace / ".resnext.lock.json").exists(), "the finished run did not release the workspace"
    assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))


def test_resuming_with_other_schedule_options_says_what_changes_in_one_line(tiny, tmp_path, caplog):
    data, _ = tiny
    workspace = tmp_path / "workspace"
    argv = [data, *TRAIN_ARGS, "--workspace", workspace]
    assert train_in_process([*argv, "--run-epochs", "1"]) == 0
    caplog.clear()
    assert train_in_process([*argv, "--run-epochs", "1", "--resume", "auto"]) == 0
    assert not [r for r in caplog.records if "differ from the checkpoint" in r.getMessage()]  # nothing changed

    saved = read_checkpoint(workspace / "checkpoint.pth.tar")
    assert saved["global_step"] == 10
    caplog.clear()
    assert train_in_process([*argv, "--run-epochs", "1", "--resume", "auto", "--lr", "0.5", "--epochs", "4"]) == 0
    lines = [r.getMessage() for r in caplog.records if "differ from the checkpoint" in r.getMessage()]
    assert len(lines) == 1, lines
    from resnext.optim import LRSchedule

    before = LRSchedule(**saved["schedule"])(10)
    after = read_checkpoint(workspace / "checkpoint.pth.tar")["schedule"]
    assert after["peak"] == 0.5 and after["epochs"] == 4  # the command line won
    assert lines[0] == ("warning: resuming with options that differ from the checkpoint's (--epochs 3 -> 4, --lr default "
                        "-> 0.5): the command line wins; the learning rate at global step 10 is "
                        f"{LRSchedule(**after)(10):.6g} instead of {before:.6g}.")
