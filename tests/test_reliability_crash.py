"""Crash consistency: a run killed at random points, mid-checkpoint-write, preempted and fed a corrupt checkpoint
ends with exactly the weights of a run that was never interrupted.

Each seed drives one chain of four real `resnext train` processes in one workspace:
  A  fresh start, SIGKILL at a random step (the test polls the DLLogger log)
  B  --resume auto, SIGKILL from inside torch.save after a random fraction of a random checkpoint's bytes
  C  one bit of the newest checkpoint flipped on disk; --resume auto must skip it; SIGTERM at a random step
  D  --resume auto to the end; model, EMA, optimizer and scaler state must equal the uninterrupted run's
"""
from __future__ import annotations

import random
import signal
import time

import pytest

from resnext.checkpoint import list_checkpoints, read_checkpoint

from reliability_support import (STEPS_PER_EPOCH, TOTAL_STEPS, TRAIN_ARGS, assert_identical_training_state, finish,
                                 flip_one_byte, log_runs, reference_state, resume_entry, start_train, step_entries,
                                 summary_entry, tiny_dataset, wait_for_step)


@pytest.fixture(scope="module")
def tiny(embedded_data, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "reliability"
    data = tiny_dataset(embedded_data, base)
    return data, reference_state(data, base)


def all_numbered_checkpoints_load(workspace) -> list:
    """Every checkpoint-E-S.pt in the workspace reads back (a torn one would fail); returns them newest first."""
    found = list_checkpoints(workspace)
    for path in found:
        read_checkpoint(path)
    return found


def global_step_of(path) -> int:
    return int(path.stem.split("-")[2])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_preempted_and_corrupted_run_ends_identical_to_an_uninterrupted_one(tiny, tmp_path, seed):
    data, reference = tiny
    rng = random.Random(seed)
    workspace = tmp_path / "workspace"
    argv = [data, *TRAIN_ARGS, "--workspace", workspace]

    # A: SIGKILL at a random point of a random step (between steps, mid-step or mid-checkpoint).
    a = start_train(argv, tmp_path, "a")
    wait_for_step(workspace, 0, rng.randint(3, 6), a)
    time.sleep(rng.uniform(0.0, 0.15))
    a.send_signal(signal.SIGKILL)
    assert finish(a) == -signal.SIGKILL
    newest_after_a = global_step_of(all_numbered_checkpoints_load(workspace)[0])

    # B: resume from the newest checkpoint, then die inside the write of its Nth checkpoint.
    nth_save = rng.randint(1, 3)
    b = start_train([*argv, "--resume", "auto"], tmp_path, "b",
                    faults={"kill_in_save": nth_save, "fraction": rng.uniform(0.05, 0.95)})
    assert finish(b) == -signal.SIGKILL
    assert resume_entry(log_runs(workspace)[1])["resume.global_step"] == newest_after_a
    survivors = all_numbered_checkpoints_load(workspace)  # the torn write never took a checkpoint's name
    assert global_step_of(survivors[0]) == newest_after_a + nth_save - 1
    # Exactly B's: A may also have been killed inside a write, but B removed that leftover when it took the
    # workspace's lock (before, a B killed in its first save left two temporary files).
    assert len(list(workspace.glob(".checkpoint-*.tmp"))) == 1, "the kill did not land inside a checkpoint write"

    # C: bit rot in the newest checkpoint; --resume auto skips it (warning) and takes the one before; SIGTERM.
    corrupt, previous = survivors[0], survivors[1]
    flip_one_byte(corrupt)
    c = start_train([*argv, "--resume", "auto"], tmp_path, "c")
    resumed_at = global_step_of(previous)
    # After steps 1-3 of an epoch the next stop check comes before any epoch-end checkpoint: only the
    # preemption save can keep the steps done since the last periodic checkpoint.
    target = rng.choice([s for s in range(resumed_at + 1, TOTAL_STEPS - 2) if s % STEPS_PER_EPOCH in (1, 2, 3)])
    wait_for_step(workspace, 2, target, c)
    signalled = time.time()
    c.send_signal(signal.SIGTERM)
    assert finish(c) == 0, (tmp_path / "c.err").read_text()[-2000:]
    warnings = (tmp_path / "c.err").read_text()
    assert "skipping unreadable checkpoint" in warnings and corrupt.name in warnings and "CRC-32" in warnings
    run_c = log_runs(workspace)[2]
    assert resume_entry(run_c)["resume.global_step"] == resumed_at
    assert summary_entry(run_c)["exit.reason"] == "preempted"
    stopped = read_checkpoint(list_checkpoints(workspace)[0])
    assert stopped["step_in_epoch"] > 0, "the stop landed on an epoch boundary"
    steps_c = step_entries(run_c)
    assert stopped["global_step"] == max(step for step, _ in steps_c)  # the step in flight was saved
    assert sum(1 for _, stamp in steps_c if stamp > signalled) <= 1, "more than one step ran after SIGTERM"
    assert not list(workspace.glob(".checkpoint-*.tmp")), "the interrupted write's temporary file was not removed"

    # D: continue from the preemption checkpoint at the next step, to the end.
    d = start_train([*argv, "--resume", "auto"], tmp_path, "d")
    assert finish(d) == 0, (tmp_path / "d.err").read_text()[-2000:]
    run_d = log_runs(workspace)[3]
    resume = resume_entry(run_d)
    assert (resume["resume.global_step"], resume["resume.step_in_epoch"]) == (stopped["global_step"],
                                                                              stopped["step_in_epoch"])
    assert step_entries(run_d)[0][0] == stopped["global_step"] + 1  # the next step, not the next epoch
    assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))
