"""Run logs: NVIDIA DLLogger-compatible JSON lines, a console progress display, and TensorBoard events.

Only rank 0 logs (training passes `enabled=False` elsewhere). docs/ARCHITECTURE.md describes the JSON-lines
format; `resnext report` reads it back. A log write that fails (disk full) is reported once and the run goes on:
losing a log line must never cost a training run.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import sys
import time
from pathlib import Path

notices = logging.getLogger("resnext")

# Units and display formats, written once as METADATA lines like DLLogger does.
METRICS = {
    "train.loss": (None, ":>5.5f"), "train.lr": (None, ":>5.6f"), "train.total_ips": ("images/s", ":>9.2f"),
    "train.compute_ips": ("images/s", ":>9.2f"), "train.data_time": ("s", ":>5.5f"),
    "train.compute_time": ("s", ":>5.5f"), "train.grad_scale": (None, ":>9.1f"), "train.epoch_time": ("s", ":>7.1f"),
    "val.top1": ("%", ":>5.3f"), "val.top5": ("%", ":>5.3f"), "val.loss": (None, ":>5.5f"),
    "val.compute_ips": ("images/s", ":>9.2f"), "val.total_ips": ("images/s", ":>9.2f"),
    "val.compute_latency": ("s", ":>5.5f"), "val.compute_latency_at95": ("s", ":>5.5f"),
    "val.compute_latency_at99": ("s", ":>5.5f"), "val.compute_latency_at100": ("s", ":>5.5f"),
}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class RunLogger:
    """Writes one run's metrics to the DLLogger file, the console and (optionally) TensorBoard."""

    def __init__(self, path: Path | None, *, enabled: bool = True, tensorboard_dir: Path | None = None,
                 progress: bool | None = None, stream=None) -> None:
        self.enabled = enabled
        self.path = Path(path) if path is not None and enabled else None
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if progress is None else progress
        self.start = time.time()
        self._file = None
        self._write_failed = False
        self._tensorboard = None
        self._live_line = False
        if not enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            for metric, (unit, fmt) in METRICS.items():
                self._write({"type": "METADATA", "metric": metric, "metadata": {"unit": unit, "format": fmt}})
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tensorboard = SummaryWriter(log_dir=str(tensorboard_dir))

    # ---- the DLLogger file ------------------------------------------------------------------------------
    def _write(self, entry: dict) -> None:
        if self._file is None:
            return
        now = time.time()
        record = {"timestamp": f"{now:.3f}",
                  "datetime": _dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                  "elapsedtime": round(now - self.start, 3), **entry}
        try:
            self._file.write("DLLL " + json.dumps(_jsonable(record)) + "\n")
            self._file.flush()
        except OSError as err:
            if not self._write_failed:
                notices.warning(f"warning: cannot write the log file {self.path} ({err.strerror}); "
                                "training continues, the console still shows progress.")
            self._write_failed = True

    def log(self, step, data: dict) -> None:
        if self.enabled:
            self._write({"type": "LOG", "step": step, "data": data})

    def parameters(self, data: dict) -> None:
        self.log("PARAMETER", data)

    # ---- higher-level events ----------------------------------------------------------------------------
    def train_progress(self, epoch: int, step: int, steps_per_epoch: int, epochs: int, data: dict,
                       eta_s: float) -> None:
        """Every --print-freq optimizer steps: the JSON line, a console line, TensorBoard scalars."""
        if not self.enabled:
            return
        self.log([epoch, step], data)
        global_step = epoch * steps_per_epoch + step
        self._scalars(data, global_step)
        text = (f"epoch {epoch + 1}/{epochs} step {step}/{steps_per_epoch}  loss {data['train.loss']:.4f}  "
                f"lr {data['train.lr']:.5f}  {data['train.total_ips']:.1f} img/s  "
                f"data {data['train.data_time'] * 1e3:.1f} ms  eta {_duration(eta_s)}")
        self._console(text, transient=True)

    def epoch_end(self, epoch: int, data: dict, steps_per_epoch: int) -> None:
        if not self.enabled:
            return
        self.log([epoch], data)
        self._scalars(data, (epoch + 1) * steps_per_epoch)
        parts = [f"{k.split('.', 1)[1] if k.startswith('train.') else k} {_fmt(v)}" for k, v in data.items()]
        self._console(f"epoch {epoch + 1}: " + "  ".join(parts))

    def message(self, text: str) -> None:
        if self.enabled:
            self._console(text)

    def summary(self, data: dict) -> None:
        if not self.enabled:
            return
        self.log([], data)
        # The JSON log keeps DLLogger's 0-based epochs; the console counts from 1, as its per-epoch lines do.
        shown = {k: v + 1 if k.endswith(".epoch") and isinstance(v, int) and v >= 0 else v for k, v in data.items()}
        self._console("summary: " + "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items()))

    def close(self) -> None:
        if self._live_line:
            self.stream.write("\n")
            self._live_line = False
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ---- helpers ----------------------------------------------------------------------------------------
    def _scalars(self, data: dict, global_step: int) -> None:
        if self._tensorboard is None:
            return
        for key, value in data.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tensorboard.add_scalar(key.replace(".", "/"), value, global_step)

    def _console(self, text: str, transient: bool = False) -> None:
        if self.live and transient:
            self.stream.write("\r\033[K" + text)
            self._live_line = True
        else:
            if self._live_line:
                self.stream.write("\r\033[K")
                self._live_line = False
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
