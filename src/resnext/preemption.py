"""Graceful stop: every way a cluster ends a job becomes "finish the step, save a checkpoint, exit 0".

The signals (docs/reliability.md, "Preemption and signals", has the table):

    SIGTERM   SLURM (preemption, scancel, time limit), Kubernetes (pod deletion), `timeout`, torchrun forwarding
    SIGINT    Ctrl-C (a second Ctrl-C interrupts at once: exit 130)
    SIGHUP    the terminal or ssh session closed
    SIGUSR1   SLURM's advance warning (`sbatch --signal=USR1@120`; torchrun forwards it when told to handle it)

They may reach the main process alone, its whole process group (SLURM, `timeout`, a container stop) or a torchrun
agent that forwards them to each worker's process group. Only the training process reacts: data-loading worker
processes ignore them (`ignore_stop_signals`, their worker_init_fn), so they never die before the checkpoint is
written; they still end with the main process (torch's workers watch their parent). Every rank votes on the stop
after each step (distributed.any_rank), so all ranks stop after the same step and save one checkpoint together.
Repeated signals (SLURM signals every process of a step, and torchrun forwards the same signal again) only
repeat the request.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

notices = logging.getLogger("resnext")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """Make this process ignore the stop signals; the worker_init_fn of every DataLoader of resnext.

    torch's workers install a SIGTERM handler that exits the worker, and SIGINT raises KeyboardInterrupt in them: a
    signal sent to the whole process group would end the workers while the main process still needs a batch to
    finish its step ("DataLoader worker (pid N) is killed by signal"). Ignoring them leaves the decision to the
    main process, which stops the workers itself when it is done; a main process that dies hard takes them along
    (torch's workers exit when their parent is gone).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopSignal:
    """Context manager that turns the stop signals into a flag the training loop polls once per step.

    `received` is the name of the first signal ("SIGTERM", ...) or None. Outside the main thread (where Python
    cannot set handlers) it does nothing.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if signum == signal.SIGINT and self.received == "SIGINT":
                # A second Ctrl-C: the user does not want to wait. Interrupting a checkpoint write is safe: it goes to
                # a temporary file that is removed, and the previous checkpoint stays the newest.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            return  # the same request again (SLURM signals every process, torchrun forwards it again)
        self.received = name
        if signum == signal.SIGHUP:
            _detach_from_terminal()
        # Logging from a signal handler is safe here: Python runs it between bytecodes of the main thread.
        notices.info(f"{name} received: finishing the current step, saving a checkpoint, then exiting "
                     "(continue with --resume auto).")

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _detach_from_terminal() -> None:
    """After a hang-up the terminal is gone and writing to it fails (EIO): send console output that went to it to
    /dev/null, so the run can save and exit; the DLLogger file in the workspace keeps the record."""
    null = None
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                null = os.open(os.devnull, os.O_WRONLY) if null is None else null
                os.dup2(null, fd)
        except OSError:
            pass
    if null is not None:
        os.close(null)
