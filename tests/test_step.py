"""The training step's variants (resnext.step) hold to the eager step's numbers: --compile on the CPU, --cuda-graphs
wherever CUDA exists (and in benchmarks/gpu_check.sh), and both refuse what they cannot do in one line."""
from __future__ import annotations

import copy

import pytest
import torch
from optional import needs_cuda

from resnext.device import make_grad_scaler
from resnext.errors import UserError
from resnext.mixup import mixup, step_rng
from resnext.models import create_model
from resnext.optim import build_optimizer
from resnext.recipe import TrainConfig
from resnext.step import WARMUP_STEPS, CompiledStep, GraphedStep, TrainStep, check_supported
from resnext.training import train


# The shapes of tests/test_train_options.py::test_compile (resnext_tiny, batch 16 at 32 px, 10 classes, MixUp
# targets), so the two tests compile the same graphs and the second finds them in inductor's cache.
BATCH, SIZE, CLASSES, ACCUMULATION = 16, 32, 10, 2


def mixup_batches(steps: int, device: torch.device, memory_format=torch.contiguous_format) -> list:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for index in range(steps * ACCUMULATION):
        images = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
        labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
        images, targets = mixup(images, labels, CLASSES, 0.2, step_rng(0, index // ACCUMULATION, index % 2, 0))
        batches.append((images.to(device, memory_format=memory_format), targets.to(device)))
    return batches


def run_steps(kind, model, batches, lrs, *, precision="fp32", wrap=None) -> tuple:
    """`kind` (wrapped in `wrap`) trains `model` one step per LR: the losses, then the final weights, optimizer
    state and loss scaler."""
    optimizer = build_optimizer(TrainConfig(), model, lrs[0], next(model.parameters()).device)
    scaler = make_grad_scaler(precision, next(model.parameters()).device, optimizer)
    step = kind(model, model, optimizer, scaler, precision=precision, accumulation=ACCUMULATION, label_smoothing=0.1,
                grad_clip=1.0, autocast_cache=wrap is None)
    step = wrap(step) if wrap else step
    losses = [float(step(iter(batches[ACCUMULATION * i:ACCUMULATION * (i + 1)]), lr)) for i, lr in enumerate(lrs)]
    assert all(isinstance(group["lr"], float) for group in optimizer.param_groups)  # what checkpoints save
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, optimizer.state_dict(), scaler


def change_difference(ours: dict, reference: dict, start: dict) -> float:
    """||(ours - start) - (reference - start)|| / ||reference - start|| over all trained tensors: how far apart the
    two runs moved the weights, relative to how far training moved them."""
    num = den = 0.0
    for name, value in reference.items():
        if value.is_floating_point() and "running" not in name:
            moved = value.double() - start[name].double()
            num += float((ours[name].double() - start[name].double() - moved).norm()) ** 2
            den += float(moved.norm()) ** 2
    return (num / den) ** 0.5


# Tolerances. One compiled forward/backward gives gradients whose error against an fp64 run is about twice the
# eager fp32 step's (inductor reorders the float sums of BatchNorm and the loss; measured here, median over the
# tensors). Over several steps a ReLU or max-pool decision within rounding of a tie can flip and move the
# trajectory: perturbing the eager step's inputs by 1e-6 (relative) moved these 4 steps' weight change by 0.3-1.8%
# and their losses by up to 1.6e-5 (relative); the compiled step measured 1.1% and 1.4e-5. A wrong learning rate
# (the previous step's) moves the change by 32% and a loss by 1.2e-3.
LOSS_RTOL, CHANGE_TOLERANCE = 1e-4, 0.05


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """--compile: forward + loss (and so backward) and the optimizer update compiled, over 4 steps of a changing
    LR with MixUp targets, 2 micro-batches per step and clipping: the eager step's losses and weights."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    start = create_model("resnext_tiny", CLASSES)
    batches = mixup_batches(4, torch.device("cpu"))
    lrs = [0.0125, 0.025, 0.0375, 0.05]
    eager_losses, eager, eager_optimizer, _ = run_steps(TrainStep, copy.deepcopy(start), batches, lrs)
    torch._dynamo.reset()  # count this test's graphs only
    counters.clear()
    losses, compiled, optimizer, _ = run_steps(CompiledStep, copy.deepcopy(start), batches, lrs)
    assert counters["stats"]["unique_graphs"] >= 2  # the forward + loss, and the update: neither fell back to eager
    assert losses == pytest.approx(eager_losses, rel=LOSS_RTOL)
    assert change_difference(compiled, eager, start.state_dict()) < CHANGE_TOLERANCE
    buffers = [s["momentum_buffer"] for s in optimizer["state"].values()]
    eager_buffers = [s["momentum_buffer"] for s in eager_optimizer["state"].values()]
    relative = [float((a - b).norm() / b.norm()) for a, b in zip(buffers, eager_buffers) if b.norm() > 0]
    assert len(buffers) == len(eager_buffers) and max(relative) < CHANGE_TOLERANCE


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_cuda_graph_step_matches_eager(precision):
    """--cuda-graphs: the warm-up steps, the capture, then replays with a new LR and new batches each step give the
    eager step's losses, weights and loss scale; a non-finite batch after the capture skips the update on the
    device as the eager step does."""
    device = torch.device("cuda")
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True  # same algorithms in both runs
    try:
        torch.manual_seed(0)
        start = create_model("resnext_tiny", CLASSES).to(device, memory_format=torch.channels_last)
        steps = WARMUP_STEPS + 4  # warm-up, the capture, then 3 replays
        batches = mixup_batches(steps, device, torch.channels_last)
        batches[-1][0][0, 0, 0, 0] = float("nan")  # the last step's loss is not finite: its update is skipped
        lrs = [0.01 * (i + 1) for i in range(steps)]
        eager_losses, eager, _, eager_scaler = run_steps(TrainStep, copy.deepcopy(start), batches, lrs,
                                                         precision=precision)
        losses, graphed, _, scaler = run_steps(TrainStep, copy.deepcopy(start), batches, lrs, precision=precision,
                                               wrap=GraphedStep)
        assert losses[:-1] == pytest.approx(eager_losses[:-1], rel=LOSS_RTOL)
        assert not torch.isfinite(torch.tensor(losses[-1]))
        assert change_difference(graphed, eager, start.state_dict()) < CHANGE_TOLERANCE  # NaN if not skipped
        assert scaler.get_scale() == eager_scaler.get_scale() == (64.0 if precision == "amp" else 1.0)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags


def test_cuda_graphs_refusals_are_one_sentence_before_set_up(tmp_path):
    for changes, message in ((dict(device="cpu"), "captures the training step on a CUDA GPU, but this run is on cpu"),
                             (dict(optimizer="rmsprop"), "captures the fused SGD update; drop --cuda-graphs")):
        config = TrainConfig(data_backend="synthetic", cuda_graphs=True, workspace=str(tmp_path / "ws"), **changes)
        with pytest.raises(UserError, match=message):
            train(config)
        assert not (tmp_path / "ws").exists()  # refused before the workspace or loaders were made
    with pytest.raises(UserError, match="one process; under torchrun"):
        check_supported(TrainConfig(cuda_graphs=True), torch.device("cpu"), world_size=2)
