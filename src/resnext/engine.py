"""Training and evaluation: NVIDIA's recipe as one loop you can read top to bottom.

    train(config)            set up, resume if asked, then per epoch: train_one_epoch, evaluate, checkpoint
    train_one_epoch(run, ..) the optimizer steps of one epoch (AMP, accumulation, MixUp, EMA, logging, stop checks)
    evaluate(model, loader)  top-1 / top-k, loss, throughput and latency percentiles, per-class counts

Everything a checkpoint needs to continue bit-for-bit is either saved (model, optimizer, scaler, EMA, position,
RNG states) or a pure function of (seed, step): the LR schedule, the data order and augmentation, MixUp draws.
The hot loop (SGD, the default) waits for the device only at --print-freq log points and checkpoint saves;
fp16 AMP with RMSprop adds one wait per step (the loss scaler's inf check on an unfused optimizer).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .device import autocast, synchronize
from .distributed import DistEnv
from .errors import UserError
from .logger import RunLogger
from .models import create_model, resolve_arch
from .optim import LRSchedule, build_optimizer
from .preemption import StopSignal
from .recipe import TrainConfig

notices = logging.getLogger("resnext")

BEST_FILENAME = "model_best.pth.tar"


class TrainingDiverged(UserError):
    """The loss stayed non-finite, or the weights became non-finite: training stops, the last good checkpoint stays."""

    exit_code = 3


class CheckpointNotSaved(UserError):
    """The checkpoint written on the way out (end, preemption, --prof, --run-epochs) failed: the run exits non-zero,
    since the steps after the newest checkpoint on disk would otherwise be lost without notice."""

    exit_code = 1


# ---- numerics set-up ------------------------------------------------------------------------------------

def resolve_precision(precision: str | None, device: torch.device) -> str:
    return precision or ("amp" if device.type == "cuda" else "fp32")


def resolve_memory_format(memory_format: str | None, device: torch.device) -> torch.memory_format:
    # On CUDA every stage's grouped convolution is faster in NHWC with current cuDNN (SPEC.md section 6); on CPUs
    # the oneDNN grouped kernels gain little, and NCHW keeps the CPU path simple.
    chosen = memory_format or ("nhwc" if device.type == "cuda" else "nchw")
    return torch.channels_last if chosen == "nhwc" else torch.contiguous_format


def configure_backends(precision: str, deterministic: bool) -> None:
    """TF32 for fp32 math unless strict fp32 is asked for; cudnn autotuning unless bit-exact runs are."""
    allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def make_scaler(precision: str, config: TrainConfig, optimizer: torch.optim.Optimizer,
                device: torch.device) -> torch.amp.GradScaler:
    """NVIDIA's loss scaler for fp16 (starts at --static-loss-scale, x2 after 100 clean steps, /2 on overflow).

    Other precisions use a scaler fixed at 1.0 too: its inf/NaN check skips a poisoned update, and multiplying by
    1 changes no number. The check is free on the CPU and, with the fused SGD, stays on the GPU; with an unfused
    optimizer on a GPU (RMSprop) it would wait for the device every step, so there it is off and a NaN loss is
    only reported (LossHealth) until a run of them stops training.
    """
    if precision == "amp":
        growth_interval = 100 if config.dynamic_loss_scale else 2**31 - 1
        return torch.amp.GradScaler(device.type, init_scale=config.static_loss_scale, growth_factor=2.0,
                                    backoff_factor=0.5, growth_interval=growth_interval)
    check_on_device = device.type == "cpu" or bool(optimizer.defaults.get("fused"))
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_factor=2.0, backoff_factor=0.5,
                                growth_interval=2**31 - 1, enabled=check_on_device)


# ---- pieces of the step -----------------------------------------------------------------------------------

class ModelEMA:
    """Exponential moving average of weights and BN statistics, with NVIDIA's warm-up: min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self._pairs: tuple[list, list, list, list] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._pairs is None:  # state_dict tensors keep their identity, so pair them once
            ours, live = self.module.state_dict(), model.state_dict()
            floats = [k for k in ours if ours[k].is_floating_point()]
            others = [k for k in ours if not ours[k].is_floating_point()]
            self._pairs = ([ours[k] for k in floats], [live[k] for k in floats],
                           [ours[k] for k in others], [live[k] for k in others])
        ema_f, live_f, ema_i, live_i = self._pairs
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(ema_f, live_f, 1.0 - decay)
        for target, source in zip(ema_i, live_i):
            target.copy_(source)


def mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float,
          rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """NVIDIA's MixUp: one Beta(alpha, alpha) weight per batch, partner images from a random permutation."""
    lam = rng.betavariate(alpha, alpha)
    # Drawn where the images are: a permutation made on the host would be a pageable copy every step.
    generator = torch.Generator(device=images.device).manual_seed(rng.getrandbits(63))
    perm = torch.randperm(images.shape[0], generator=generator, device=images.device)
    onehot = F.one_hot(labels, num_classes).float()
    mixed_images = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
    return mixed_images, onehot.mul(lam).add_(onehot[perm], alpha=1.0 - lam)


class LossHealth:
    """Counts non-finite losses on the device (no sync per step) and reads them at log points."""

    def __init__(self, device: torch.device, limit: int) -> None:
        self.limit = limit
        self.consecutive = torch.zeros((), dtype=torch.int64, device=device)
        self.total = torch.zeros((), dtype=torch.int64, device=device)
        self.last_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.reported = 0

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss)
        self.consecutive = torch.where(bad, self.consecutive + 1, torch.zeros_like(self.consecutive))
        self.total += bad
        self.last_bad_step = torch.where(bad, torch.full_like(self.last_bad_step, step), self.last_bad_step)

    def check(self, env: DistEnv) -> None:
        """Warn about new non-finite losses; stop after too many in a row. Every rank decides from the counts of all
        ranks, so no rank leaves while the others wait in a collective."""
        counts = torch.stack([self.total, self.consecutive, self.last_bad_step])
        total, consecutive, last = (int(v) for v in distributed.all_reduce_max(counts, env))
        if total > self.reported:
            notices.warning(f"warning: non-finite loss in {total - self.reported} step(s), the last at global step "
                            f"{last}; those updates were skipped.")
            self.reported = total
        if consecutive >= self.limit:
            raise TrainingDiverged(
                f"training stopped: the loss was not finite for {consecutive} consecutive steps (last at global step "
                f"{last}); the last good checkpoint is kept. Lower --lr, use --grad-clip, or --precision amp-bf16.")


def step_rng(seed: int, global_step: int, micro: int, rank: int) -> random.Random:
    """The random stream of one micro-batch: a function of its position only, so resume replays it exactly."""
    return random.Random(f"resnext:{seed}:{global_step}:{micro}:{rank}")


# ---- the run ------------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # optimizer steps finished inside it
    global_step: int = 0
    best_top1: float = 0.0
    best_topk: float = 0.0  # top-k accuracy (--topk, 5 by default) of the best epoch
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    epoch_loss_sum: float = 0.0  # so a resumed epoch still reports the mean over all of its steps
    images_seen: int = 0


@dataclass
class Run:
    """Everything one training run holds, passed to the functions below instead of a dozen arguments."""

    config: TrainConfig
    env: DistEnv
    model: nn.Module  # the bare module (no DDP, not compiled): what checkpoints hold
    train_model: nn.Module  # what the step calls: DDP and/or torch.compile around `model`
    ddp: nn.Module | None
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    train_loader: object
    val_loader: object | None
    class_names: list[str]
    precision: str
    memory_format: torch.memory_format
    accumulation: int
    steps_per_epoch: int
    workspace: Path
    logger: RunLogger
    health: LossHealth
    progress: Progress = field(default_factory=Progress)
    last_checkpoint: Path | None = None
    unsaved: str | None = None  # why the latest checkpoint write failed; None once one succeeds
    steps_this_run: int = 0  # optimizer steps of this invocation (--prof counts them across epochs)
    epoch_throughputs: list = field(default_factory=list)  # train.total_ips of the epochs this invocation finished
    last_metrics: dict = field(default_factory=dict)  # the newest validation results, logged names

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def num_classes(self) -> int:
        return self.model.num_classes


def train(config: TrainConfig) -> dict:
    """Run (or continue) a training job described by `config`; returns the run summary."""
    env = distributed.setup(config.device, config.dist_backend)
    try:
        return _train(config, env)
    finally:
        distributed.teardown(env)


def _train(config: TrainConfig, env: DistEnv) -> dict:
    config.validate(env.world_size)
    precision = resolve_precision(config.precision, env.device)
    memory_format = resolve_memory_format(config.memory_format, env.device)
    configure_backends(precision, config.deterministic)
    workspace = prepare_workspace(config, env)
    resume_path, state = locate_resume(config, workspace)
    from .weights import load_weights, read_weights  # read before the loaders: its class names label the folders
    pretrained = read_weights(config.pretrained_from_file) if config.pretrained_from_file and state is None else None

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    train_loader, val_loader, class_names = build_loaders(config, env, memory_format, state, resume_path, pretrained)
    num_classes = config.num_classes or len(class_names)
    if state is not None:
        check_resume_compatible(state, config, num_classes, resume_path)
    model = create_model(config.arch, num_classes, conv_init=config.conv_init, last_bn_0_init=config.last_bn_0_init)
    if config.evaluate and state is None and not config.pretrained_from_file:
        raise UserError(f"--evaluate found no checkpoint to evaluate ({config.resume}); pass --resume CHECKPOINT or "
                        "--pretrained-from-file FILE.")
    if pretrained is not None:
        load_weights(model, pretrained, ignore_head=config.ignore_head)
    if config.sync_bn:
        model = distributed.convert_sync_batchnorm(model, env)
    model.to(env.device, memory_format=memory_format)
    ema = ModelEMA(model, config.use_ema) if config.use_ema else None

    accumulation = config.accumulation_steps(env.world_size)
    steps_per_epoch = len(train_loader) // accumulation if train_loader is not None else 0
    if steps_per_epoch == 0 and not config.evaluate:
        raise UserError(f"the training split yields {len(train_loader)} batch(es) of {config.batch_size} per process, "
                        f"fewer than one optimizer step of {accumulation}; lower --batch-size or "
                        "--optimizer-batch-size.")
    peak_lr = config.peak_lr(env.world_size)
    optimizer = build_optimizer(config, model, peak_lr, env.device)
    scaler = make_scaler(precision, config, optimizer, env.device)
    progress = Progress()
    if state is not None:
        progress = restore(state, model, ema, optimizer, scaler, config, env, steps_per_epoch)

    ddp = None
    train_model = model
    if env.distributed:
        # Buffers are not broadcast every step: rank 0's BN statistics are sent before evaluation and saving,
        # which gives the same numbers with one broadcast per epoch instead of one per step.
        ddp = distributed.data_parallel(model, env)
        train_model = ddp
    if config.compile:
        train_model = torch.compile(train_model)

    run_logger = make_logger(config, env, workspace)
    run = Run(config=config, env=env, model=model, train_model=train_model, ddp=ddp, ema=ema, optimizer=optimizer,
              scaler=scaler, schedule=LRSchedule.from_config(config, peak_lr, max(1, steps_per_epoch)),
              train_loader=train_loader, val_loader=val_loader, class_names=class_names, precision=precision,
              memory_format=memory_format, accumulation=accumulation, steps_per_epoch=steps_per_epoch,
              workspace=workspace, logger=run_logger, health=LossHealth(env.device, config.max_nonfinite_steps),
              progress=progress)
    try:
        log_parameters(run, resume_path)
        if config.evaluate:
            return evaluate_only(run)
        return fit(run)
    finally:
        run_logger.close()


def fit(run: Run) -> dict:
    """The epoch loop: train, validate, checkpoint, until done, early-stopped or told to stop."""
    config, p = run.config, run.progress
    end_epoch = config.epochs if config.run_epochs < 0 else min(config.epochs, p.epoch + config.run_epochs)
    if p.epoch >= config.epochs:
        run.logger.message(f"training already finished ({config.epochs} epochs); nothing to do. "
                           "Use --evaluate to measure the checkpoint.")
        return finish(run, "completed", time.time())
    started, reason = time.time(), "completed"
    with StopSignal() as stop:
        while p.epoch < end_epoch:
            epoch_started, first_step = time.time(), p.step_in_epoch
            outcome = train_one_epoch(run, stop)
            if outcome != "completed":
                save_training_checkpoint(run)
                reason = "preempted" if outcome == "stopped" else "stopped"
                break
            epoch_metrics = epoch_train_metrics(run, time.time() - epoch_started, run.steps_per_epoch - first_step)
            run.logger.epoch_end(p.epoch, epoch_metrics, run.steps_per_epoch)
            if "train.total_ips" in epoch_metrics:
                run.epoch_throughputs.append(epoch_metrics["train.total_ips"])
            is_best = False
            if not config.training_only:
                is_best = validate_epoch(run)
            p.epoch += 1
            p.step_in_epoch = 0
            p.epoch_loss_sum = 0.0
            save_training_checkpoint(run, is_best=is_best)
            if stop.requested:
                reason = "preempted"
                break
            if 0 < config.early_stopping_patience <= p.epochs_without_improvement:
                reason = "early_stop"
                run.logger.message(f"early stopping: no top-1 improvement for {p.epochs_without_improvement} epochs.")
                break
        else:
            if end_epoch < config.epochs:
                reason = "stopped"  # --run-epochs reached; resume continues
    if run.unsaved is not None:
        raise CheckpointNotSaved(f"training stopped without its last checkpoint: {run.unsaved}. Free disk space or "
                                 "fix the workspace's permissions; --resume auto then repeats the lost steps.")
    return finish(run, reason, started)


def train_one_epoch(run: Run, stop: StopSignal) -> str:
    """Optimizer steps from the saved position to the end of the epoch. Returns completed | stopped | prof."""
    config, env, p = run.config, run.env, run.progress
    run.train_loader.set_epoch(p.epoch, start_batch=p.step_in_epoch * run.accumulation)
    batches = iter(run.train_loader)
    run.train_model.train()
    device = run.device
    window = {"loss": torch.zeros((), device=device), "steps": 0, "data": 0.0, "start": time.perf_counter()}
    epoch_loss = torch.zeros((), dtype=torch.float64, device=device)  # folded into p.epoch_loss_sum when read

    def fold_epoch_loss() -> None:
        p.epoch_loss_sum += float(epoch_loss)
        epoch_loss.zero_()

    outcome = "completed"
    while p.step_in_epoch < run.steps_per_epoch:
        lr = run.schedule(p.global_step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(run.accumulation):
            waited = time.perf_counter()
            images, labels = next(batches)
            window["data"] += time.perf_counter() - waited
            targets = labels
            if config.mixup > 0:
                rng = step_rng(config.seed, p.global_step, micro, env.rank)
                images, targets = mixup(images, labels, run.num_classes, config.mixup, rng)
            # Gradients of all but the last micro-batch stay local; DDP all-reduces once per optimizer step.
            sync = run.ddp.no_sync() if run.ddp is not None and micro < run.accumulation - 1 else contextlib.nullcontext()
            with sync:
                with autocast(device, run.precision):
                    logits = run.train_model(images)
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
                run.scaler.scale(loss / run.accumulation).backward()
            step_loss += loss.detach() / run.accumulation
        if config.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update(None if run.precision == "amp" else 1.0)
        run.optimizer.zero_grad(set_to_none=True)
        if run.ema is not None:
            run.ema.update(run.model, p.global_step)
        run.health.observe(step_loss, p.global_step)
        p.global_step += 1
        p.step_in_epoch += 1
        p.images_seen += config.batch_size * env.world_size * run.accumulation
        run.steps_this_run += 1
        window["loss"] += step_loss
        window["steps"] += 1
        epoch_loss += step_loss
        if p.step_in_epoch % config.print_freq == 0 or p.step_in_epoch == run.steps_per_epoch:
            fold_epoch_loss()
            log_window(run, window, lr)
        if distributed.any_rank(stop.requested, env):
            outcome = "stopped"
            break
        if config.prof > 0 and run.steps_this_run >= config.prof:
            outcome = "prof"
            break
        if config.checkpoint_interval and p.global_step % config.checkpoint_interval == 0 \
                and p.step_in_epoch < run.steps_per_epoch:
            fold_epoch_loss()
            save_training_checkpoint(run)
    fold_epoch_loss()
    return outcome


def log_window(run: Run, window: dict, lr: float) -> None:
    """One log point: with checkpoint saves, the only places the loop waits for the device."""
    run.health.check(run.env)
    env, config, p = run.env, run.config, run.progress
    loss = distributed.all_reduce_sum(window["loss"].clone(), env) / env.world_size
    synchronize(run.device)
    elapsed = time.perf_counter() - window["start"]
    steps = window["steps"]
    images = steps * config.batch_size * env.world_size * run.accumulation
    compute = max(elapsed - window["data"], 1e-9)
    data = {"train.loss": float(loss) / steps, "train.lr": lr, "train.total_ips": images / elapsed,
            "train.compute_ips": images / compute, "train.data_time": window["data"] / steps,
            "train.compute_time": compute / steps}
    if run.precision == "amp":
        data["train.grad_scale"] = float(run.scaler.get_scale())
    remaining = (run.config.epochs - p.epoch) * run.steps_per_epoch - p.step_in_epoch
    run.logger.train_progress(p.epoch, p.step_in_epoch, run.steps_per_epoch, config.epochs, data,
                              eta_s=remaining * elapsed / steps)
    window.update(loss=torch.zeros((), device=run.device), steps=0, data=0.0, start=time.perf_counter())


def epoch_train_metrics(run: Run, seconds: float, steps_timed: int) -> dict:
    """The epoch's mean loss (over all its steps, resumed or not) and the throughput of the steps just run."""
    p, config, env = run.progress, run.config, run.env
    loss = torch.tensor([p.epoch_loss_sum], dtype=torch.float64, device=run.device)
    loss = float(distributed.all_reduce_sum(loss, env)) / env.world_size
    metrics = {"train.loss": loss / run.steps_per_epoch, "train.lr": run.schedule(max(0, p.global_step - 1)),
               "train.epoch_time": seconds}
    if steps_timed:  # a run resumed at an epoch's very end trained nothing to time
        images = steps_timed * config.batch_size * env.world_size * run.accumulation
        metrics["train.total_ips"] = images / max(seconds, 1e-9)
    return metrics


def validate(run: Run) -> dict:
    """The model (and its EMA) on the validation split, as logged metric names (val.top1, val_ema.top1, ...)."""
    config = run.config
    share_rank0_statistics(run)
    max_batches = config.prof if config.prof > 0 else None
    common = dict(device=run.device, precision=run.precision, topk=config.topk, env=run.env,
                  max_batches=max_batches, num_classes=run.num_classes)
    metrics = evaluate(run.model, run.val_loader, **common)
    data = {f"val.{k}": v for k, v in metrics.items() if not isinstance(v, list)}
    if run.ema is not None:
        ema_metrics = evaluate(run.ema.module, run.val_loader, **common)
        data.update({f"val_ema.{k}": ema_metrics[k] for k in ("top1", f"top{config.topk}", "loss")})
    return data


def validate_epoch(run: Run) -> bool:
    """Validate at the end of an epoch and update the best / early-stopping state. True if this is the best."""
    p = run.progress
    data = validate(run)
    run.logger.epoch_end(p.epoch, data, run.steps_per_epoch)
    is_best = data["val.top1"] > p.best_top1 or p.best_epoch < 0
    if is_best:
        p.best_top1, p.best_topk, p.best_epoch = data["val.top1"], data[f"val.top{run.config.topk}"], p.epoch
        p.epochs_without_improvement = 0
    else:
        p.epochs_without_improvement += 1
    run.last_metrics = data
    return is_best


def evaluate_only(run: Run) -> dict:
    """--evaluate: one pass over the validation split with the loaded weights, logged as an EVALUATE entry (not
    as an epoch of the training run whose log it may share)."""
    if run.val_loader is None:
        raise UserError("--evaluate needs a validation split (DATA/val).")
    data = validate(run)
    run.logger.log("EVALUATE", data)
    run.logger.message("evaluation: " + "  ".join(f"{k} {v:.4g}" for k, v in data.items()))
    return {**data, "exit.reason": "evaluated"}


def share_rank0_statistics(run: Run) -> None:
    """Rank 0's BatchNorm statistics (of the model and its EMA) on every rank: what is validated and saved."""
    distributed.broadcast_buffers(run.model, run.env)
    if run.ema is not None:
        distributed.broadcast_buffers(run.ema.module, run.env)


def finish(run: Run, reason: str, started: float) -> dict:
    p = run.progress
    summary = {"best.top1": p.best_top1, f"best.top{run.config.topk}": p.best_topk, "best.epoch": p.best_epoch,
               "run.time": time.time() - started, "train.images": p.images_seen, "exit.reason": reason}
    if run.epoch_throughputs:
        summary["train.total_ips"] = sum(run.epoch_throughputs) / len(run.epoch_throughputs)
    if run.last_metrics:
        summary["val.top1"] = run.last_metrics["val.top1"]
    if run.last_checkpoint is not None:
        summary["checkpoint"] = str(run.last_checkpoint)
    run.logger.summary(summary)
    return summary


# ---- evaluation ---------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device, precision: str = "fp32", topk: int = 5,
             env: DistEnv | None = None, max_batches: int | None = None, confusion: bool = False,
             num_classes: int | None = None) -> dict:
    """Accuracy, loss (plain cross-entropy), throughput and per-batch latency of `model` on `loader`.

    Under torchrun every rank evaluates its own shard and the counts are summed, so each image counts once (a
    rank whose shard is empty still joins every sum). Latency percentiles are this rank's batches;
    `confusion=True` adds the (true x predicted) count matrix. num_classes: default, the loader's class count.
    """
    env = env or DistEnv(device=device)
    num_classes = num_classes or len(loader.class_names)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-k hits, images
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # images, top-1 hits
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device) if confusion else None
    latencies = []
    started = time.perf_counter()
    for index, (images, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        synchronize(device)
        latencies.append(time.perf_counter() - t0)
        if logits.shape[1] != num_classes:
            raise UserError(f"the model has {logits.shape[1]} outputs but the data has {num_classes} classes.")
        top = logits.topk(min(topk, num_classes), dim=1).indices
        hits = top.eq(labels[:, None])
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
        per_class[0] += torch.bincount(labels, minlength=num_classes).double()
        per_class[1] += torch.bincount(labels[hits[:, 0]], minlength=num_classes).double()
        if matrix is not None:
            matrix += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes ** 2).double()
    wall = time.perf_counter() - started
    model.train(was_training)
    local_images = float(sums[3])
    distributed.all_reduce_sum(sums, env)
    distributed.all_reduce_sum(per_class, env)
    if matrix is not None:
        distributed.all_reduce_sum(matrix, env)
    images = float(sums[3])
    if images == 0:
        raise UserError("the validation split yielded no readable images.")
    compute = sum(latencies)
    ordered = sorted(latencies) or [float("nan")]  # an empty shard has no latency to report
    result = {
        "top1": 100.0 * float(sums[1]) / images,
        f"top{topk}": 100.0 * float(sums[2]) / images,
        "loss": float(sums[0]) / images,
        "images": int(images),
        "compute_ips": local_images * env.world_size / max(compute, 1e-9),
        "total_ips": images / max(wall, 1e-9),
        "compute_latency": compute / len(latencies) if latencies else float("nan"),
        "compute_latency_at95": _percentile(ordered, 95),
        "compute_latency_at99": _percentile(ordered, 99),
        "compute_latency_at100": ordered[-1],
        "latencies": latencies,  # seconds per batch on this rank, in order
        "per_class_images": [int(v) for v in per_class[0].tolist()],
        "per_class_top1_hits": [int(v) for v in per_class[1].tolist()],
    }
    if matrix is not None:
        n = per_class.shape[1]
        result["confusion"] = [[int(v) for v in row] for row in matrix.view(n, n).tolist()]
    return result


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, int(np.ceil(q / 100.0 * len(ordered))) - 1))
    return ordered[index]


# ---- set-up helpers -----------------------------------------------------------------------------------------

def prepare_workspace(config: TrainConfig, env: DistEnv) -> Path:
    workspace = Path(config.workspace)
    if env.is_main:
        if workspace.exists() and not workspace.is_dir():
            raise UserError(f"--workspace '{workspace}' is a file; pass a folder for checkpoints and logs.")
        try:
            workspace.mkdir(parents=True, exist_ok=True)
            probe = workspace / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise UserError(f"--workspace '{workspace}' is not writable ({err.strerror}); "
                            "choose a folder you can write to.") from None
    distributed.barrier(env)
    return workspace


def locate_resume(config: TrainConfig, workspace: Path) -> tuple[Path | None, dict | None]:
    if not config.resume:
        return None, None
    if config.resume == "auto":
        found = ckpt.find_resume_checkpoint(workspace)
        if found is None:
            notices.info(f"--resume auto: no checkpoint in {workspace}, starting from scratch.")
            return None, None
        return found
    return Path(config.resume), ckpt.read_checkpoint(config.resume)


def check_resume_compatible(state: dict, config: TrainConfig, num_classes: int, path: Path) -> None:
    if resolve_arch(config.arch) != state.get("arch") or num_classes != state.get("num_classes"):
        raise UserError(f"checkpoint '{path}' is a {state.get('arch')} with {state.get('num_classes')} classes, "
                        f"but this run is a {resolve_arch(config.arch)} with {num_classes}; use the same --arch and "
                        "dataset, or a new --workspace.")
    saved = state.get("config", {})
    for option in ("optimizer", "bn_weight_decay"):  # they shape the optimizer state the checkpoint holds
        if option in saved and saved[option] != getattr(config, option):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"checkpoint '{path}' was trained with {flag} {saved[option]}, this run asks for "
                            f"{getattr(config, option)}; resume with the same {flag}, or start from its weights "
                            "with --pretrained-from-file in a new --workspace.")


def build_loaders(config: TrainConfig, env: DistEnv, memory_format: torch.memory_format, state=None,
                  resume_path=None, pretrained=None):
    from .data import create_loader, find_dataset
    from .data.classes import classes_for_training

    common = dict(backend=config.data_backend, image_size=config.image_size, crop_pct=config.crop_pct,
                  interpolation=config.interpolation, workers=config.workers, prefetch=config.prefetch,
                  device=env.device, memory_format=memory_format, rank=env.rank, world_size=env.world_size,
                  seed=config.seed, batch_size=config.batch_size)
    if config.data_backend == "synthetic":
        num_classes = config.num_classes or 1000
        class_names = [f"class_{i}" for i in range(num_classes)]
        synthetic = dict(common, root=None, num_classes=num_classes,
                         synthetic_batches_per_epoch=config.synthetic_batches)
        train_loader = create_loader(train=True, **synthetic)
        val_loader = None if config.training_only else create_loader(train=False, **synthetic)
        return train_loader, val_loader, class_names
    train_dir, val_dir, folders = find_dataset(config.data)
    classes = classes_for_training(folders, data=f"'{config.data}'", checkpoint=state, checkpoint_path=resume_path,
                                   pretrained=pretrained, class_map=config.class_map, evaluate=config.evaluate,
                                   ignore_head=config.ignore_head)
    class_names = list(classes.class_names)
    if config.num_classes is not None and config.num_classes != len(class_names):
        raise UserError(f"--num-classes {config.num_classes} does not match the {len(class_names)} class folders "
                        f"in {config.data}; drop --num-classes or fix the dataset.")
    common.update(classes=classes, exif_orientation=config.exif_orientation)
    train_loader = None if config.evaluate else create_loader(root=train_dir, train=True,
                                                                augmentation=config.augmentation, **common)
    val_loader = None if config.training_only else create_loader(root=val_dir, train=False, **common)
    return train_loader, val_loader, class_names


def make_logger(config: TrainConfig, env: DistEnv, workspace: Path) -> RunLogger:
    import importlib.util

    installed = importlib.util.find_spec("tensorboard") is not None
    if config.tensorboard and not installed:
        raise UserError('--tensorboard needs the tensorboard package: pip install "resnext[tensorboard]".')
    wants_tensorboard = installed if config.tensorboard is None else config.tensorboard
    tensorboard_dir = workspace / "tensorboard" if wants_tensorboard and env.is_main else None
    return RunLogger(workspace / config.raport_file, enabled=env.is_main, tensorboard_dir=tensorboard_dir,
                     progress=config.progress)


def log_parameters(run: Run, resume_path: Path | None) -> None:
    config, env = run.config, run.env
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    run.logger.parameters({**config.to_dict(), "arch": resolve_arch(config.arch), "num_classes": run.num_classes,
                           "precision": run.precision, "iterations_per_epoch": run.steps_per_epoch,
                           "world_size": env.world_size, "global_batch_size": config.global_batch(env.world_size),
                           "peak_lr": run.schedule.peak, "warmup_epochs": config.warmup_epochs(),
                           "torch_version": torch.__version__, "device_name": device_name,
                           "dataset_classes": len(run.class_names)})
    if resume_path is not None and not config.evaluate:
        p = run.progress
        run.logger.log("RESUME", {"resume.epoch": p.epoch, "resume.step_in_epoch": p.step_in_epoch,
                                  "resume.global_step": p.global_step, "resume.checkpoint": str(resume_path)})
        run.logger.message(f"resumed from {resume_path} at epoch {p.epoch + 1}, step {p.step_in_epoch}")


# ---- checkpoints --------------------------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _python_rng_to_list(random.getstate()),
             "numpy": _numpy_rng_to_dict(np.random.get_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _numpy_rng_to_dict(state) -> dict:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def training_state(run: Run, rng_states: list) -> dict:
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

    config = run.config
    return {
        "arch": resolve_arch(config.arch), "num_classes": run.num_classes, "class_names": list(run.class_names),
        "model": run.model.state_dict(), "ema": run.ema.module.state_dict() if run.ema else None,
        "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "schedule": asdict(run.schedule),
        "epoch": run.progress.epoch, "step_in_epoch": run.progress.step_in_epoch,
        "global_step": run.progress.global_step, "best_top1": run.progress.best_top1,
        "progress": asdict(run.progress), "metrics": dict(run.last_metrics),
        "config": config.to_dict(),
        "preprocessing": {"image_size": config.image_size, "crop_pct": config.crop_pct,
                          "interpolation": config.interpolation, "mean": list(IMAGENET_MEAN),
                          "std": list(IMAGENET_STD), "exif_orientation": config.exif_orientation},
        "rng": rng_states, "world_size": run.env.world_size,
        "data_state": {"epoch": run.progress.epoch,
                       "start_batch": run.progress.step_in_epoch * run.accumulation,
                       "batch_size": config.batch_size, "accumulation": run.accumulation},
    }


def save_training_checkpoint(run: Run, is_best: bool = False) -> Path | None:
    """Write checkpoint-<epoch>-<step>.pt atomically on rank 0, then refresh the latest/best links and prune.

    A failed write (disk full, permissions) keeps every earlier checkpoint and training goes on (fit() exits
    non-zero if the last write before exiting failed); weights that are no longer finite are never written.
    """
    config, env = run.config, run.env
    if not config.save_checkpoints:
        return None
    share_rank0_statistics(run)
    if not all(bool(torch.isfinite(t).all()) for t in run.model.state_dict().values() if t.is_floating_point()):
        raise TrainingDiverged("training stopped: the model weights are no longer finite, so they were not saved; "
                               f"the last good checkpoint is {run.last_checkpoint or 'the previous one'}. "
                               "Lower --lr or use --grad-clip.")
    rng_states = distributed.gather_to_main(rng_state(), env)
    path = None
    if env.is_main:
        p = run.progress
        path = run.workspace / ckpt.checkpoint_name(p.epoch, p.global_step)
        try:
            ckpt.save_checkpoint(path, training_state(run, rng_states))
        except OSError as err:
            previous = run.last_checkpoint or next(iter(ckpt.list_checkpoints(run.workspace)), "none yet")
            run.unsaved = (f"could not write checkpoint {path} ({err.strerror or err}); the previous checkpoint "
                           f"({previous}) is intact")
            notices.warning(f"warning: {run.unsaved} and training continues.")
            path = None
        else:
            run.unsaved = None
            run.last_checkpoint = path
            try:
                _replace_with_link(path, run.workspace / config.checkpoint_filename)
                if is_best:
                    _replace_with_link(path, run.workspace / BEST_FILENAME)
                keep = -1 if config.gather_checkpoints < 0 else max(2, config.gather_checkpoints)
                ckpt.prune_checkpoints(run.workspace, keep)
            except OSError as err:  # the numbered checkpoint is complete: --resume auto finds it
                notices.warning(f"warning: wrote {path} but could not update {config.checkpoint_filename} or "
                                f"prune older checkpoints ({err.strerror or err}).")
    distributed.barrier(env)
    return path


def _replace_with_link(source: Path, target: Path) -> None:
    """Point `target` at `source`'s bytes atomically: a hard link where the filesystem allows, else a copy."""
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def restore(state: dict, model: nn.Module, ema: ModelEMA | None, optimizer, scaler, config: TrainConfig,
            env: DistEnv, steps_per_epoch: int) -> Progress:
    """Load a checkpoint into the freshly built objects; returns the position to continue from."""
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"the checkpoint's optimizer state does not fit this run's optimizer ({err}); resume with the "
                        "settings it was trained with.") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    progress = Progress(**{k: v for k, v in state.get("progress", {}).items() if k in Progress.__dataclass_fields__})
    rng_states = state.get("rng") or []
    if len(rng_states) == env.world_size:
        set_rng_state(rng_states[env.rank])
    saved = state.get("data_state", {})
    saved_steps = state["schedule"]["steps_per_epoch"]
    same_geometry = (saved.get("batch_size") == config.batch_size and state.get("world_size") == env.world_size
                     and saved.get("accumulation") == config.accumulation_steps(env.world_size)
                     and saved_steps == steps_per_epoch)
    if not same_geometry and not config.evaluate:  # --evaluate resumes nothing: no position to keep
        # Another batch size, process count or dataset size: continue at the same fraction of the epoch, and count
        # steps in the new epoch length so the LR schedule, EMA warm-up and MixUp draws stay where they were.
        fraction = progress.step_in_epoch / max(1, saved_steps)
        progress.step_in_epoch = min(steps_per_epoch - 1, int(fraction * steps_per_epoch))
        progress.global_step = progress.epoch * steps_per_epoch + progress.step_in_epoch
        notices.warning("warning: the batch size, process count or dataset changed since the checkpoint; resuming "
                        "at the same point of the epoch, but not bit-exactly.")
    return progress
