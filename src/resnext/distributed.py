"""Process-group set-up for `torchrun`, rank helpers, metric reduction and cross-rank BatchNorm.

torchrun (single node: `torchrun --nproc_per_node 8 ...`; multi-node: `--nnodes N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`) sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process. NCCL carries
gradients on GPUs; a second, gloo group carries small host-side decisions (stop now? which RNG state?) so they
never wait on the GPU stream.
"""
from __future__ import annotations

import datetime
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .device import resolve_device
from .errors import JoinTimeout, UserError, first_line
from .recipe import JOIN_TIMEOUT_S


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


COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default for gloo; a checkpoint write fits in it


def setup(requested_device: str | None = None, backend: str | None = None,
          join_timeout: float = JOIN_TIMEOUT_S) -> DistEnv:
    """Read torchrun's environment and join the process group (a no-op for a single process).

    Every rank waits at most `join_timeout` seconds for the others; then JoinTimeout names the ranks that did not
    come (instead of waiting forever).
    """
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
        store = _connect_store(join_timeout)
        store = dist.PrefixStore(f"resnext/round/{join_round(store, rank, world_size, join_timeout)}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=COLLECTIVE_TIMEOUT)
    if world_size > 1:
        env.control_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return env


def _store_address() -> str:
    return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"


def _connect_store(timeout_s: float) -> dist.Store:
    """The key-value store at MASTER_ADDR:MASTER_PORT (torchrun's agent store, or rank 0's own)."""
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout_s)))
    except (RuntimeError, ValueError, TimeoutError) as err:  # torch's DistNetworkError / DistStoreError are these
        raise JoinTimeout(f"cannot reach the rendezvous store at {_store_address()} within {timeout_s:g} s (--join-timeout): "
                          f"{first_line(err)}; check MASTER_ADDR / MASTER_PORT and that rank 0 was started.") from None
    if isinstance(store, dist.PrefixStore):
        # Older torch (2.4.1; until pytorch/pytorch#135957) puts torchrun's workers under
        # "/worker/attempt_{TORCHELASTIC_RESTART_COUNT}", which a relaunched node (attempt 0) and a restarted
        # survivor (1) do not share; join_round names the round instead.
        store = store.underlying_store
    return store


def join_round(store: dist.Store, rank: int, world_size: int, timeout_s: float) -> str:
    """A name that exactly the processes of this launch share, to keep their store keys apart from earlier ones.

    The store can outlive processes: torchrun's agent keeps it across `--max-restarts`, and on two nodes a restarted
    survivor (TORCHELASTIC_RESTART_COUNT 1) meets a relaunched node (0), so no counter the processes hold agrees.
    Keys a dead process left would send a new one to addresses nobody listens on. So every rank draws a fresh
    token; rank 0 answers each token it reads under a key named after that token (an old token's answer is read by
    nobody), the others reply under a key named after rank 0's token, and rank 0's token names the round. Raises
    JoinTimeout naming the missing ranks after `timeout_s` seconds.
    """
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout_s
    if rank != 0:
        store.set(f"resnext/join/{rank}", token)
        try:
            store.wait([f"resnext/welcome/{token}"], datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, TimeoutError):
            raise JoinTimeout(f"rank {rank} waited {timeout_s:g} s (--join-timeout) for rank 0, which did not "
                              "come; check that every node was launched (torchrun --nnodes / --node-rank).") from None
        leader = store.get(f"resnext/welcome/{token}").decode()
        store.set(f"resnext/round/{leader}/here/{rank}", "1")
        return leader
    answered: dict[int, bytes] = {}
    missing = set(range(1, world_size))
    while True:
        for other in sorted(missing):
            key = f"resnext/join/{other}"
            if store.check([key]):
                their_token = store.get(key)
                if answered.get(other) != their_token:  # a newer token than the one answered: a new process
                    store.set(f"resnext/welcome/{their_token.decode()}", token)
                    answered[other] = their_token
            if store.check([f"resnext/round/{token}/here/{other}"]):
                missing.discard(other)
        if not missing:
            return token
        if time.monotonic() > deadline:
            ranks = ", ".join(map(str, sorted(missing)))
            raise JoinTimeout(f"rank(s) {ranks} of {world_size} did not join within {timeout_s:g} s (--join-timeout); "
                              "check that every node was launched (torchrun --nnodes / --node-rank) and reaches "
                              f"{_store_address()}.")
        time.sleep(0.05)


# torch < 2.8 frees a gloo process group (when the last holder, the DDP model, goes) without releasing the GIL while
# it joins its worker threads, and a worker still dropping the last collective's tensors waits for the GIL: a hang at
# exit in about one torchrun run in three with torch 2.4.1 (fixed by pytorch/pytorch#154976). Sleeping gives the
# workers the GIL to finish first.
_GLOO_WORKERS_SETTLE_S = 0.05


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        time.sleep(_GLOO_WORKERS_SETTLE_S)
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
