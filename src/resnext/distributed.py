"""Process-group set-up for `torchrun`, rank helpers, metric reduction and cross-rank BatchNorm.

torchrun (single node: `torchrun --nproc_per_node 8 ...`; multi-node: `--nnodes N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`) sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process. NCCL carries
gradients on GPUs; a second, gloo group carries small host-side decisions (stop now? which RNG state?) so they
never wait on the GPU stream.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .device import resolve_device
from .errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control_group: object = None  # gloo group for host-side collectives

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(requested_device: str | None = None, backend: str | None = None) -> DistEnv:
    """Read torchrun's environment and join the process group (a no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and requested_device is not None and ":" in str(requested_device):
        raise UserError(f"--device {requested_device} would put every torchrun process on one GPU; pass --device "
                        "cuda and each process takes its own (LOCAL_RANK).")
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise UserError("--dist-backend nccl needs GPUs; use gloo for CPU processes.")
        timeout = datetime.timedelta(minutes=30)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # After a failure, `torchrun --max-restarts` starts new workers on the agent's same store, and torch (2.14
        # here) no longer keeps each attempt's keys apart: a restarted rank can read a dead rank's address and fail
        # or hang. One namespace per attempt keeps them apart on every torch version.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"resnext/attempt-{attempt}", store),
                                rank=rank, world_size=world_size, timeout=timeout)
    if world_size > 1:
        env.control_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return env


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place; returns the tensor for chaining."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Elementwise maximum over ranks, in place; returns the tensor for chaining."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when `flag` is true on any rank (a host-side vote over the gloo group)."""
    if not env.distributed:
        return flag
    vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=env.control_group)
    return bool(vote.item())


def gather_to_main(obj, env: DistEnv) -> list | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
    if not env.distributed:
        return [obj]
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, gathered, dst=0, group=env.control_group)
    return gathered


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier(group=env.control_group)


def data_parallel(model: nn.Module, env: DistEnv) -> nn.parallel.DistributedDataParallel:
    """`model` in DistributedDataParallel, gradients bucketed in place, buffers not synchronised every step.

    Rank 0's BatchNorm statistics are broadcast before evaluation and saving instead (broadcast_buffers below):
    the same numbers with one broadcast per epoch instead of one per step. torch >= 2.13 names that
    `forward_sync_buffers=False` and deprecates `broadcast_buffers=False` with a FutureWarning that every rank
    printed; the new flag still syncs buffers once at construction, which changes nothing here (every rank
    builds the same model from the same seed or checkpoint).
    """
    import inspect

    options = {"device_ids": [env.device.index] if env.device.type == "cuda" else None,
               "gradient_as_bucket_view": True}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False
    else:  # torch < 2.13
        options["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(model, **options)


def broadcast_buffers(module: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's BatchNorm statistics, so validation on any rank sees the checkpointed model."""
    if env.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over all ranks, differentiable: every rank's output depends on every rank's input, so
    each input's gradient is the sum of the output gradients over the ranks (one more all-reduce).

    What torch.distributed.nn.functional.all_reduce does for SUM; torch >= 2.13 deprecates that function with a
    FutureWarning on every call and rank, and points to a private module instead.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose batch statistics span all ranks, for CPU/gloo runs (torch's SyncBatchNorm is GPU-only).

    Two autograd-aware all-reduces per layer: the sums give the global mean, then the squared deviations from that
    mean give the variance. That is the two-pass formula one large batch uses (sum-of-squares minus squared mean
    cancels catastrophically on near-constant channels), and gradients flow across ranks as they would there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        channels = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / channels], dtype=torch.float32, device=x.device)
        sums = all_reduce(torch.cat([xf.sum((0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centered = xf - mean.view(1, channels, 1, 1)
        var = all_reduce((centered * centered).sum((0, 2, 3))) / total
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), momentum)
        shape = (1, channels, 1, 1)
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, env: DistEnv) -> nn.Module:
    """Batch statistics over all ranks: torch's SyncBatchNorm on GPUs, CrossRankBatchNorm2d on CPUs."""
    if not env.distributed:
        return model
    if env.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(model)


def _swap_batchnorm(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, CrossRankBatchNorm2d):
            replacement = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                               child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            _swap_batchnorm(child)
    return module
