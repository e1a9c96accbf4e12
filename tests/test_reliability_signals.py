"""Signals as clusters send them: to the main process, to its whole process group (SLURM, `timeout`, container
stops), to a torchrun agent, as SLURM's advance warning, twice, and followed by SIGKILL after the grace period.

Every stop signal (SIGTERM, SIGINT, SIGHUP, SIGUSR1) ends the run after the step in flight with one checkpoint of
that step and exit status 0, with two DataLoader worker processes running; the workers never turn the signal into
a crash and do not outlive the run; `--resume auto` then ends with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resnext.checkpoint import list_checkpoints, read_checkpoint

from conftest import descendants
from reliability_support import (TRAIN_ARGS, assert_identical_training_state, finish, log_runs, reference_state,
                                 start, start_train, step_entries, summary_entry, tiny_dataset, wait_for_step)

REPO = Path(__file__).resolve().parent.parent
# Two worker processes, and no periodic checkpoint: only the stop can save the steps since the epoch began.
WORKER_ARGS = [*TRAIN_ARGS, "-j", "2", "--checkpoint-interval", "0"]


@pytest.fixture(scope="module")
def tiny(embedded_data, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "reliability"
    data = tiny_dataset(embedded_data, base)
    return data, reference_state(data, base)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(map(alive, pids)):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def assert_stopped_after_the_logged_step(workspace: Path, err: str, run_index: int = 0,
                                        launcher: bool = False) -> dict:
    """One checkpoint holds the last step the log shows; the summary says preempted; no worker crashed (no
    traceback, except torchrun's own SignalException when it is the `launcher`)."""
    assert "DataLoader worker" not in err and "is killed by signal" not in err, err[-3000:]
    assert launcher or "Traceback" not in err, err[-3000:]
    run = log_runs(workspace)[run_index]
    assert summary_entry(run)["exit.reason"] == "preempted"
    stopped = read_checkpoint(list_checkpoints(workspace)[0])
    assert stopped["global_step"] == max(step for step, _ in step_entries(run))
    assert 0 < stopped["step_in_epoch"], "the stop landed on an epoch boundary"
    return stopped


@pytest.mark.slow
@pytest.mark.parametrize("signum,target", [(signal.SIGTERM, "group"), (signal.SIGHUP, "group"),
                                           (signal.SIGINT, "group"), (signal.SIGUSR1, "main")],
                         ids=["SIGTERM-group", "SIGHUP-group", "SIGINT-group", "SIGUSR1-main"])
def test_a_stop_signal_saves_the_step_in_flight_and_exits_0(tiny, tmp_path, signum, target):
    """Issue 11, cases 1 and 6: `kill -TERM -- -PGID` (SLURM, timeout), a hang-up, Ctrl-C in a terminal (the
    foreground group), SLURM's advance warning."""
    data, reference = tiny
    workspace = tmp_path / "workspace"
    argv = [data, *WORKER_ARGS, "--workspace", workspace]
    run = start_train(argv, tmp_path, "run", faults={"step_delay": 0.2})  # a session of its own: pgid == pid
    wait_for_step(workspace, 0, 6, run)
    workers = descendants(run.pid)
    assert len(workers) >= 2, "the DataLoader workers are not running"
    if target == "group":
        os.killpg(run.pid, signum)
    else:
        run.send_signal(signum)
    err_path = tmp_path / "run.err"
    assert finish(run) == 0, err_path.read_text()[-3000:]
    err = err_path.read_text()
    assert f"{signum.name} received: finishing the current step, saving a checkpoint" in err
    stopped = assert_stopped_after_the_logged_step(workspace, err)
    assert f"stopped by {signum.name} after global step {stopped['global_step']}" in (tmp_path / "run.out").read_text()
    assert not wait_gone(workers), "DataLoader workers outlived the run"
    if signum == signal.SIGTERM:
        resumed = start_train([*argv, "--resume", "auto"], tmp_path, "resumed")
        assert finish(resumed) == 0, (tmp_path / "resumed.err").read_text()[-3000:]
        assert step_entries(log_runs(workspace)[1])[0][0] == stopped["global_step"] + 1
        assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))


@pytest.mark.slow
def test_repeated_signals_during_the_save_and_a_kill_after_the_grace_period(tiny, tmp_path):
    """A second signal (SLURM signals every process, torchrun forwards again) does not disturb the save; SIGKILL
    during the save (the grace period ran out) leaves every earlier checkpoint valid, and the workers go too."""
    data, _ = tiny
    workspace = tmp_path / "twice"
    run = start_train([data, *WORKER_ARGS, "--workspace", workspace], tmp_path, "twice", faults={"slow_save": 2.0})
    wait_for_step(workspace, 0, 6, run)
    os.killpg(run.pid, signal.SIGTERM)
    deadline = time.time() + 60
    while not list(workspace.glob(".checkpoint-*.tmp")) and time.time() < deadline:
        time.sleep(0.02)
    assert list(workspace.glob(".checkpoint-*.tmp")), "the stop save did not start"
    for again in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
        os.killpg(run.pid, again)
        time.sleep(0.1)
    assert finish(run) == 0, (tmp_path / "twice.err").read_text()[-3000:]
    assert_stopped_after_the_logged_step(workspace, (tmp_path / "twice.err").read_text())

    workspace = tmp_path / "killed"
    argv = [data, *TRAIN_ARGS, "-j", "2", "--checkpoint-interval", "2", "--workspace", workspace]
    run = start_train(argv, tmp_path, "killed", faults={"slow_save": 3.0, "step_delay": 0.2})
    wait_for_step(workspace, 0, 5, run)
    while list(workspace.glob(".checkpoint-*.tmp")):  # not inside a periodic save
        time.sleep(0.02)
    before = [path.name for path in list_checkpoints(workspace)]
    workers = descendants(run.pid)
    os.killpg(run.pid, signal.SIGTERM)
    while not list(workspace.glob(".checkpoint-*.tmp")) and time.time() < deadline + 60:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    assert finish(run) == -signal.SIGKILL
    found = list_checkpoints(workspace)
    assert [path.name for path in found][-len(before):] == before or not before
    for path in found:
        read_checkpoint(path)  # nothing torn under a checkpoint's name
    assert not wait_gone(workers), "DataLoader workers outlived a SIGKILLed run"


# ---- torchrun -----------------------------------------------------------------------------------------------

TWO_RANK_ARGS = ["--preset", "resnext", "--arch", "resnext_tiny", "--image-size", "32", "-b", "4", "-j", "2",
                 "--epochs", "2", "--warmup", "0", "--seed", "11", "--print-freq", "1", "--checkpoint-interval", "0", "--use-ema", "0.9",
                 "--deterministic", "--no-tensorboard", "--no-progress"]


def torchrun(data, tmp_path, name, faults=None, extra=()):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", "0.2", "-m", "faults", "train", data, *TWO_RANK_ARGS,
               "--workspace", tmp_path / "workspace" if name != "straight" else tmp_path / "straight", *extra]
    return start(command, tmp_path, name, faults)


@pytest.mark.slow
def test_sigterm_to_the_torchrun_agent_stops_every_rank_after_the_same_step(embedded_data, tmp_path):
    """Issue 11, case 2: torchrun forwards SIGTERM to each worker's process group (DataLoader workers included)."""
    data = tiny_dataset(embedded_data, tmp_path)
    assert finish(torchrun(data, tmp_path, "straight"), timeout=300) == 0, (tmp_path / "straight.err").read_text()
    agent = torchrun(data, tmp_path, "signalled", faults={"step_delay": 0.3})
    workspace = tmp_path / "workspace"
    wait_for_step(workspace, 0, 3, agent)
    agent.send_signal(signal.SIGTERM)
    code = finish(agent, timeout=120)
    err = (tmp_path / "signalled.err").read_text()
    assert err.count("SIGTERM received: finishing the current step") == 2, err[-3000:]  # both ranks
    assert "forcefully exiting via" not in err, "torchrun had to SIGKILL a worker"
    assert_stopped_after_the_logged_step(workspace, err, launcher=True)
    print(f"torchrun exited {code} after forwarding SIGTERM")
    resumed = torchrun(data, tmp_path, "resumed", extra=["--resume", "auto"])
    assert finish(resumed, timeout=300) == 0, (tmp_path / "resumed.err").read_text()[-3000:]
    assert_identical_training_state(read_checkpoint(tmp_path / "straight" / "checkpoint.pth.tar"),
                                    read_checkpoint(workspace / "checkpoint.pth.tar"))


# ---- SLURM --------------------------------------------------------------------------------------------------

FAKE_SRUN = """
    import os, sys
    open(os.path.join(os.environ["FAKE_SLURM"], "step.pid"), "w").write(str(os.getpid()))
    os.environ.update(SLURM_PROCID="0", SLURM_NODEID="0", SLURM_LOCALID="0", SLURM_STEP_ID="0")
    args = [a for a in sys.argv[1:] if not a.startswith("--kill-on-bad-exit")]
    if os.environ.get("RESNEXT_FAULTS"):  # the test's fault wrapper (tests/faults.py) in place of resnext's CLI
        args[args.index("resnext")] = "faults"
    os.execvp(args[0], args)
"""
FAKE_SCANCEL = """
    import os, signal, sys
    name = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--signal="))
    step = int(open(os.path.join(os.environ["FAKE_SLURM"], "step.pid")).read())
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    step_processes, stack = [step], [step]
    while stack:
        for child in children.get(stack.pop(), []):
            step_processes.append(child)
            stack.append(child)
    for pid in step_processes:  # slurmstepd signals every process of the step
        try:
            os.kill(pid, getattr(signal, "SIG" + name))
        except ProcessLookupError:
            pass
"""
FAKE_SCONTROL = """
    import os, sys
    if sys.argv[1:3] == ["show", "hostnames"]:
        print("127.0.0.1")
    elif sys.argv[1] == "requeue":
        open(os.path.join(os.environ["FAKE_SLURM"], "requeued"), "a").write(sys.argv[2] + "\\n")
"""


def with_faults(env: dict, faults: dict) -> dict:
    """`env` for a job whose step runs tests/faults.py with `faults` in place of resnext's CLI (FAKE_SRUN swaps it)."""
    from faults import VARIABLE, environment

    wrapped = environment(faults)
    return {**env, "PYTHONPATH": wrapped["PYTHONPATH"], VARIABLE: wrapped[VARIABLE]}


def slurm_environment(tmp_path: Path, data: Path, workspace: Path) -> dict:
    """SLURM's variables for a one-node job, and srun / scancel / scontrol that act as SLURM's on this machine."""
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, source in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
        script = fake / "bin" / name
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
        script.chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return dict(os.environ, PATH=f"{fake / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                FAKE_SLURM=str(fake), OMP_NUM_THREADS="1",
                SLURM_JOB_ID="4242", SLURM_JOB_NAME="resnext", SLURM_JOB_NODELIST="node1", SLURM_NNODES="1",
                DATA=str(data), WORKSPACE=str(workspace), GPUS_PER_NODE="1", PORT=str(port))


@pytest.mark.slow
def test_the_sbatch_script_saves_before_the_time_limit_and_requeues(tiny, tmp_path):
    """scripts/slurm/train.sbatch as SLURM runs it: SIGUSR1 to the batch shell (--signal=B:USR1@300), its trap
    signals every process of the step with SIGTERM (scancel --signal=TERM), the job is requeued, and the requeued
    job ends with the weights of an uninterrupted run."""
    data, reference = tiny
    workspace = tmp_path / "workspace"
    env = slurm_environment(tmp_path, data, workspace)
    script = [str(REPO / "scripts" / "slurm" / "train.sbatch"), *TRAIN_ARGS, "--checkpoint-interval", "0"]
    # Steps of 0.5 s: the warning travels through bash's trap, scancel and torchrun in well under a second even on a
    # loaded machine, so the stop lands on global step 2 to 4 of the first epoch's 5, never on its boundary.
    with open(tmp_path / "job.out", "w") as out:
        job = subprocess.Popen(["bash", *script], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                               env=with_faults(env, {"step_delay": 0.5}))
    wait_for_step(workspace, 0, 1, job)
    os.kill(job.pid, signal.SIGUSR1)  # to the batch shell only (B:)
    assert finish(job) == 0, (tmp_path / "job.out").read_text()[-3000:]
    output = (tmp_path / "job.out").read_text()
    assert (tmp_path / "slurm" / "requeued").read_text() == "4242\n"
    assert "time limit is near" in output and output.count("SIGTERM received: finishing the current step") >= 1
    assert_stopped_after_the_logged_step(workspace, output, launcher=True)
    with open(tmp_path / "requeued.out", "w") as out:
        again = subprocess.Popen(["bash", *script], stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    assert finish(again) == 0, (tmp_path / "requeued.out").read_text()[-3000:]
    assert not (tmp_path / "slurm" / "requeued").read_text().count("\n") > 1
    assert_identical_training_state(reference, read_checkpoint(workspace / "checkpoint.pth.tar"))
