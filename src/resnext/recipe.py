"""The training configuration: NVIDIA's ResNeXt101-32x4d recipe as defaults, and NVIDIA's presets.

One dataclass holds every knob `resnext train` has; `validate()` turns impossible combinations into one-sentence
UserErrors before anything expensive starts. Derived quantities (global batch, accumulation steps, peak LR,
warmup) are methods of the config, so every checkpoint, which stores the config, records them exactly.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import UserError

PRECISIONS = ("amp", "amp-bf16", "tf32", "fp32")
LR_SCHEDULES = ("cosine", "step", "linear")
OPTIMIZERS = ("sgd", "rmsprop")
DATA_BACKENDS = ("pytorch", "gpu", "dali-cpu", "dali-gpu", "synthetic")
MEMORY_FORMATS = ("nchw", "nhwc")
INTERPOLATIONS = ("bilinear", "bicubic")
REFERENCE_BATCH = 256  # NVIDIA: LR 0.256 per 256 images of global batch
REFERENCE_LR = 0.256


@dataclass
class TrainConfig:
    # data
    data: str | None = None
    data_backend: str = "pytorch"
    workers: int = 5
    prefetch: int = 2
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    augmentation: str | None = None
    synthetic_batches: int = 100
    exif_orientation: bool = False  # turn images upright by their EXIF tag (off: as torchvision's / NVIDIA's loaders)
    class_map: str | None = None  # a file mapping class folders to the classes of --resume / pretrained weights
    # model
    arch: str = "resnext101_32x4d"
    num_classes: int | None = None  # None: the number of class folders in the dataset
    conv_init: str = "fan_in"
    last_bn_0_init: bool = False
    pretrained_from_file: str | None = None
    ignore_head: bool = False
    # schedule
    epochs: int = 90
    run_epochs: int = -1
    early_stopping_patience: int = -1
    prof: int = -1
    batch_size: int = 256
    optimizer_batch_size: int = -1
    lr: float | None = None  # None: 0.256 x global optimizer batch / 256
    lr_schedule: str = "cosine"
    end_lr: float = 0.0
    warmup: int | None = None  # epochs; None: min(8, epochs // 10)
    # loss and regularisation
    label_smoothing: float = 0.1
    mixup: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.875
    weight_decay: float = 1.0 / 16384
    bn_weight_decay: bool = False
    nesterov: bool = False
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-3
    grad_clip: float | None = None
    use_ema: float | None = None
    # numerics and speed
    precision: str | None = None  # None: amp on CUDA, fp32 on CPU
    memory_format: str | None = None  # None: nhwc on CUDA, nchw on CPU
    static_loss_scale: float = 128.0
    dynamic_loss_scale: bool = True
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False
    device: str | None = None  # None: cuda if available, else cpu
    dist_backend: str | None = None  # None: nccl on CUDA, gloo on CPU
    seed: int = 0
    max_nonfinite_steps: int = 20
    # checkpoints and logs
    workspace: str = "./"
    resume: str | None = None
    checkpoint_filename: str = "checkpoint.pth.tar"
    gather_checkpoints: int = 0
    checkpoint_interval: int = 0
    save_checkpoints: bool = True
    evaluate: bool = False
    training_only: bool = False
    print_freq: int = 10
    raport_file: str = "experiment_raport.json"
    topk: int = 5
    tensorboard: bool | None = None  # None: when tensorboard is installed
    progress: bool | None = None  # None: a live progress line on terminals, plain lines otherwise
    preset: str | None = None  # the named preset the run started from (recorded, applied by the CLI)

    # ---- derived values -------------------------------------------------------------------------------
    def accumulation_steps(self, world_size: int) -> int:
        if self.optimizer_batch_size <= 0:
            return 1
        return self.optimizer_batch_size // (self.batch_size * world_size)

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step, over all processes and accumulation steps."""
        return self.batch_size * world_size * self.accumulation_steps(world_size)

    def peak_lr(self, world_size: int) -> float:
        if self.lr is not None:
            return self.lr
        return REFERENCE_LR * self.global_batch(world_size) / REFERENCE_BATCH

    def warmup_epochs(self) -> int:
        return self.warmup if self.warmup is not None else min(8, self.epochs // 10)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- validation -----------------------------------------------------------------------------------
    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Raise a UserError naming the first impossible setting; returns self for chaining."""
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise UserError(message)

        choices = {"data_backend": DATA_BACKENDS, "interpolation": INTERPOLATIONS, "lr_schedule": LR_SCHEDULES,
                   "optimizer": OPTIMIZERS}
        for name, allowed in choices.items():
            require(getattr(self, name) in allowed,
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got '{getattr(self, name)}'.")
        require(self.precision in (None, *PRECISIONS),
                f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'.")
        require(self.memory_format in (None, *MEMORY_FORMATS),
                f"--memory-format must be nchw or nhwc, got '{self.memory_format}'.")
        require(self.augmentation in (None, "autoaugment"),
                f"--augmentation must be autoaugment, got '{self.augmentation}'.")
        require(self.data is not None or self.data_backend == "synthetic",
                "a dataset folder is required (or --data-backend synthetic).")
        for name in ("batch_size", "epochs", "image_size", "print_freq", "topk", "synthetic_batches"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1.")
        require(self.workers >= 0, "--workers must be 0 or more.")
        require(self.prefetch >= 1, "--prefetch must be at least 1.")
        for name in ("lr", "end_lr", "momentum", "weight_decay", "label_smoothing", "mixup", "grad_clip",
                     "use_ema", "static_loss_scale", "crop_pct"):
            value = getattr(self, name)
            require(value is None or math.isfinite(value), f"--{name.replace('_', '-')} must be a finite number.")
            require(value is None or value >= 0, f"--{name.replace('_', '-')} must not be negative.")
        require(self.lr is None or self.lr > 0, "--lr must be positive.")
        require(0 < self.crop_pct <= 1, "--crop-pct must be in (0, 1].")
        require(self.label_smoothing < 1, "--label-smoothing must be below 1.")
        require(self.momentum < 1, "--momentum must be below 1.")
        require(self.use_ema is None or 0 < self.use_ema < 1, "--use-ema DECAY must be between 0 and 1, e.g. 0.9999.")
        require(self.grad_clip is None or self.grad_clip > 0, "--grad-clip must be positive.")
        require(self.static_loss_scale > 0, "--static-loss-scale must be positive.")
        require(self.max_nonfinite_steps >= 1, "--max-nonfinite-steps must be at least 1.")
        require(self.checkpoint_interval >= 0, "--checkpoint-interval must be 0 (epoch ends only) or more.")
        require(self.gather_checkpoints >= -1, "--gather-checkpoints must be -1 (all), 0 or a positive count.")
        require(self.warmup is None or 0 <= self.warmup < self.epochs,
                f"--warmup must be between 0 and --epochs - 1 ({self.epochs - 1}), got {self.warmup}.")
        require(not (self.evaluate and self.training_only), "--evaluate and --training-only exclude each other.")
        require(not self.evaluate or self.resume or self.pretrained_from_file,
                "--evaluate needs weights: pass --resume CHECKPOINT or --pretrained-from-file FILE.")
        if self.optimizer_batch_size > 0:
            per_step = self.batch_size * world_size
            require(self.optimizer_batch_size % per_step == 0,
                    f"--optimizer-batch-size {self.optimizer_batch_size} must be a multiple of --batch-size x "
                    f"processes ({self.batch_size} x {world_size} = {per_step}).")
        require(self.mixup == 0 or self.mixup > 0.0, "--mixup must be 0 (off) or a positive alpha.")
        return self


# NVIDIA's configs.yml for resnext101-32x4d: optimizer batch 1024, LR 1.024, warmup 8, cosine, label smoothing 0.1,
# momentum 0.875, WD 1/16384; per-GPU batch 128 (AMP and TF32 on DGX A100; 64 for FP32 on V100); nhwc with AMP.
# "90ep" presets are the standard schedule without MixUp; "250ep" adds MixUp 0.2 (their best-accuracy recipe).
_NVIDIA_COMMON = dict(optimizer_batch_size=1024, lr=1.024, warmup=8, lr_schedule="cosine", label_smoothing=0.1,
                      momentum=0.875, weight_decay=1.0 / 16384, arch="resnext101_32x4d")
PRESETS: dict[str, dict] = {
    "nvidia-90ep-amp": dict(_NVIDIA_COMMON, epochs=90, precision="amp", batch_size=128, memory_format="nhwc"),
    "nvidia-90ep-tf32": dict(_NVIDIA_COMMON, epochs=90, precision="tf32", batch_size=128, memory_format="nchw"),
    "nvidia-90ep-fp32": dict(_NVIDIA_COMMON, epochs=90, precision="fp32", batch_size=64, memory_format="nchw"),
    "nvidia-250ep-amp": dict(_NVIDIA_COMMON, epochs=250, mixup=0.2, precision="amp", batch_size=128,
                             memory_format="nhwc"),
    "nvidia-250ep-tf32": dict(_NVIDIA_COMMON, epochs=250, mixup=0.2, precision="tf32", batch_size=128,
                              memory_format="nchw"),
    "nvidia-250ep-fp32": dict(_NVIDIA_COMMON, epochs=250, mixup=0.2, precision="fp32", batch_size=64,
                              memory_format="nchw"),
}


def preset(name: str) -> dict:
    """The settings of a named preset; explicit command-line flags override them."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; available: {', '.join(PRESETS)}.")
    return dict(PRESETS[name])
