"""Graceful stop on SIGTERM / SIGINT: the training loop finishes its step, saves a checkpoint and exits 0.

Cluster schedulers (SLURM, Kubernetes) send SIGTERM before they kill a preempted job; torchrun forwards it to every
worker. A second Ctrl-C restores Python's default and interrupts at once, for a user who does not want to wait.
"""
from __future__ import annotations

import signal
import threading


class StopSignal:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls once per step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, _frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
