"""Fault injection for the reliability tests: `python -m faults ARGS` runs `resnext ARGS` with faults switched on.

The faults come from the RESNEXT_FAULTS environment variable (a JSON object), so the same wrapper works for one
process and for every rank torchrun starts. No production code knows about them: they patch library functions
from the outside before the CLI runs.

    {"kill_in_save": N, "fraction": F}   the Nth torch.save of this process writes the first fraction F of its
                                         bytes to the file, then the process SIGKILLs itself (a crash mid-write)
    {"kill_rank": R, "at_step": S}       rank R SIGKILLs itself right after optimizer step S (global, 0-based),
                                         only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT 0)
    {"slow_restart": R, "delay": S}      rank R starts S seconds late in torchrun's restarts (a slow node), so
                                         the other ranks reach the rendezvous first
    {"step_delay": S}                    every optimizer step takes S seconds longer (a slow job, to be caught alive)
    {"slow_save": S}                     each checkpoint write pauses S seconds half-way (a large checkpoint on slow
                                         storage, to signal or kill a process inside its write)
    {"no_dali": true}                    `import nvidia.dali` fails, as on a machine without DALI

Run it with the tests folder on PYTHONPATH (`environment()` below does that).
"""
from __future__ import annotations

import faulthandler
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

VARIABLE = "RESNEXT_FAULTS"


def environment(faults: dict | None = None, **extra: str) -> dict:
    """os.environ for a subprocess that runs `python -m faults`: this folder on PYTHONPATH, one thread per process."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)
    env.pop(VARIABLE, None)
    if faults:
        env[VARIABLE] = json.dumps(faults)
    return env


def _kill_in_save(call_number: int, fraction: float) -> None:
    import torch

    real_save = torch.save
    calls = 0

    def save(obj, f, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls != call_number or not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: int(len(data) * fraction)])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def _kill_rank(rank: int, at_step: int) -> None:
    if int(os.environ.get("RANK", "0")) != rank or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    from resnext import training

    observe = training.LossHealth.observe

    def observe_then_die(self, loss, step):
        observe(self, loss, step)
        if step == at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    training.LossHealth.observe = observe_then_die


def _slow_restart(rank: int, delay: float) -> None:
    if int(os.environ.get("RANK", "0")) == rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        time.sleep(delay)


def _step_delay(seconds: float) -> None:
    from resnext import training

    observe = training.LossHealth.observe

    def observe_slowly(self, loss, step):
        observe(self, loss, step)
        time.sleep(seconds)

    training.LossHealth.observe = observe_slowly


def _slow_save(seconds: float) -> None:
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(seconds)
        f.write(data[len(data) // 2:])

    torch.save = save


def _no_dali() -> None:
    for name in list(sys.modules):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            del sys.modules[name]
    sys.modules["nvidia.dali"] = None  # makes `import nvidia.dali` (and its submodules) raise ImportError


def install(faults: dict) -> None:
    if "kill_in_save" in faults:
        _kill_in_save(int(faults["kill_in_save"]), float(faults.get("fraction", 0.5)))
    if "kill_rank" in faults:
        _kill_rank(int(faults["kill_rank"]), int(faults["at_step"]))
    if "slow_restart" in faults:
        _slow_restart(int(faults["slow_restart"]), float(faults.get("delay", 3.0)))
    if "step_delay" in faults:
        _step_delay(float(faults["step_delay"]))
    if "slow_save" in faults:
        _slow_save(float(faults["slow_save"]))
    if faults.get("no_dali"):
        _no_dali()


def main() -> int:
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2 PID` prints where a hung process is
    install(json.loads(os.environ.get(VARIABLE, "{}")))
    from resnext.cli import main as resnext_main

    return resnext_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
