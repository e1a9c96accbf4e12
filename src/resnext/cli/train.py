"""Train a model with NVIDIA's ResNeXt101-32x4d recipe (SGD 0.875, LR 0.256 per 256 images, cosine + warmup,
label smoothing 0.1, WD 1/16384 off BN and biases), on one process or under torchrun.

DATA holds train/ and val/ folders of class sub-folders. NVIDIA main.py flags keep their names and meaning.

  resnext train /data/imagenet --preset nvidia-90ep-amp --workspace runs/rx101
  torchrun --nproc_per_node 8 -m resnext train /data/imagenet --preset nvidia-250ep-amp --workspace runs/rx101
  resnext train /data/imagenet --workspace runs/rx101 --resume auto        # continue after preemption
"""
from __future__ import annotations

import argparse

from ..recipe import DATA_BACKENDS, INTERPOLATIONS, LR_SCHEDULES, OPTIMIZERS, PRECISIONS, PRESETS, TrainConfig
from .options import (add_class_map_argument, add_exif_argument, finite_float, non_negative_float, non_negative_int,
                      positive_int, unit_interval)


def _ema_decay(text: str) -> float:
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a decay between 0 and 1 (e.g. 0.9999), got {value}")
    return value


def _gather(text: str) -> int:
    value = int(finite_float(text))
    if value < -1:
        raise argparse.ArgumentTypeError("expected -1 (keep all), 0 or a positive count")
    return value


def _positive_or_off(text: str) -> int:
    """NVIDIA's convention: -1 means off."""
    value = int(finite_float(text))
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"expected a positive number or -1 (off), got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("data", nargs="?", metavar="DATA", help="dataset root with train/ and val/ (not needed for synthetic)")
    add("--preset", choices=sorted(PRESETS), help="start from one of NVIDIA's configs; explicit flags override it")
    data = parser.add_argument_group("data")
    data.add_argument("--data-backend", default="pytorch", choices=DATA_BACKENDS)
    data.add_argument("-j", "--workers", type=non_negative_int, default=5, help="data loading processes per GPU")
    data.add_argument("--prefetch", type=positive_int, default=2, help="batches prefetched by each worker")
    data.add_argument("--image-size", type=positive_int, default=224)
    data.add_argument("--crop-pct", type=unit_interval, default=0.875,
                      help="validation center-crop fraction (0.875: resize to 256, crop 224)")
    data.add_argument("--interpolation", default="bilinear", choices=INTERPOLATIONS)
    data.add_argument("--augmentation", choices=["autoaugment"], default=None)
    data.add_argument("--synthetic-batches", type=positive_int, default=100,
                      help="batches per epoch of the synthetic backend")
    add_exif_argument(data, default=False)
    add_class_map_argument(data)
    model = parser.add_argument_group("model")
    model.add_argument("-a", "--arch", default="resnext101_32x4d")
    model.add_argument("--num_classes", "--num-classes", dest="num_classes", type=positive_int, default=None,
                       help="classifier outputs (default: the number of class folders; 1000 for synthetic)")
    model.add_argument("--conv_init", "--conv-init", dest="conv_init", choices=["fan_in", "fan_out"],
                       default="fan_in")
    model.add_argument("--last_bn_0_init", "--last-bn-0-init", dest="last_bn_0_init", action="store_true",
                       help="zero-init the last BN of each residual block")
    model.add_argument("--pretrained-from-file", metavar="FILE", default=None,
                       help="start from these weights (any layout resnext.load_weights reads)")
    model.add_argument("--ignore-head", action="store_true",
                       help="with --pretrained-from-file: keep a fresh classifier when the class count differs")
    schedule = parser.add_argument_group("schedule")
    schedule.add_argument("--epochs", type=positive_int, default=90)
    schedule.add_argument("--run-epochs", type=_positive_or_off, default=-1,
                          help="stop after N epochs of this invocation (chained jobs); -1: run to --epochs")
    schedule.add_argument("--early-stopping-patience", type=_positive_or_off, default=-1,
                          help="stop after N epochs without a better top-1; -1: off")
    schedule.add_argument("--prof", type=_positive_or_off, default=-1,
                          help="stop after N optimizer steps of this invocation and save (benchmarks, profiling); "
                               "an epoch that ends first validates on at most N batches")
    schedule.add_argument("-b", "--batch-size", type=positive_int, default=256, help="images per GPU/process")
    schedule.add_argument("--optimizer-batch-size", type=_positive_or_off, default=-1,
                          help="images per optimizer step over all processes (gradient accumulation); -1: no "
                               "accumulation")
    schedule.add_argument("--lr", "--learning-rate", type=finite_float, default=None,
                          help="peak LR (default: 0.256 x optimizer batch / 256)")
    schedule.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    schedule.add_argument("--end-lr", type=non_negative_float, default=0.0)
    schedule.add_argument("--warmup", type=non_negative_int, default=None,
                          help="warmup epochs, linear per step (default: min(8, epochs // 10))")
    loss = parser.add_argument_group("loss and optimizer")
    loss.add_argument("--label-smoothing", type=unit_interval, default=0.1)
    loss.add_argument("--mixup", type=non_negative_float, default=0.0, metavar="ALPHA", help="MixUp alpha; 0: off")
    loss.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    loss.add_argument("--momentum", type=unit_interval, default=0.875)
    loss.add_argument("--weight-decay", "--wd", type=non_negative_float, default=1.0 / 16384)
    loss.add_argument("--bn-weight-decay", action="store_true", help="also decay BN parameters and biases")
    loss.add_argument("--rmsprop-alpha", type=unit_interval, default=0.9)
    loss.add_argument("--rmsprop-eps", type=non_negative_float, default=1e-3)
    loss.add_argument("--nesterov", action="store_true")
    loss.add_argument("--grad-clip", type=finite_float, default=None, metavar="NORM",
                      help="clip the global gradient norm to NORM")
    loss.add_argument("--use-ema", type=_ema_decay, default=None, metavar="DECAY",
                      help="keep an EMA of the weights and validate it too")
    speed = parser.add_argument_group("precision and speed")
    speed.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="amp (fp16 + loss scaling), amp-bf16, tf32 or fp32 (default: amp on GPUs, fp32 on CPU)")
    speed.add_argument("--amp", action="store_true", help="same as --precision amp (NVIDIA's flag)")
    speed.add_argument("--memory-format", choices=["nchw", "nhwc"], default=None,
                       help="default: nhwc (channels_last) on GPUs, nchw on CPU")
    speed.add_argument("--static-loss-scale", type=finite_float, default=128.0,
                       help="initial fp16 loss scale")
    speed.add_argument("--dynamic-loss-scale", action=argparse.BooleanOptionalAction, default=True,
                       help="grow the fp16 loss scale x2 after 100 clean steps (--no-dynamic-loss-scale: static)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all processes")
    speed.add_argument("--deterministic", action="store_true", help="bit-reproducible kernels (slower)")
    speed.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    speed.add_argument("--dist-backend", choices=["nccl", "gloo"], default=None,
                       help="torchrun process group backend (default: nccl on GPUs, gloo on CPUs)")
    speed.add_argument("--seed", type=non_negative_int, default=0)
    speed.add_argument("--max-nonfinite-steps", type=positive_int, default=20,
                       help="stop when the loss is NaN/inf for this many consecutive steps")
    out = parser.add_argument_group("checkpoints and logs")
    out.add_argument("--workspace", default="./", help="folder for checkpoints and logs")
    out.add_argument("--resume", default=None, metavar="auto|PATH",
                     help="continue from a checkpoint; 'auto' takes the newest valid one in --workspace")
    out.add_argument("--checkpoint-filename", default="checkpoint.pth.tar",
                     help="name of the always-newest checkpoint in the workspace")
    out.add_argument("--gather-checkpoints", type=_gather, default=0,
                     help="numbered checkpoints to keep (at least 2; -1: all)")
    out.add_argument("--checkpoint-interval", type=non_negative_int, default=0, metavar="STEPS",
                     help="also checkpoint every STEPS optimizer steps inside an epoch (0: epoch ends only)")
    out.add_argument("--no-checkpoints", dest="save_checkpoints", action="store_false")
    out.add_argument("--evaluate", action="store_true", help="only evaluate the --resume / pretrained weights")
    out.add_argument("--training-only", action="store_true", help="skip validation")
    out.add_argument("-p", "--print-freq", type=positive_int, default=10, help="log every N optimizer steps")
    out.add_argument("--raport-file", default="experiment_raport.json", help="DLLogger JSON-lines file name")
    out.add_argument("--topk", type=positive_int, default=5)
    out.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                     help="write TensorBoard events (default: when tensorboard is installed)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="live progress line (default: on terminals)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig these arguments describe (the preset is applied by `run` before parsing finishes)."""
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if args.amp:
        if args.precision not in (None, "amp"):
            from ..errors import UserError

            raise UserError(f"--amp conflicts with --precision {args.precision}; pass only one of them.")
        values["precision"] = "amp"
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from ..engine import train

    train(config_from_args(args))
    return 0


def prepare(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Make a --preset's values the defaults of `parser`, so flags given explicitly still win."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--preset")
    known, _ = probe.parse_known_args(argv)
    if known.preset in PRESETS:
        parser.set_defaults(**PRESETS[known.preset])
