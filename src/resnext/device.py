"""Which device to run on, waiting for it, and the autocast of a precision: the few lines every module shares."""
from __future__ import annotations

import contextlib

import torch

from .errors import UserError


def resolve_device(requested: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """`requested` ('cpu', 'cuda', 'cuda:N'; None: CUDA when there is one) checked against this machine.

    A bare 'cuda' means this process's GPU: `local_rank` modulo the GPUs visible (torchrun's LOCAL_RANK).
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise UserError(f"'{requested}' is not a device name; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device '{requested}' is not supported; use cpu, cuda or cuda:N.")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"device '{requested}' was asked for but no CUDA GPU is visible; use --device cpu.")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(f"device '{requested}' does not exist: this machine has {count} GPU(s), cuda:0 to "
                        f"cuda:{count - 1}.")
    return torch.device("cuda", device.index if device.index is not None else local_rank % count)


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (a no-op on the CPU): for timing and latency."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AUTOCAST_DTYPES = {"amp": torch.float16, "amp-bf16": torch.bfloat16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the math runs in under `precision` (amp | amp-bf16 | tf32 | fp32)."""
    return AUTOCAST_DTYPES.get(precision, torch.float32)


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """The precision's autocast context; a no-op for tf32 and fp32."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)
