"""Distributed faults: under `torchrun --max-restarts 1` (gloo), one rank dying restarts the job, which resumes
from the last checkpoint and ends with exactly the weights of an uninterrupted two-rank run."""
from __future__ import annotations

import sys

import pytest

from resnext.checkpoint import read_checkpoint

from reliability_support import (assert_identical_training_state, finish, log_runs, resume_entry, start,
                                 tiny_dataset)

# 40 training images, 2 ranks x 4: 5 optimizer steps per epoch, 2 epochs; a checkpoint every 2 steps.
ARGS = ["--preset", "resnext", "--arch", "resnext_tiny", "--image-size", "32", "-b", "4", "-j", "0", "--epochs", "2",
        "--warmup", "0",
        "--seed", "11", "--print-freq", "1", "--checkpoint-interval", "2", "--use-ema", "0.9", "--deterministic",
        "--no-tensorboard", "--no-progress"]
KILLED_AFTER_STEP = 7  # rank 1 dies after step 7 (0-based), before the checkpoint at global step 8 is written


def torchrun(data, tmp_path, name, faults=None) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "faults", "train", data, *ARGS,
               "--workspace", tmp_path / name, "--resume", "auto"]
    return finish(start(command, tmp_path, name, faults), timeout=240)


@pytest.mark.slow
def test_killing_one_rank_restarts_the_job_from_the_last_checkpoint(embedded_data, tmp_path):
    data = tiny_dataset(embedded_data, tmp_path)
    assert torchrun(data, tmp_path, "straight") == 0, (tmp_path / "straight.err").read_text()[-3000:]
    # Rank 1 also restarts 3 s late, so rank 0 reaches the new rendezvous first: that is when keys left by the dead
    # attempt would send it to addresses nobody listens on (docs/reliability.md, "Distributed faults").
    faults = {"kill_rank": 1, "at_step": KILLED_AFTER_STEP, "slow_restart": 1, "delay": 3}
    code = torchrun(data, tmp_path, "faulted", faults=faults)
    assert code == 0, (tmp_path / "faulted.err").read_text()[-3000:]

    runs = log_runs(tmp_path / "faulted")
    assert len(runs) == 2, "the job was not restarted"  # rank 0 logs one PARAMETER entry per attempt
    assert resume_entry(runs[0]) is None
    resume = resume_entry(runs[1])
    assert (resume["resume.global_step"], resume["resume.epoch"], resume["resume.step_in_epoch"]) == (6, 1, 1)
    assert_identical_training_state(read_checkpoint(tmp_path / "straight" / "checkpoint.pth.tar"),
                                    read_checkpoint(tmp_path / "faulted" / "checkpoint.pth.tar"))
