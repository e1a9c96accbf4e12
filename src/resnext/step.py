"""The training step: forward, loss, backward and optimizer update of one optimizer step, run eagerly, compiled
(`--compile`) or replayed from a CUDA graph (`--cuda-graphs`).

    make_step(config, model, ...)   the variant a run asks for (training.setup builds it once)
    step(micro_batches, lr)         one optimizer step over `accumulation` micro-batches at learning rate `lr`;
                                    returns the step's mean loss (0-d tensor on the device, not synchronized)

`TrainStep` (eager) is the reference; tests/test_step.py holds the other two to its numbers.

`CompiledStep` (--compile) compiles two regions with torch.compile (inductor):
- the forward and the loss together; AOTAutograd compiles their backward from the same graph, so the whole
  backward runs compiled too (BatchNorm, ReLU and residual adds fused in both directions, the loss fused with the
  classifier);
- the optimizer's update (PyTorch's compiled optimizer), with the learning rate held in device tensors, so a new LR
  each step does not recompile (PyTorch recipe "Running the compiled optimizer with an LR Scheduler"). It compiles
  twice: for the first update, which creates the optimizer state (momentum buffers), and for every later one. Every
  update is compiled, also the first after a resume, so a resumed compiled run does the same arithmetic as an
  uninterrupted one (resume stays exact).
Left outside the compiled regions, on purpose: the loss scaler (TorchDynamo does not trace torch.amp.GradScaler;
its scale, inf check and update are a few device operations around the compiled update); MixUp's host-side random
draws (training mixes the batch before the step); the EMA update (training, after the step: a fused lerp);
gradient accumulation (one compiled forward/backward per micro-batch, DDP's no_sync for all but the last); DDP's
all-reduce (its C++ reducer; TorchDynamo's DDP optimizer splits the compiled forward at bucket boundaries so the
backward keeps overlapping communication). Compiled autograd is not used: with one forward graph AOTAutograd
already compiles the entire backward; compiled autograd would add only the accumulation into `.grad` (nothing to
add for one micro-batch after zero_grad(set_to_none=True)), and under torchrun it needs DDP's Python reducer.

`GraphedStep` (--cuda-graphs) records the whole step, eager or compiled (forward, loss, backward, unscale, clipping,
the fused SGD update and the loss scaler's update), once in a CUDA graph and replays it (PyTorch's "CUDA Graphs:
whole network capture"), removing the per-kernel launch cost from the CPU's critical path. Training batches always
have the same shape (drop_last), so each micro-batch is copied into a static input buffer; the LR goes into a
device tensor that the fused SGD kernel reads; the loss scale and its growth counter already live on the device,
and the fused kernel skips a non-finite update on the device. The first WARMUP_STEPS steps run uncaptured on a
side stream (cuDNN autotuning, optimizer state, compilation), and the next one is captured, then replayed. It needs
a CUDA device, one process (DDP's all-reduce is not captured) and the SGD optimizer (its fused kernel reads the LR
and the loss scaler's inf flag on the device; RMSprop's update keeps its step count on the host).

A run logs the same entries and writes checkpoints of the same layout whichever step runs it (the param groups
hold the LR as a float outside the update, and every variant updates the same model, optimizer and scaler
objects), so a checkpoint resumes with or without either flag; under --compile the values differ from the eager
step's by float rounding only (compiled kernels sum in another order).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import autocast
from .errors import UserError
from .recipe import TrainConfig

Batch = tuple[Tensor, Tensor]  # images (N, C, H, W) float; targets (N,) int64 labels or (N, classes) float MixUp
WARMUP_STEPS = 3  # uncaptured steps before the capture (PyTorch's whole-network capture example warms up 3)


class TrainStep:
    """One optimizer step, eagerly: per micro-batch forward (under the precision's autocast), label-smoothed
    cross-entropy and a backward of the loss scaled by the loss scaler and divided by the accumulation count; then
    unscale and clip (`grad_clip`), the scaler's step (skipped when a gradient is not finite) and update, and
    zero_grad(set_to_none=True).

    model: the bare module (clipping reads its parameters). train_model: what the forward calls (the DDP wrapper
    under torchrun, else `model`). ddp: the DDP wrapper or None. precision: amp | amp-bf16 | tf32 | fp32 (amp
    updates the dynamic loss scale; the others keep it at 1, an inf check only).
    """

    def __init__(self, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, *, precision: str, accumulation: int = 1, label_smoothing: float = 0.0,
                 grad_clip: float | None = None, ddp: nn.parallel.DistributedDataParallel | None = None,
                 autocast_cache: bool = True) -> None:
        self.model, self.train_model, self.ddp = model, train_model, ddp
        self.optimizer, self.scaler = optimizer, scaler
        self.precision, self.accumulation = precision, accumulation
        self.label_smoothing, self.grad_clip = label_smoothing, grad_clip
        self.autocast_cache = autocast_cache  # off where the step is captured (torch.cuda.graph's autocast note)
        self.device = next(model.parameters()).device
        self.lrs: list[Tensor] | None = None  # the LR as device tensors, one per param group, where they are used

    def __call__(self, micro_batches: Iterable[Batch], lr: float) -> Tensor:
        self.set_lr(lr)
        return self.run(micro_batches)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for tensor in self.lrs or ():
            tensor.fill_(lr)

    def run(self, micro_batches: Iterable[Batch]) -> Tensor:
        """The step at the LR already set: returns the mean loss over the micro-batches."""
        step_loss = torch.zeros((), device=self.device)
        for micro, (images, targets) in enumerate(micro_batches):
            # Gradients of all but the last micro-batch stay local; DDP all-reduces once per optimizer step.
            last = micro == self.accumulation - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                loss = self.loss(images, targets)
                self.scaler.scale(loss / self.accumulation).backward()
            step_loss += loss.detach() / self.accumulation
        self.update()
        return step_loss

    def loss(self, images: Tensor, targets: Tensor) -> Tensor:
        """Label-smoothed cross-entropy of the model's fp32 logits (targets: class indices or MixUp's soft rows)."""
        with autocast(self.device, self.precision, cache_enabled=self.autocast_cache):
            logits = self.train_model(images)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def update(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update(None if self.precision == "amp" else 1.0)
        self.optimizer.zero_grad(set_to_none=True)

    def use_tensor_lr(self) -> None:
        if self.lrs is None:
            self.lrs = [torch.tensor(float(group["lr"]), device=self.device) for group in self.optimizer.param_groups]

    @contextlib.contextmanager
    def tensor_lr(self) -> Iterator[None]:
        """Inside, the param groups hold the LR tensors (read on the device by the update); afterwards the floats
        again, which is what checkpoints save."""
        groups = self.optimizer.param_groups
        saved = [group["lr"] for group in groups]
        for group, tensor in zip(groups, self.lrs):
            group["lr"] = tensor
        try:
            yield
        finally:
            for group, value in zip(groups, saved):
                group["lr"] = value


class CompiledStep(TrainStep):
    """TrainStep with the forward + loss (and so its backward) and the optimizer update compiled by torch.compile;
    see the module docstring for what stays outside."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A new run starts from an empty compiler cache: torch 2.14's TorchDynamo can fail recompiling the shared
        # SGD.step code for a second optimizer of another structure in the same process (SpeculationLogDivergence).
        torch._dynamo.reset()
        self.use_tensor_lr()
        self.loss = torch.compile(self.loss)
        self._compiled_optimizer_step = torch.compile(self.optimizer.step)

    def update(self) -> None:
        # The scaler calls optimizer.step(); the compiled one stands in for it during this update only.
        self.optimizer.step = self._compiled_optimizer_step
        try:
            with self.tensor_lr():
                super().update()
        finally:
            del self.optimizer.step


class GraphedStep:
    """`step` (a TrainStep or CompiledStep built with autocast_cache=False) captured in one CUDA graph after
    WARMUP_STEPS uncaptured steps, then replayed with each batch copied into the captured input buffers."""

    def __init__(self, step: TrainStep) -> None:
        self.step = step
        step.use_tensor_lr()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmup_left = WARMUP_STEPS
        self.static_batches: list[Batch] = []
        self.static_loss: Tensor | None = None
        self.side_stream = torch.cuda.Stream(step.device)

    def __call__(self, micro_batches: Iterable[Batch], lr: float) -> Tensor:
        batches = list(micro_batches)
        self.step.set_lr(lr)
        if self.warmup_left:
            self.warmup_left -= 1
            return self._eager(batches)
        if self.graph is None:
            self._capture(batches)
        else:
            self._copy_in(batches)
        self.graph.replay()
        return self.static_loss.clone()  # the next replay overwrites the static loss

    def _eager(self, batches: list[Batch]) -> Tensor:
        # On a side stream, as PyTorch's capture example warms up, with the LR read from the same tensors.
        current = torch.cuda.current_stream(self.step.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream), self.step.tensor_lr():
            loss = self.step.run(batches)
        current.wait_stream(self.side_stream)
        return loss

    def _capture(self, batches: list[Batch]) -> None:
        self.static_batches = [(images.clone(), targets.clone()) for images, targets in batches]
        # .grad is None here (every step ends with zero_grad(set_to_none=True)), so the captured backward writes
        # fresh gradients into the graph's own memory at each replay instead of accumulating into old ones.
        graph = torch.cuda.CUDAGraph()
        # thread_local: the data loader's pin-memory thread keeps calling the CUDA runtime during the capture.
        with self.step.tensor_lr(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.static_loss = self.step.run(self.static_batches)
        self.graph = graph

    def _copy_in(self, batches: list[Batch]) -> None:
        for (static_images, static_targets), (images, targets) in zip(self.static_batches, batches, strict=True):
            if images.shape != static_images.shape or targets.shape != static_targets.shape:
                raise RuntimeError(f"--cuda-graphs replays a step captured for batches of {tuple(static_images.shape)}"
                                   f", but got {tuple(images.shape)}; training batches must all have one shape.")
            static_images.copy_(images)
            static_targets.copy_(targets)


def check_supported(config: TrainConfig, device: torch.device, world_size: int) -> None:
    """Refuse (UserError, one sentence) a --cuda-graphs run this module cannot capture, before set-up starts."""
    if not config.cuda_graphs:
        return
    if world_size > 1:
        raise UserError("--cuda-graphs captures the step of one process; under torchrun drop --cuda-graphs (DDP's "
                        "all-reduce is not captured).")
    if config.optimizer != "sgd":
        raise UserError(f"--cuda-graphs captures the fused SGD update; drop --cuda-graphs for --optimizer "
                        f"{config.optimizer}.")
    if device.type != "cuda":
        raise UserError(f"--cuda-graphs captures the training step on a CUDA GPU, but this run is on {device}; "
                        "drop --cuda-graphs.")
    if config.use_ema and config.ema_update == "micro-batch" and config.accumulation_steps(world_size) > 1:
        raise UserError("--cuda-graphs replays all micro-batches of a step at once, so NVIDIA's EMA update after "
                        "every micro-batch cannot run between them; add --ema-update optimizer-step or drop "
                        "--cuda-graphs.")
    if "tensor_lr" not in torch.ops.aten._fused_sgd_.overloads():
        raise UserError(f"--cuda-graphs needs a fused SGD that reads its LR on the device, which torch "
                        f"{torch.__version__} lacks; upgrade torch or drop --cuda-graphs.")


def make_step(config: TrainConfig, model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, *, precision: str, accumulation: int,
              ddp: nn.parallel.DistributedDataParallel | None = None) -> TrainStep | GraphedStep:
    """The step `config` asks for: eager, --compile (CompiledStep), --cuda-graphs (GraphedStep around either)."""
    kind = CompiledStep if config.compile else TrainStep
    step = kind(model, train_model, optimizer, scaler, precision=precision, accumulation=accumulation,
                label_smoothing=config.label_smoothing, grad_clip=config.grad_clip, ddp=ddp,
                autocast_cache=not config.cuda_graphs)
    return GraphedStep(step) if config.cuda_graphs else step
