"""The training configuration: every `resnext train` option, declared once, with NVIDIA's defaults and meaning.

`TrainConfig` is a plain dataclass usable from Python. Each field is declared with `option(...)` (options.py):
its spellings, type, valid range or choices, help, NVIDIA main.py's meaning and ours. The CLI parser, the
defaults, `validate()` and the table in docs/nvidia.md are all generated from these declarations.

A command line of NVIDIA's main.py means NVIDIA's run here. Where our behaviour differs and is better (LR moved
every step, no weight decay on any BatchNorm parameter or bias, AMP by default on GPUs, eval resize by crop
fraction, ...), it is opt-in under names of our own, all gathered in `--preset resnext`.

Derived quantities (global batch, accumulation, peak LR, warmup, precision, eval crop) are methods of the config,
so every checkpoint, which stores the config, records them exactly. This module never imports torch.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from .errors import UserError
from .options import check_values, ignored_options, option

notices = logging.getLogger("resnext")

PRECISIONS = ("amp", "amp-bf16", "tf32", "fp32")
LR_SCHEDULES = ("step", "linear", "cosine")
OPTIMIZERS = ("sgd", "rmsprop")
DATA_BACKENDS = ("pytorch", "gpu", "dali-cpu", "dali-gpu", "synthetic")
JOIN_TIMEOUT_S = 600  # --join-timeout's default: torchrun's own rendezvous join_timeout
JPEG_DECODES = ("scaled", "full")  # the pytorch backend's training decode (resnext.data.create_loader)
MEMORY_FORMATS = ("nchw", "nhwc")
CONV_INITS = ("fan_in", "fan_out")
AUGMENTATIONS = ("autoaugment",)
INTERPOLATIONS = ("bilinear", "bicubic")  # what every backend resizes with; DALI also has "triangular"
DALI_INTERPOLATIONS = INTERPOLATIONS + ("triangular",)
# NVIDIA's image_classification/gpu_affinity.py AffinityMode names.
AFFINITY_MODES = ("none", "socket", "socket_single", "socket_single_unique", "socket_unique_interleaved",
                  "socket_unique_contiguous")
REFERENCE_BATCH = 256  # NVIDIA: LR 0.256 per 256 images of global batch
REFERENCE_LR = 0.256
EVAL_PADDING = 32  # NVIDIA's eval resize: the shorter side to image size + 32 (crop_padding in dataloaders.py)
SE_ARCHS = ("se_resnext101_32x4d", "se_resnext101_32x4d_nvidia", "se-resnext101-32x4d", "seresnext101_32x4d")


def _canonical(arch: str) -> str:
    return arch.strip().lower().replace("-", "_")


def _is_se(config) -> bool:
    return _canonical(config.arch) in {_canonical(a) for a in SE_ARCHS}


@dataclass
class TrainConfig:
    # ---- data ------------------------------------------------------------------------------------------
    data: str | None = option(
        None, "data", kind="positional", metavar="DATA", group="data", none=True, nvidia_parser=None,
        help="dataset root with train/ and val/ (not needed for synthetic)",
        nvidia="required: the dataset root with train/ and val/")
    data_backend: str | None = option(
        None, "--data-backend", group="data", choices=DATA_BACKENDS, none=True,
        help="where images are decoded and augmented; default: dali-cpu as NVIDIA's, pytorch when DALI is not "
             "installed (with a notice)",
        nvidia="default `dali-cpu`; pytorch, dali-cpu, dali-gpu or synthetic",
        ours="falls back to pytorch, with a notice, when DALI is not installed and the flag is not given; adds "
             "`gpu` (nvJPEG decode and GPU augmentation)")
    workers: int = option(
        5, "-j", "--workers", group="data", type=int, low=0,
        help="data loading processes per GPU (DALI: threads)",
        nvidia="default 5: data loading workers per process")
    prefetch: int = option(
        2, "--prefetch", group="data", type=int, low=1,
        help="batches prefetched by each worker", nvidia="default 2: batches prefetched by each worker")
    image_size: int = option(
        224, "--image-size", group="data", type=int, low=1,
        help="training crop and evaluation size in pixels",
        nvidia="default: the model's (224 for these models)")
    crop_pct: float | None = option(
        None, "--crop-pct", group="data", type=float, low=0.0, high=1.0, low_open=True, none=True, nvidia_parser=None,
        help="evaluation resizes the shorter side to image size / crop pct (ours); default: NVIDIA's image size + 32",
        nvidia="no such flag: evaluation resizes the shorter side to image size + 32, then center-crops",
        opt_in="`--crop-pct 0.875` (timm's convention: the same 256 -> 224 at 224, scales with the size)")
    interpolation: str = option(
        "bilinear", "--interpolation", group="data", choices=DALI_INTERPOLATIONS,
        help="resize filter: bilinear, bicubic, or triangular (DALI backends only)",
        nvidia="default `bilinear`: bilinear, bicubic, or triangular (DALI only)")
    augmentation: str | None = option(
        None, "--augmentation", group="data", choices=AUGMENTATIONS, none=True,
        help="autoaugment: NVIDIA's ImageNet AutoAugment policy (pytorch and gpu backends)",
        nvidia="default none; `autoaugment`: NVIDIA's own 25-sub-policy ImageNet AutoAugment (PyTorch loader only)",
        ours="same policy, also on the gpu backend; drawn per sample from the seed, so resume repeats it")
    jpeg_decode: str = option(
        "full", "--jpeg-decode", group="data", choices=JPEG_DECODES, nvidia_parser=None,
        help="training JPEG decode of the pytorch backend: full (every pixel, then crop and resize, as NVIDIA's "
             "and torchvision's) or scaled (ours: decode at 1/2, 1/4 or 1/8 scale in the DCT domain when the crop "
             "still covers the output size, then resize)",
        opt_in="`--jpeg-decode scaled` (in `--preset resnext`): decodes fewer pixels where crops are large "
               "(docs/performance.md); the same pixels when a crop is under twice the output size, otherwise a "
               "mean difference under 1 level (docs/data.md)",
        ignored=lambda c: "without --data-backend pytorch" if (c.data_backend or "pytorch") != "pytorch" else None)
    exif_orientation: bool = option(
        False, "--exif-orientation", group="data", kind="toggle", nvidia_parser=None,
        help="turn each training and validation image upright by its EXIF orientation tag (default off, as "
             "torchvision's and NVIDIA's loaders, which published ImageNet accuracies come from; recorded in "
             "checkpoints, so evaluate and predict follow it; docs/data.md)")
    class_map: str | None = option(
        None, "--class-map", group="data", type=str, none=True, metavar="FILE", nvidia_parser=None,
        help="map class folders to the classes of the --resume / pretrained weights when the names differ: a JSON "
             "object {\"folder\": \"class name or index\"} or CSV lines folder,class (default: matched by name)")
    synthetic_batches: int | None = option(
        None, "--synthetic-batches", group="data", type=int, low=1, none=True, nvidia_parser=None,
        help="batches per epoch of the synthetic backend; default: --prof when given (NVIDIA's synthetic loader "
             "never ends), else 100",
        ignored=lambda c: "without --data-backend synthetic" if c.data_backend != "synthetic" else None)
    dali_ops: str = option(
        "nvidia", "--dali-ops", group="data", choices=("nvidia", "resnext"), nvidia_parser=None,
        help="DALI pipeline: nvidia (NVIDIA's operators: decode, then random-resized-crop without antialiasing; "
             "evaluation decoded by the mixed decoder, resize-shorter without antialiasing) or resnext (ours: "
             "fused decode-and-crop, antialiased resizes, torchvision's eval geometry)",
        opt_in="`--dali-ops resnext`: DALI crops the same pixels as the pytorch backend would",
        ignored=lambda c: "without a DALI backend" if not str(c.data_backend or "").startswith("dali") else None)
    gpu_affinity: str = option(
        "none", "--gpu-affinity", group="data", choices=AFFINITY_MODES,
        help="pin each process to the CPU cores nearest its GPU (NVIDIA's modes); a machine without GPUs says "
             "so and goes on",
        nvidia="default `none`; NVIDIA's configs.yml passes `socket_unique_contiguous` on DGX platforms",
        ours="topology from NVML (nvidia-ml-py) or sysfs; without GPUs, one notice and no pinning")

    # ---- model -------------------------------------------------------------------------------------------
    arch: str = option(
        "resnet50", "-a", "--arch", group="model", type=str,
        help="architecture (NVIDIA's spellings accepted: resnet50, resnext101-32x4d, se-resnext101-32x4d)",
        nvidia="default `resnet50`; resnet50, resnext101-32x4d, se-resnext101-32x4d, efficientnet-*",
        ours="also resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, resnext_tiny; no EfficientNets")
    num_classes: int | None = option(
        None, "--num_classes", group="model", type=int, low=1, none=True, nvidia_parser="model",
        aliases=("--num-classes",),
        help="classifier outputs; default: the number of class folders (1000 for synthetic); may exceed it",
        nvidia="default 1000: classifier outputs",
        ours="the number of class folders when not given (1000 on ImageNet, as NVIDIA's); a larger count works "
             "as NVIDIA's does (outputs no label reaches), a smaller one is refused")
    conv_init: str = option(
        "fan_in", "--conv_init", group="model", choices=CONV_INITS, nvidia_parser="model",
        aliases=("--conv-init",), help="kaiming-normal mode of the convolutions",
        nvidia="default `fan_in`: kaiming-normal mode of the convolutions")
    last_bn_0_init: bool = option(
        False, "--last_bn_0_init", group="model", kind="bool-value", nvidia_parser="model",
        aliases=("--last-bn-0-init",), help="zero-init the last BN of each residual block",
        nvidia="default False; takes a value (`--last_bn_0_init True`), read with argparse type=bool, so any "
               "non-empty value, `False` included, means True",
        ours="takes True/False (or nothing: True) and reads False as False; a warning says NVIDIA's would have "
             "read it as True")
    trt: bool = option(
        False, "--trt", group="model", kind="bool-value", nvidia_parser="model",
        help="squeeze-excitation as 1x1 convolutions (NVIDIA's TensorRT-friendly form); same function",
        nvidia="default False; True computes squeeze-excitation with 1x1 convolutions instead of linear layers "
               "(SE models only; same function)",
        ignored=lambda c: f"by {c.arch}, which has no squeeze-excitation" if not _is_se(c) else None)
    fused_se: bool = option(
        True, "--fused_se", group="model", kind="bool-value", nvidia_parser="model",
        help="fuse the squeeze-excitation product into the residual add (addcmul); same function",
        nvidia="default True: the SE product and residual add as one addcmul (SE models only; same function)",
        ignored=lambda c: f"by {c.arch}, which has no squeeze-excitation" if not _is_se(c) else None)
    pretrained: bool = option(
        False, "--pretrained", group="model", kind="flag", nvidia_parser="model",
        help="start from NVIDIA's NGC ImageNet weights of --arch (downloaded once; offline: one-line error)",
        nvidia="off; start from the NGC weights of --arch (downloaded)")
    pretrained_from_file: str | None = option(
        None, "--pretrained-from-file", group="model", type=str, none=True, nvidia_parser="model", metavar="FILE",
        help="start from these weights (any layout resnext.load_weights reads)",
        nvidia="start from a local weights file (a missing file is skipped with a message)",
        ours="reads every layout (NGC file, NVIDIA/timm/torchvision/ours) safely; a missing file is an error")
    ignore_head: bool = option(
        False, "--ignore-head", group="model", kind="flag", nvidia_parser=None,
        help="with --pretrained-from-file: keep a fresh classifier when the class count differs",
        ignored=lambda c: "without --pretrained-from-file" if not c.pretrained_from_file else None)
    jit: str = option(
        "no", "--jit", group="model", choices=("no", "script"),
        help="script: train the TorchScript-compiled model (torch.jit.script), as NVIDIA's",
        nvidia="default `no`; `script` trains the torch.jit.script-compiled model")

    # ---- schedule ------------------------------------------------------------------------------------------
    epochs: int = option(
        90, "--epochs", group="schedule", type=int, low=1,
        help="total epochs of the run", nvidia="default 90: total epochs")
    run_epochs: int = option(
        -1, "--run-epochs", group="schedule", type=int, low=0, special=(-1,),
        help="run only N epochs in this invocation (chained jobs); 0 runs none; -1: up to --epochs",
        nvidia="default -1; N: stop after N epochs of this invocation (0: none)",
        ours="values below -1 are refused (NVIDIA's would run no epoch)")
    run_steps: int = option(
        -1, "--run-steps", group="schedule", type=int, low=1, special=(-1,), nvidia_parser=None,
        help="ours: stop after N optimizer steps of this invocation, save and exit (--resume continues at the "
             "next step); -1: off")
    early_stopping_patience: int = option(
        -1, "--early-stopping-patience", group="schedule", type=int,
        help="stop after N epochs without a better top-1; 0 or negative: off",
        nvidia="default -1; N > 0: stop after N epochs without a better top-1; 0 or negative: off")
    prof: int = option(
        -1, "--prof", group="schedule", type=int,
        help="train only the first N batches of every epoch and validate on N batches (benchmarks); -1: off",
        nvidia="default -1; N > 0: every epoch trains on its first N batches and validates on N batches",
        ours="N batches rounded up to whole optimizer steps under gradient accumulation",
        opt_in="`--run-steps N`: stop after N steps in all, with a checkpoint to resume from")
    batch_size: int = option(
        256, "-b", "--batch-size", group="schedule", type=int, low=1,
        help="images per GPU/process", nvidia="default 256: images per GPU")
    optimizer_batch_size: int = option(
        -1, "--optimizer-batch-size", group="schedule", type=int, low=1, special=(-1,),
        help="images per optimizer step over all processes (gradient accumulation); -1: no accumulation",
        nvidia="default -1; N: accumulate N // (batch x GPUs) batches per step (a warning when N is not a "
               "multiple)")
    lr: float | None = option(
        0.1, "--lr", "--learning-rate", group="schedule", type=float, low=0.0, low_open=True, none=True,
        help="peak learning rate (in Python, None scales 0.256 per 256 images of global batch)",
        nvidia="default 0.1: the peak LR, as given",
        opt_in="`--preset resnext`: 0.256 x global batch / 256")
    lr_schedule: str = option(
        "step", "--lr-schedule", group="schedule", choices=LR_SCHEDULES,
        help="step (x0.1 at epochs 30, 60, 80), linear (to 0) or cosine (to --end-lr), after --warmup",
        nvidia="default `step`: x0.1 at epochs 30, 60, 80; linear: to 0; cosine: to --end-lr")
    end_lr: float = option(
        0.0, "--end-lr", group="schedule", type=float, low=0.0,
        help="final LR of the cosine schedule", nvidia="default 0: final LR of the cosine schedule",
        ignored=lambda c: f"by --lr-schedule {c.lr_schedule} (cosine only)" if c.lr_schedule != "cosine" else None)
    warmup: int | None = option(
        0, "--warmup", group="schedule", type=int, low=0, none=True,
        help="warm-up epochs: LR x (epoch + 1) / warmup; may exceed --epochs (in Python, None: "
             "min(8, epochs // 10))",
        nvidia="default 0; E: linear warm-up over E epochs, LR x (epoch + 1) / E; may exceed --epochs")
    lr_granularity: str = option(
        "epoch", "--lr-granularity", group="schedule", choices=("epoch", "step"), nvidia_parser=None,
        help="epoch: the LR changes at epoch boundaries, as NVIDIA's; step (ours): warm-up and decay move every "
             "optimizer step, no jumps",
        opt_in="`--lr-granularity step`: during an 8-epoch warm-up to 1.024 the epoch-wise LR jumps by 0.128 "
               "each epoch; per step it rises smoothly")

    # ---- loss and optimizer --------------------------------------------------------------------------------
    label_smoothing: float = option(
        0.0, "--label-smoothing", group="loss and optimizer", type=float, low=0.0, high=1.0, high_open=True,
        help="label smoothing", nvidia="default 0: label smoothing")
    mixup: float = option(
        0.0, "--mixup", group="loss and optimizer", type=float, low=0.0, metavar="ALPHA",
        help="MixUp alpha; 0: off", nvidia="default 0: MixUp alpha; 0: off")
    optimizer: str = option(
        "sgd", "--optimizer", group="loss and optimizer", choices=OPTIMIZERS,
        help="sgd or rmsprop", nvidia="default `sgd`; sgd or rmsprop")
    momentum: float = option(
        0.9, "--momentum", group="loss and optimizer", type=float, low=0.0, high=1.0, high_open=True,
        help="momentum", nvidia="default 0.9: momentum")
    weight_decay: float = option(
        1e-4, "--weight-decay", "--wd", group="loss and optimizer", type=float, low=0.0,
        help="weight decay (L2, in the optimizer)", nvidia="default 1e-4: weight decay")
    bn_weight_decay: bool = option(
        False, "--bn-weight-decay", group="loss and optimizer", kind="flag",
        help="also decay the parameters --wd-exempt spares",
        nvidia="off: parameters whose name contains \"bn\" are not decayed; on: every parameter is")
    wd_exempt: str = option(
        "bn-in-name", "--wd-exempt", group="loss and optimizer", choices=("bn-in-name", "bn-and-bias"),
        nvidia_parser=None,
        help="which parameters skip weight decay: bn-in-name (NVIDIA's: names containing \"bn\", which still "
             "decays the shortcut BatchNorm and the biases) or bn-and-bias (ours: every BatchNorm parameter and "
             "every bias)",
        opt_in="`--wd-exempt bn-and-bias`: no decay on the shortcut BN (`downsample.1`) and any bias either",
        ignored=lambda c: "with --bn-weight-decay" if c.bn_weight_decay else None)
    rmsprop_alpha: float = option(
        0.9, "--rmsprop-alpha", group="loss and optimizer", type=float, low=0.0, high=1.0,
        help="RMSprop smoothing constant", nvidia="default 0.9: RMSprop alpha",
        ignored=lambda c: "with --optimizer sgd" if c.optimizer != "rmsprop" else None)
    rmsprop_eps: float = option(
        1e-3, "--rmsprop-eps", group="loss and optimizer", type=float, low=0.0,
        help="RMSprop epsilon", nvidia="default 1e-3: RMSprop epsilon",
        ignored=lambda c: "with --optimizer sgd" if c.optimizer != "rmsprop" else None)
    nesterov: bool = option(
        False, "--nesterov", group="loss and optimizer", kind="flag",
        help="Nesterov momentum (SGD)", nvidia="off: Nesterov momentum (SGD only)",
        ignored=lambda c: "with --optimizer rmsprop (RMSprop has no Nesterov momentum)"
        if c.optimizer == "rmsprop" else None)
    grad_clip: float | None = option(
        None, "--grad-clip", group="loss and optimizer", type=float, low=0.0, low_open=True, none=True,
        metavar="NORM", nvidia_parser=None, help="clip the global gradient norm to NORM")
    use_ema: float | None = option(
        None, "--use-ema", group="loss and optimizer", type=float, low=0.0, high=1.0, low_open=True,
        high_open=True, none=True, metavar="DECAY",
        help="keep an EMA of the weights (decay min(DECAY, (1+t)/(10+t))) and validate it too",
        nvidia="default none; DECAY: EMA of the weights, updated after every batch (micro-batch under "
               "accumulation)")
    ema_update: str = option(
        "micro-batch", "--ema-update", group="loss and optimizer", choices=("micro-batch", "optimizer-step"),
        nvidia_parser=None,
        help="when the EMA moves: after every micro-batch (NVIDIA's, t counts micro-batches) or after every "
             "optimizer step (ours, t counts steps); the same without gradient accumulation",
        opt_in="`--ema-update optimizer-step`: the EMA averages each weight update once",
        ignored=lambda c: "without --use-ema" if c.use_ema is None else None)
    val_loss: str = option(
        "criterion", "--val-loss", group="loss and optimizer", choices=("criterion", "cross-entropy"),
        nvidia_parser=None,
        help="validation loss: criterion (NVIDIA's: the training loss, label smoothing included, plain "
             "cross-entropy under MixUp) or cross-entropy (ours: comparable across recipes)",
        opt_in="`--val-loss cross-entropy`")

    # ---- precision and speed -------------------------------------------------------------------------------
    amp: bool = option(
        False, "--amp", group="precision and speed", kind="flag",
        help="fp16 autocast with NVIDIA's dynamic loss scaler (same as --precision amp)",
        nvidia="off: FP32 math (TF32 convolutions on Ampere and newer); on: fp16 autocast + dynamic loss scaling")
    precision: str | None = option(
        None, "--precision", group="precision and speed", choices=PRECISIONS + ("auto",), none=True,
        nvidia_parser=None,
        help="ours: amp (fp16 + loss scaling), amp-bf16, tf32, fp32 (strict) or auto (amp on GPUs, fp32 on CPUs); "
             "default: --amp decides, else tf32 on GPUs and fp32 on CPUs as NVIDIA's",
        opt_in="`--precision auto` (in `--preset resnext`): AMP on GPUs without asking")
    memory_format: str = option(
        "nchw", "--memory-format", group="precision and speed", choices=MEMORY_FORMATS + ("auto",),
        help="nchw, nhwc (channels_last) or auto (ours: nhwc on GPUs, nchw on CPUs)",
        nvidia="default `nchw`; nchw or nhwc", opt_in="`--memory-format auto`")
    static_loss_scale: float = option(
        1.0, "--static-loss-scale", group="precision and speed", type=float, low=0.0, low_open=True,
        help="initial fp16 loss scale (NVIDIA's configs: 128)",
        nvidia="default 1: the initial scale of the dynamic fp16 loss scaler (x2 per 100 clean steps)",
        ignored=lambda c: "without fp16 AMP (--amp or --precision amp)"
        if not (c.amp or c.precision in ("amp", "auto")) else None)
    dynamic_loss_scale: bool = option(
        True, "--dynamic-loss-scale", group="precision and speed", kind="toggle", nvidia_parser=None,
        help="grow the fp16 loss scale x2 after 100 clean steps (--no-dynamic-loss-scale: static)",
        ignored=lambda c: "without fp16 AMP (--amp or --precision amp)"
        if not (c.amp or c.precision in ("amp", "auto")) else None)
    compile: bool = option(
        False, "--compile", group="precision and speed", kind="flag", nvidia_parser=None,
        help="torch.compile the whole training step: forward, loss, backward and optimizer update (resnext.step)")
    cuda_graphs: bool = option(
        False, "--cuda-graphs", group="precision and speed", kind="flag", nvidia_parser=None,
        help="capture the training step in a CUDA graph once and replay it (one CUDA GPU, SGD; resnext.step)")
    sync_bn: bool = option(
        False, "--sync-bn", group="precision and speed", kind="flag", nvidia_parser=None,
        help="BatchNorm statistics over all processes")
    deterministic: bool = option(
        False, "--deterministic", group="precision and speed", kind="flag", nvidia_parser=None,
        help="bit-reproducible kernels (slower)")
    device: str | None = option(
        None, "--device", group="precision and speed", type=str, none=True, nvidia_parser=None,
        help="cpu, cuda or cuda:N (default: cuda if available)")
    dist_backend: str | None = option(
        None, "--dist-backend", group="precision and speed", choices=("nccl", "gloo"), none=True,
        nvidia_parser=None, help="torchrun process group backend (default: nccl on GPUs, gloo on CPUs)")
    join_timeout: int = option(
        JOIN_TIMEOUT_S, "--join-timeout", group="precision and speed", type=int, low=1, metavar="SECONDS", nvidia_parser=None,
        help="seconds torchrun ranks wait for each other at start-up; then one line names the missing ranks "
             "(instead of waiting forever)")
    seed: int | None = option(
        None, "--seed", group="precision and speed", type=int, low=0, none=True,
        help="random seed; default: a random one, logged and kept in checkpoints so --resume repeats it",
        nvidia="default none (unseeded); N seeds torch, numpy and random with N + local rank",
        ours="one seed for all ranks (data shards and MixUp draws derive from it per rank); without --seed a "
             "drawn seed is logged and saved, so a resumed run continues the same streams")
    max_nonfinite_steps: int = option(
        20, "--max-nonfinite-steps", group="precision and speed", type=int, low=1, nvidia_parser=None,
        help="stop when the loss is NaN/inf for this many consecutive steps")

    # ---- checkpoints and logs ------------------------------------------------------------------------------
    workspace: str = option(
        "./", "--workspace", group="checkpoints and logs", type=str,
        help="folder for checkpoints and logs", nvidia="default `./`: folder for checkpoints and logs")
    resume: str | None = option(
        None, "--resume", group="checkpoints and logs", type=str, none=True, metavar="auto|PATH",
        help="continue from a checkpoint: ours or NVIDIA's; 'auto' takes the newest valid one in --workspace",
        nvidia="continue from a checkpoint of NVIDIA's (a missing file starts from scratch)",
        ours="also NVIDIA's checkpoints (model, momentum, EMA, epoch); `auto`; a missing file is an error")
    checkpoint_filename: str = option(
        "checkpoint.pth.tar", "--checkpoint-filename", group="checkpoints and logs", type=str,
        help="name of the always-newest checkpoint in the workspace",
        nvidia="default `checkpoint.pth.tar`: the newest checkpoint",
        ours="numbered checkpoints are `checkpoint-EPOCH-STEP.pt` (NVIDIA's `checkpoint_EPOCH.pth.tar`)")
    gather_checkpoints: int = option(
        0, "--gather-checkpoints", group="checkpoints and logs", type=int, low=0, special=(-1,),
        help="numbered checkpoints to keep besides the last and the best; 0: only the last and the best; -1: all",
        nvidia="default 0; documented as: N keeps the last N, 0 only the last and the best, -1 all (the code "
               "keeps all for 0 and one for -1)",
        ours="does what NVIDIA's help says")
    checkpoint_interval: int = option(
        0, "--checkpoint-interval", group="checkpoints and logs", type=int, low=0, metavar="STEPS",
        nvidia_parser=None,
        help="also checkpoint every STEPS optimizer steps inside an epoch (0: epoch ends only)")
    save_checkpoints: bool = option(
        True, "--no-checkpoints", group="checkpoints and logs", kind="negated",
        help="do not write checkpoints", nvidia="checkpoints at every epoch end unless --no-checkpoints")
    evaluate: bool = option(
        False, "--evaluate", group="checkpoints and logs", kind="flag",
        help="only validate the --resume / pretrained weights (without weights: the fresh model, for speed)",
        nvidia="validate only (the fresh model when no weights are given: benchmark_inference)",
        ours="validates once (NVIDIA's repeats once per remaining epoch; its configs pass --epochs 1), also on a "
             "finished checkpoint (NVIDIA's exits)")
    training_only: bool = option(
        False, "--training-only", group="checkpoints and logs", kind="flag",
        help="skip validation", nvidia="off: skip validation")
    print_freq: int = option(
        10, "-p", "--print-freq", group="checkpoints and logs", type=int, low=1,
        help="log every N optimizer steps", nvidia="default 10: log every N iterations (batches)",
        ours="counts optimizer steps: the same as NVIDIA's batches without gradient accumulation")
    raport_file: str = option(
        "experiment_raport.json", "--raport-file", group="checkpoints and logs", type=str,
        help="DLLogger JSON-lines file name", nvidia="default `experiment_raport.json`: DLLogger JSON file")
    topk: int = option(
        5, "--topk", group="checkpoints and logs", type=int, low=1,
        help="the K of top-K accuracy", nvidia="default 5: the K of top-K accuracy")
    tensorboard: bool | None = option(
        None, "--tensorboard", group="checkpoints and logs", kind="toggle", nvidia_parser=None,
        help="write TensorBoard events (default: when tensorboard is installed)")
    progress: bool | None = option(
        None, "--progress", group="checkpoints and logs", kind="toggle", nvidia_parser=None,
        help="live progress line (default: on terminals)")
    preset: str | None = option(
        None, "--preset", group="checkpoints and logs", type=str, none=True, nvidia_parser=None,
        help="start from a named preset (resnext, nvidia-90ep-amp, ...); explicit flags override it")

    # ---- derived values -------------------------------------------------------------------------------
    def accumulation_steps(self, world_size: int) -> int:
        """Batches per optimizer step: optimizer batch // (batch x processes), as NVIDIA's (at least 1)."""
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

    def training_precision(self, device_type: str) -> str | None:
        """The precision name training resolves (None: "auto", amp on GPUs and fp32 on CPUs)."""
        if self.amp:
            return "amp"
        if self.precision == "auto":
            return None
        if self.precision is not None:
            return self.precision
        return "tf32" if device_type == "cuda" else "fp32"

    def training_memory_format(self) -> str | None:
        """nchw / nhwc, or None for auto (nhwc on GPUs, nchw on CPUs)."""
        return None if self.memory_format == "auto" else self.memory_format

    def eval_crop_pct(self) -> float:
        """The eval crop fraction: --crop-pct, else NVIDIA's image size / (image size + 32) (224 -> 256 -> 224)."""
        return self.crop_pct if self.crop_pct is not None else self.image_size / (self.image_size + EVAL_PADDING)

    def steps_per_epoch(self, batches: int, accumulation: int) -> int:
        """Optimizer steps of one epoch of `batches` loader batches; --prof N keeps the first N batches."""
        if self.prof > 0:
            batches = min(batches, self.prof + (-self.prof) % accumulation)
        return batches // accumulation

    def synthetic_epoch(self) -> int:
        return self.synthetic_batches or (self.prof if self.prof > 0 else 100)

    def val_label_smoothing(self) -> float:
        """Label smoothing of the validation loss: NVIDIA's criterion has it, except under MixUp."""
        if self.val_loss == "cross-entropy" or self.mixup > 0:
            return 0.0
        return self.label_smoothing

    def checkpoints_to_keep(self) -> int:
        """Numbered checkpoints kept in the workspace (-1: all). The newest is the last one (same file)."""
        return -1 if self.gather_checkpoints < 0 else max(1, self.gather_checkpoints)

    def model_options(self) -> dict:
        """create_model keyword arguments of the model flags."""
        return dict(conv_init=self.conv_init, last_bn_0_init=self.last_bn_0_init, se_linear=not self.trt,
                    fused_se=self.fused_se)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- validation -----------------------------------------------------------------------------------
    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Raise a UserError naming the first impossible setting; warn (one line each) about ignored options.

        Returns self for chaining.
        """
        problems = check_values(self)
        if problems:
            raise UserError(problems[0] + ".")

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise UserError(message)

        require(self.data is not None or self.data_backend == "synthetic",
                "a dataset folder is required (or --data-backend synthetic).")
        require(not (self.evaluate and self.training_only), "--evaluate and --training-only exclude each other.")
        require(not (self.pretrained and self.pretrained_from_file),
                "--pretrained and --pretrained-from-file exclude each other; pass one of them.")
        require(not (self.amp and self.precision not in (None, "amp")),
                f"--amp conflicts with --precision {self.precision}; pass only one of them.")
        require(not (self.jit == "script" and self.compile),
                "--jit script and --compile are two compilers; pass one of them.")
        require(self.interpolation != "triangular" or str(self.data_backend or "dali-cpu").startswith("dali"),
                f"--interpolation triangular exists in DALI only; use --data-backend dali-cpu or dali-gpu, or "
                f"bilinear / bicubic with --data-backend {self.data_backend}.")
        if self.optimizer_batch_size > 0:
            per_step = self.batch_size * world_size
            require(self.optimizer_batch_size >= per_step,
                    f"--optimizer-batch-size {self.optimizer_batch_size} is smaller than one batch of all processes "
                    f"(--batch-size x processes = {self.batch_size} x {world_size} = {per_step}); raise it or "
                    "lower --batch-size.")
            if self.optimizer_batch_size % per_step:
                notices.warning(f"warning: --optimizer-batch-size {self.optimizer_batch_size} is not a multiple of "
                                f"--batch-size x processes ({per_step}); each step accumulates "
                                f"{self.accumulation_steps(world_size)} batches "
                                f"({self.global_batch(world_size)} images), as NVIDIA's does.")
        for line in ignored_options(self, preset(self.preset) if self.preset in PRESET_NAMES else {}):
            notices.warning(line)
        return self


# ---- presets ------------------------------------------------------------------------------------------------

# Ours: the ResNeXt101-32x4d recipe's numbers (SPEC.md section 2) with every improvement we make over NVIDIA's
# code switched on. `resnext demo` and the examples use it.
RESNEXT_PRESET: dict = dict(
    arch="resnext101_32x4d", lr=None, lr_schedule="cosine", warmup=None, label_smoothing=0.1, momentum=0.875,
    weight_decay=1.0 / 16384, static_loss_scale=128.0, data_backend="pytorch", precision="auto",
    memory_format="auto", crop_pct=0.875, lr_granularity="step", wd_exempt="bn-and-bias",
    ema_update="optimizer-step", val_loss="cross-entropy", dali_ops="resnext", jpeg_decode="scaled", seed=0)


def _nvidia_preset(precision: str, epochs: int) -> dict:
    """resnext101-32x4d's configs.yml convergence values (DGXA100 for AMP/TF32, DGX1V for FP32), NVIDIA's
    90-epoch scripts' `--epochs 90 --mixup 0.0`; without the platform's workers / affinity."""
    from .nvidia import expand

    platform = "DGX1V" if precision == "FP32" else "DGXA100"
    values = expand("resnext101-32x4d", precision, "convergence", platform)
    for key in ("workers", "prefetch", "gpu_affinity", "num_classes", "print_freq", "evaluate", "training_only",
                "save_checkpoints"):
        values.pop(key, None)
    if precision == "FP32":
        values["precision"] = "fp32"  # NVIDIA's FP32 numbers are V100's: strict fp32 (TF32 is --precision tf32)
    if epochs == 90:
        values.update(epochs=90, mixup=0.0)
    return values


PRESET_NAMES = ("resnext", "nvidia-90ep-amp", "nvidia-90ep-tf32", "nvidia-90ep-fp32", "nvidia-250ep-amp",
                "nvidia-250ep-tf32", "nvidia-250ep-fp32")


def preset(name: str) -> dict:
    """The settings of a named preset; explicit command-line flags override them."""
    if name == "resnext":
        return dict(RESNEXT_PRESET)
    if name not in PRESET_NAMES:
        raise UserError(f"unknown preset '{name}'; available: {', '.join(PRESET_NAMES)}.")
    _, epochs, precision = name.split("-")
    return _nvidia_preset(precision.upper(), int(epochs.removesuffix("ep")))


PRESETS: dict[str, dict] = {name: preset(name) for name in PRESET_NAMES}
