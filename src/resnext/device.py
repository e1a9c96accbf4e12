"""Which device to run on, its numerics (precision, memory format, backend flags), waiting for it, and the
autocast of a precision: the set-up that training, evaluation, prediction and benchmarks share."""
from __future__ import annotations

import contextlib
import os

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


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The precision to run in: `precision`, or by default fp16 AMP on CUDA and fp32 on the CPU."""
    return precision or ("amp" if device.type == "cuda" else "fp32")


def resolve_memory_format(memory_format: str | None, device: torch.device) -> torch.memory_format:
    """torch.channels_last for 'nhwc', torch.contiguous_format for 'nchw'; by default NHWC on CUDA, NCHW on CPUs.

    On CUDA every stage's grouped convolution is faster in NHWC with current cuDNN (SPEC.md section 6); on CPUs the
    oneDNN grouped kernels gain little, and NCHW keeps the CPU path simple.
    """
    chosen = memory_format or ("nhwc" if device.type == "cuda" else "nchw")
    return torch.channels_last if chosen == "nhwc" else torch.contiguous_format


def configure_backends(precision: str, deterministic: bool) -> None:
    """TF32 for fp32 math unless strict fp32 is asked for; cuDNN autotuning unless bit-exact runs are."""
    allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def make_grad_scaler(precision: str, device: torch.device, optimizer: torch.optim.Optimizer, *,
                     init_scale: float = 128.0, dynamic: bool = True) -> torch.amp.GradScaler:
    """NVIDIA's loss scaler for fp16: starts at `init_scale` (--static-loss-scale), x2 after 100 clean steps when
    `dynamic`, /2 on overflow (NVIDIA's DLE ConvNets, image_classification/training.py).

    Other precisions get a scaler fixed at 1.0 too: its inf/NaN check skips a poisoned update, and multiplying by 1
    changes no number. The check is free on the CPU and, with the fused SGD, stays on the GPU; with an unfused
    optimizer on a GPU (RMSprop) it would wait for the device every step, so there it is off and a NaN loss is only
    reported (training's LossHealth) until a run of them stops training.
    """
    if precision == "amp":
        return torch.amp.GradScaler(device.type, init_scale=init_scale, growth_factor=2.0, backoff_factor=0.5,
                                    growth_interval=100 if dynamic else 2**31 - 1)
    check_on_device = device.type == "cpu" or bool(optimizer.defaults.get("fused"))
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_factor=2.0, backoff_factor=0.5,
                                growth_interval=2**31 - 1, enabled=check_on_device)
