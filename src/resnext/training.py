"""Training: NVIDIA's recipe as one loop you can read top to bottom.

    train(config)                       set up (setup), resume if asked, then fit or --evaluate
    fit(run, progress)                  per epoch: train_one_epoch, validate, checkpoint, until done or told to stop
    train_one_epoch(run, progress, ..)  the optimizer steps of one epoch (logging, stop checks, interval checkpoints)
    train_step(run, batches, step, lr)  one optimizer step: MixUp, then run.step (resnext.step: eager, --compile,
                                        --cuda-graphs; AMP, accumulation, clipping), then EMA

`Run` is what set-up builds and nothing changes afterwards (the model, optimizer, loaders, logger, ...);
`Progress` is where training stands (saved in every checkpoint); `Session` is what this invocation counted. A
function that changes the position takes `progress`; everything else only reads.

Everything a checkpoint needs to continue bit-for-bit is either saved (model, optimizer, scaler, EMA, position,
RNG states) or a pure function of (seed, step): the LR schedule, the data order and augmentation, MixUp draws.
The hot loop (SGD, the default) waits for the device only at --print-freq log points and checkpoint saves;
fp16 AMP with RMSprop adds one wait per step (the loss scaler's inf check on an unfused optimizer).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .affinity import set_gpu_affinity
from .data.base import Batch, Loader
from .device import configure_backends, make_grad_scaler, resolve_memory_format, resolve_precision, synchronize
from .distributed import DistEnv
from .ema import ModelEMA
from .health import LossHealth
from .errors import CheckpointNotSaved, TrainingDiverged, UserError
from .evaluation import evaluate
from .logger import RunLogger
from .mixup import mixup, step_rng
from .models import create_model, resolve_arch, script_model
from .optim import LRSchedule, build_optimizer
from .preemption import StopSignal
from .recipe import TrainConfig
from .step import GraphedStep, TrainStep, check_supported, make_step
from .workspace import check_resume_compatible, claim_workspace, locate_resume, report_resume_changes

notices = logging.getLogger("resnext")


# ---- the state of a run -------------------------------------------------------------------------------------

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
class Session:
    """What this invocation has counted (not saved: a resumed run starts a new session)."""

    steps: int = 0  # optimizer steps run (--run-steps counts them across epochs)
    epoch_throughputs: list = field(default_factory=list)  # train.total_ips of the epochs it finished
    last_metrics: dict = field(default_factory=dict)  # the newest validation results, logged names


@dataclass(frozen=True)
class Run:
    """What one training run is made of, built once by `setup` (the objects inside train, the references do not
    change)."""

    config: TrainConfig
    env: DistEnv
    model: nn.Module  # the bare module (no DDP, not compiled): what checkpoints hold
    train_model: nn.Module  # what the forward calls: DDP around `model` under torchrun, else `model`
    ddp: nn.parallel.DistributedDataParallel | None
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: TrainStep | GraphedStep  # forward, loss, backward and update: eager, compiled or a CUDA graph
    schedule: LRSchedule
    train_loader: Loader | None  # None under --evaluate
    val_loader: Loader | None  # None under --training-only
    class_names: list[str]
    precision: str
    accumulation: int  # micro-batches per optimizer step
    steps_per_epoch: int  # optimizer steps
    logger: RunLogger
    health: LossHealth
    checkpoints: ckpt.CheckpointWriter

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def images_per_step(self) -> int:
        """Images of one optimizer step over all processes and micro-batches."""
        return self.config.global_batch(self.env.world_size)


# ---- set-up -------------------------------------------------------------------------------------------------

def train(config: TrainConfig) -> dict:
    """Run (or continue) the training job `config` describes; returns the run summary (the log's last entry).

    Raises UserError (one sentence) for anything the user can fix, TrainingDiverged when the loss or weights stop
    being finite, CheckpointNotSaved when the run's last checkpoint could not be written.
    """
    with StopSignal() as stop:  # from the start: a signal during set-up stops the run after its first step
        env = distributed.setup(config.device, config.dist_backend, config.join_timeout)
        try:
            set_gpu_affinity(config.gpu_affinity, env)  # before the data workers start: they inherit it
            config.validate(env.world_size)  # refusals come before the workspace is made or taken
            check_supported(config, env.device, env.world_size)
            with claim_workspace(config, env) as workspace:
                run, progress, resume_path = setup(config, env, workspace)
                try:
                    log_parameters(run, progress, resume_path)
                    if config.evaluate:
                        return evaluate_only(run)
                    return fit(run, progress, stop)
                finally:
                    run.logger.close()
        finally:
            distributed.teardown(env)


def setup(config: TrainConfig, env: DistEnv, workspace: Path) -> tuple[Run, Progress, Path | None]:
    """Build the run `config` (validated: train() does it) describes on this process, restored from its checkpoint
    when resuming. `workspace` is the folder claim_workspace created and owns."""
    precision = resolve_precision(config.training_precision(env.device.type), env.device)
    memory_format = resolve_memory_format(config.training_memory_format(), env.device)
    configure_backends(precision, config.deterministic)
    resume_path, state = locate_resume(config, workspace)
    from .data import resolve_backend

    config.data_backend = resolve_backend(config.data_backend)
    config.seed = ckpt.resolve_seed(config.seed, state, env)
    from .weights import load_weights, pretrained_weights, read_weights

    # Read before the loaders: the weights' class names label the folders.
    starting = (config.pretrained_from_file or config.pretrained) and state is None
    pretrained = read_weights(pretrained_weights(config)) if starting else None

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    train_loader, val_loader, class_names = build_loaders(config, env, memory_format, state, resume_path, pretrained)
    num_classes = config.num_classes or len(class_names)
    if state is not None:
        check_resume_compatible(state, config, num_classes, resume_path)
    model = create_model(config.arch, num_classes, **config.model_options())
    if config.evaluate and state is None and not (config.pretrained_from_file or config.pretrained):
        notices.info("--evaluate without weights: validating the freshly initialised model (a speed benchmark, as "
                     "NVIDIA's benchmark_inference mode does).")
    if config.evaluate and state is None and config.resume:
        raise UserError(f"--evaluate found no checkpoint to evaluate ({config.resume}); pass --resume CHECKPOINT or "
                        "--pretrained-from-file FILE.")
    if pretrained is not None:
        load_weights(model, pretrained, ignore_head=config.ignore_head)
    if config.sync_bn:
        model = distributed.convert_sync_batchnorm(model, env)
    model.to(env.device, memory_format=memory_format)
    ema = ModelEMA(model, config.use_ema) if config.use_ema else None

    accumulation = config.accumulation_steps(env.world_size)
    steps_per_epoch = config.steps_per_epoch(len(train_loader), accumulation) if train_loader is not None else 0
    if steps_per_epoch == 0 and not config.evaluate:
        raise UserError(f"the training split yields {len(train_loader)} batch(es) of {config.batch_size} per process, "
                        f"fewer than one optimizer step of {accumulation}; lower --batch-size or "
                        "--optimizer-batch-size.")
    peak_lr = config.peak_lr(env.world_size)
    optimizer = build_optimizer(config, model, peak_lr, env.device)
    scaler = make_grad_scaler(precision, env.device, optimizer, init_scale=config.static_loss_scale,
                              dynamic=config.dynamic_loss_scale)
    progress = Progress()
    if state is not None:
        progress = restore(state, model, ema, optimizer, scaler, config, env, steps_per_epoch, accumulation)

    ddp = None
    train_model = model
    if env.distributed:
        ddp = distributed.data_parallel(model, env)
        train_model = ddp
    if config.jit == "script":
        train_model = script_model(train_model)
    step = make_step(config, model, train_model, optimizer, scaler, precision=precision, accumulation=accumulation,
                     ddp=ddp)

    schedule = LRSchedule.from_config(config, peak_lr, max(1, steps_per_epoch))
    if state is not None and not config.evaluate:
        report_resume_changes(state, config, schedule, progress.global_step)
    run = Run(config=config, env=env, model=model, train_model=train_model, ddp=ddp, ema=ema, optimizer=optimizer,
              scaler=scaler, step=step, schedule=schedule,
              train_loader=train_loader, val_loader=val_loader, class_names=class_names, precision=precision,
              accumulation=accumulation, steps_per_epoch=steps_per_epoch, logger=make_logger(config, env, workspace),
              health=LossHealth(env.device, config.max_nonfinite_steps),
              checkpoints=ckpt.CheckpointWriter(workspace, config.checkpoint_filename, config.checkpoints_to_keep()))
    return run, progress, resume_path


def restore(state: dict, model: nn.Module, ema: ModelEMA | None, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, config: TrainConfig, env: DistEnv, steps_per_epoch: int,
            accumulation: int) -> Progress:
    """Load a checkpoint (ours, or NVIDIA's adapted to ours) into the freshly built objects; returns the position to
    continue from (the start under --evaluate, which continues nothing)."""
    state = ckpt.adapt_nvidia_state(state, model, optimizer, config, env, steps_per_epoch)
    ckpt.restore_objects(state, model=model, ema_model=ema.module if ema else None, optimizer=optimizer,
                         scaler=scaler, rank=env.rank, world_size=env.world_size)
    if config.evaluate:
        return Progress()
    return Progress(**ckpt.resume_position(state, tuple(Progress.__dataclass_fields__), batch_size=config.batch_size,
                                           world_size=env.world_size, accumulation=accumulation,
                                           steps_per_epoch=steps_per_epoch))


def build_loaders(config: TrainConfig, env: DistEnv, memory_format: torch.memory_format, state: dict | None = None,
                  resume_path: Path | None = None,
                  pretrained=None) -> tuple[Loader | None, Loader | None, list[str]]:
    """The training and validation loaders `config` asks for (None where the mode needs none), and the class
    names: the folders labelled by the names of the checkpoint `state` or the `pretrained` weights
    (data.classes.classes_for_training). Raises UserError for a dataset whose layout, class names or class count
    does not fit."""
    from .data import check_num_classes, create_loader, find_dataset
    from .data.classes import classes_for_training

    common = dict(backend=config.data_backend, image_size=config.image_size, crop_pct=config.eval_crop_pct(),
                  interpolation=config.interpolation, workers=config.workers, prefetch=config.prefetch,
                  device=env.device, memory_format=memory_format, rank=env.rank, world_size=env.world_size,
                  seed=config.seed, batch_size=config.batch_size, dali_ops=config.dali_ops)
    if config.data_backend == "synthetic":
        num_classes = config.num_classes or 1000
        class_names = [f"class_{i}" for i in range(num_classes)]
        synthetic = dict(common, root=None, num_classes=num_classes,
                         synthetic_batches_per_epoch=config.synthetic_epoch())
        train_loader = create_loader(train=True, **synthetic)
        val_loader = None if config.training_only else create_loader(train=False, **synthetic)
        return train_loader, val_loader, class_names
    train_dir, val_dir, folders = find_dataset(config.data)
    classes = classes_for_training(folders, data=f"'{config.data}'", checkpoint=state, checkpoint_path=resume_path,
                                   pretrained=pretrained, class_map=config.class_map, evaluate=config.evaluate,
                                   ignore_head=config.ignore_head)
    class_names = list(classes.class_names)
    check_num_classes(config.num_classes, class_names, config.data)
    common.update(classes=classes, exif_orientation=config.exif_orientation)
    train_loader = None if config.evaluate else create_loader(root=train_dir, train=True,
                                                                augmentation=config.augmentation,
                                                                jpeg_decode=config.jpeg_decode, **common)
    val_loader = None if config.training_only else create_loader(root=val_dir, train=False, **common)
    return train_loader, val_loader, class_names


def make_logger(config: TrainConfig, env: DistEnv, workspace: Path) -> RunLogger:
    """The DLLogger file, console progress and (when installed or asked for) TensorBoard, written by rank 0."""
    import importlib.util

    installed = importlib.util.find_spec("tensorboard") is not None
    if config.tensorboard and not installed:
        raise UserError('--tensorboard needs the tensorboard package: pip install "resnext[tensorboard]".')
    wants_tensorboard = installed if config.tensorboard is None else config.tensorboard
    tensorboard_dir = workspace / "tensorboard" if wants_tensorboard and env.is_main else None
    return RunLogger(workspace / config.raport_file, enabled=env.is_main, tensorboard_dir=tensorboard_dir,
                     progress=config.progress)


def log_parameters(run: Run, progress: Progress, resume_path: Path | None) -> None:
    config, env = run.config, run.env
    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    run.logger.parameters({**config.to_dict(), "arch": resolve_arch(config.arch), "num_classes": run.num_classes,
                           "precision": run.precision, "iterations_per_epoch": run.steps_per_epoch,
                           "world_size": env.world_size, "global_batch_size": run.images_per_step,
                           "peak_lr": run.schedule.peak, "warmup_epochs": config.warmup_epochs(),
                           "torch_version": torch.__version__, "device_name": device_name,
                           "dataset_classes": len(run.class_names)})
    if resume_path is not None and not config.evaluate:
        p = progress
        run.logger.log("RESUME", {"resume.epoch": p.epoch, "resume.step_in_epoch": p.step_in_epoch,
                                  "resume.global_step": p.global_step, "resume.checkpoint": str(resume_path)})
        run.logger.message(f"resumed from {resume_path} at epoch {p.epoch + 1}, step {p.step_in_epoch}")


# ---- the loop -----------------------------------------------------------------------------------------------

def fit(run: Run, progress: Progress, stop: StopSignal) -> dict:
    """The epoch loop: train, validate, checkpoint, until done, early-stopped or told to stop (`stop`, which every
    rank reads together after each step and each epoch)."""
    config, p, session = run.config, progress, Session()
    end_epoch = config.epochs if config.run_epochs < 0 else min(config.epochs, p.epoch + config.run_epochs)
    if p.epoch >= config.epochs:
        run.logger.message(f"training already finished ({config.epochs} epochs); nothing to do. "
                           "Use --evaluate to measure the checkpoint.")
        return finish(run, p, session, "completed", time.time())
    started, reason = time.time(), "completed"
    while p.epoch < end_epoch:
        epoch_started, first_step = time.time(), p.step_in_epoch
        outcome = train_one_epoch(run, p, session, stop)
        if outcome != "completed":
            save_checkpoint(run, p, session)
            reason = "preempted" if outcome == "stopped" else "stopped"
            break
        epoch_metrics = epoch_train_metrics(run, p, time.time() - epoch_started, run.steps_per_epoch - first_step)
        run.logger.epoch_end(p.epoch, epoch_metrics, run.steps_per_epoch)
        if "train.total_ips" in epoch_metrics:
            session.epoch_throughputs.append(epoch_metrics["train.total_ips"])
        is_best = False
        if not config.training_only:
            is_best = validate_epoch(run, p, session)
        p.epoch += 1
        p.step_in_epoch = 0
        p.epoch_loss_sum = 0.0
        save_checkpoint(run, p, session, is_best=is_best)
        if distributed.any_rank(stop.requested, run.env):  # a signal during validation: every rank stops here
            reason = "preempted"
            break
        if 0 < config.early_stopping_patience <= p.epochs_without_improvement:
            reason = "early_stop"
            run.logger.message(f"early stopping: no top-1 improvement for {p.epochs_without_improvement} epochs.")
            break
    else:
        if end_epoch < config.epochs:
            reason = "stopped"  # --run-epochs reached; resume continues
    if reason == "preempted" and run.checkpoints.unsaved is None and run.checkpoints.last is not None:
        run.logger.message(f"stopped by {stop.received or 'a signal to another rank'} after global step "
                           f"{p.global_step}: saved {run.checkpoints.last}; continue with --resume auto.")
    if run.checkpoints.unsaved is not None:
        raise CheckpointNotSaved(f"training stopped without its last checkpoint: {run.checkpoints.unsaved}. Free disk "
                                 "space or fix the workspace's permissions; --resume auto then repeats the lost steps.")
    return finish(run, p, session, reason, started)


def train_one_epoch(run: Run, progress: Progress, session: Session, stop: StopSignal) -> str:
    """Optimizer steps from the saved position to the end of the epoch. Returns completed | stopped | run_steps."""
    config, env, p = run.config, run.env, progress
    run.train_loader.set_epoch(p.epoch, start_batch=p.step_in_epoch * run.accumulation)
    batches = iter(run.train_loader)
    run.train_model.train()
    window = LogWindow(run.device)
    epoch_loss = torch.zeros((), dtype=torch.float64, device=run.device)  # folded into p.epoch_loss_sum when read

    def fold_epoch_loss() -> None:
        p.epoch_loss_sum += float(epoch_loss)
        epoch_loss.zero_()

    outcome = "completed"
    while p.step_in_epoch < run.steps_per_epoch:
        lr = run.schedule.at(p.epoch, p.step_in_epoch)
        step_loss, data_time = train_step(run, batches, p.global_step, lr)
        run.health.observe(step_loss, p.global_step)
        p.global_step += 1
        p.step_in_epoch += 1
        p.images_seen += run.images_per_step
        session.steps += 1
        window.add(step_loss, data_time)
        epoch_loss += step_loss
        if p.step_in_epoch % config.print_freq == 0 or p.step_in_epoch == run.steps_per_epoch:
            fold_epoch_loss()
            log_window(run, p, window, lr)
        if distributed.any_rank(stop.requested, env):
            outcome = "stopped"
            break
        if 0 < config.run_steps <= session.steps:
            outcome = "run_steps"
            break
        if config.checkpoint_interval and p.global_step % config.checkpoint_interval == 0 \
                and p.step_in_epoch < run.steps_per_epoch:
            fold_epoch_loss()
            save_checkpoint(run, p, session)
    fold_epoch_loss()
    return outcome


def train_step(run: Run, batches: Iterator[Batch], global_step: int, lr: float) -> tuple[torch.Tensor, float]:
    """One optimizer step at learning rate `lr` over `run.accumulation` micro-batches drawn from `batches`.

    Returns the step's mean loss (a 0-d tensor on the device, not synchronized) and the seconds spent waiting for
    data. A non-finite loss skips the update through the loss scaler's inf check.
    """
    config = run.config
    data_time = 0.0

    def micro_batches() -> Iterator[Batch]:
        nonlocal data_time
        for micro in range(run.accumulation):
            if micro and run.ema is not None and micro_batch_ema:
                # NVIDIA's EMA moves after every batch: the step asks for this batch once the previous one's
                # backward is done, so the average sees that batch's BatchNorm statistics.
                run.ema.update(run.model, global_step * run.accumulation + micro - 1)
            waited = time.perf_counter()
            images, targets = next(batches)
            data_time += time.perf_counter() - waited
            if config.mixup > 0:  # MixUp's draws stay on the host, outside compiled code and CUDA graphs
                rng = step_rng(config.seed, global_step, micro, run.env.rank)
                images, targets = mixup(images, targets, run.num_classes, config.mixup, rng)
            yield images, targets

    micro_batch_ema = config.ema_update == "micro-batch"  # t counts micro-batches (NVIDIA's), else optimizer steps
    step_loss = run.step(micro_batches(), lr)
    if run.ema is not None:
        run.ema.update(run.model, (global_step + 1) * run.accumulation - 1 if micro_batch_ema else global_step)
    return step_loss, data_time


class LogWindow:
    """The steps since the last log point: their summed loss (on the device), data wait and wall time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.steps, self.data_time, self.started = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, data_time: float) -> None:
        self.loss += loss
        self.steps += 1
        self.data_time += data_time


def log_window(run: Run, progress: Progress, window: LogWindow, lr: float) -> None:
    """One log point: with checkpoint saves, the only places the loop waits for the device."""
    run.health.check(run.env)
    env, config, p = run.env, run.config, progress
    loss = distributed.all_reduce_sum(window.loss.clone(), env) / env.world_size
    synchronize(run.device)
    elapsed = time.perf_counter() - window.started
    steps = window.steps
    images = steps * run.images_per_step
    compute = max(elapsed - window.data_time, 1e-9)
    data = {"train.loss": float(loss) / steps, "train.lr": lr, "train.total_ips": images / elapsed,
            "train.compute_ips": images / compute, "train.data_time": window.data_time / steps,
            "train.compute_time": compute / steps}
    if run.precision == "amp":
        data["train.grad_scale"] = float(run.scaler.get_scale())
    remaining = (config.epochs - p.epoch) * run.steps_per_epoch - p.step_in_epoch
    run.logger.train_progress(p.epoch, p.step_in_epoch, run.steps_per_epoch, config.epochs, data,
                              eta_s=remaining * elapsed / steps)
    window.reset()


def epoch_train_metrics(run: Run, progress: Progress, seconds: float, steps_timed: int) -> dict:
    """The epoch's mean loss (over all its steps, resumed or not) and the throughput of the steps just run."""
    loss = torch.tensor([progress.epoch_loss_sum], dtype=torch.float64, device=run.device)
    loss = float(distributed.all_reduce_sum(loss, run.env)) / run.env.world_size
    metrics = {"train.loss": loss / run.steps_per_epoch,
               "train.lr": run.schedule.at(progress.epoch, run.steps_per_epoch - 1), "train.epoch_time": seconds}
    if steps_timed:  # a run resumed at an epoch's very end trained nothing to time
        metrics["train.total_ips"] = steps_timed * run.images_per_step / max(seconds, 1e-9)
    return metrics


# ---- validation and checkpoints -----------------------------------------------------------------------------

def validate(run: Run) -> dict:
    """The model (and its EMA) on the validation split, as logged metric names (val.top1, val_ema.top1, ...)."""
    config = run.config
    share_rank0_statistics(run)
    max_batches = config.prof if config.prof > 0 else None
    common = dict(device=run.device, precision=run.precision, topk=config.topk, env=run.env,
                  max_batches=max_batches, num_classes=run.num_classes,
                  label_smoothing=config.val_label_smoothing())
    metrics = evaluate(run.model, run.val_loader, **common)
    data = {f"val.{k}": v for k, v in metrics.items() if not isinstance(v, list)}
    if run.ema is not None:
        ema_metrics = evaluate(run.ema.module, run.val_loader, **common)
        data.update({f"val_ema.{k}": ema_metrics[k] for k in ("top1", f"top{config.topk}", "loss")})
    return data


def validate_epoch(run: Run, progress: Progress, session: Session) -> bool:
    """Validate at the end of an epoch and update the best / early-stopping state. True if this is the best."""
    p = progress
    data = validate(run)
    run.logger.epoch_end(p.epoch, data, run.steps_per_epoch)
    is_best = data["val.top1"] > p.best_top1 or p.best_epoch < 0
    if is_best:
        p.best_top1, p.best_topk, p.best_epoch = data["val.top1"], data[f"val.top{run.config.topk}"], p.epoch
        p.epochs_without_improvement = 0
    else:
        p.epochs_without_improvement += 1
    session.last_metrics = data
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


def save_checkpoint(run: Run, progress: Progress, session: Session, is_best: bool = False) -> Path | None:
    """Write checkpoint-<epoch>-<step>.pt on rank 0 (every rank joins), then refresh the latest/best links and prune.

    A failed write keeps every earlier checkpoint and training goes on (fit() exits non-zero if the last write
    before exiting failed); weights that are no longer finite are never written (TrainingDiverged).
    """
    config, env = run.config, run.env
    if not config.save_checkpoints:
        return None
    share_rank0_statistics(run)
    if not all(bool(torch.isfinite(t).all()) for t in run.model.state_dict().values() if t.is_floating_point()):
        raise TrainingDiverged("training stopped: the model weights are no longer finite, so they were not saved; "
                               f"the last good checkpoint is {run.checkpoints.last or 'the previous one'}. "
                               "Lower --lr or use --grad-clip.")
    rng_states = distributed.gather_to_main(ckpt.rng_state(), env)
    path = None
    if env.is_main:
        from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

        state = ckpt.training_state(
            arch=resolve_arch(config.arch), class_names=run.class_names, model=run.model,
            ema_model=run.ema.module if run.ema else None, optimizer=run.optimizer, scaler=run.scaler,
            schedule=asdict(run.schedule), progress=asdict(progress), metrics=session.last_metrics,
            config=config.to_dict(), rng=rng_states, world_size=env.world_size, batch_size=config.batch_size,
            accumulation=run.accumulation,
            preprocessing={"image_size": config.image_size, "crop_pct": config.eval_crop_pct(),
                           "interpolation": config.interpolation, "mean": list(IMAGENET_MEAN),
                           "std": list(IMAGENET_STD), "exif_orientation": config.exif_orientation})
        path = run.checkpoints.write(state, progress.epoch, progress.global_step, is_best=is_best)
    distributed.barrier(env)
    return path


def finish(run: Run, progress: Progress, session: Session, reason: str, started: float) -> dict:
    """Log and return the run summary of this session."""
    p = progress
    summary = {"best.top1": p.best_top1, f"best.top{run.config.topk}": p.best_topk, "best.epoch": p.best_epoch,
               "run.time": time.time() - started, "train.images": p.images_seen, "exit.reason": reason}
    if session.epoch_throughputs:
        summary["train.total_ips"] = sum(session.epoch_throughputs) / len(session.epoch_throughputs)
    if session.last_metrics:
        summary["val.top1"] = session.last_metrics["val.top1"]
    if run.checkpoints.last is not None:
        summary["checkpoint"] = str(run.checkpoints.last)
    run.logger.summary(summary)
    return summary
