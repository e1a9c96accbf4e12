"""Measure training, inference or data-loading speed: img/s (median of timed windows after warm-up, device
synchronized), step time, peak device memory and model-FLOPs utilization against a matrix-multiply peak measured
in the same process. --mode train times resnext's own training loop (resnext train with --prof).

  resnext benchmark --mode train -b 256 --compare timm                 # synthetic data, AMP, channels_last
  resnext benchmark --mode train -b 256 --compile                      # the whole training step compiled
  resnext benchmark --mode train -b 256 --cuda-graphs                  # the training step replayed as a CUDA graph
  resnext benchmark --mode train --data /data/imagenet --data-backend gpu      # end to end on JPEG files
  resnext benchmark --mode infer -b 256 --compile --compare timm
  resnext benchmark --mode infer -b 1 --cuda-graphs --fold-bn --steps 500 --window 50    # batch-1 latency
  resnext benchmark --data-only /data/imagenet --data-backend pytorch,gpu      # loaders alone
  resnext benchmark --data-only /data/imagenet -j 2 -b 32 --compare torchvision  # ours / torchvision's pipeline
  resnext benchmark --mode train --device cpu -a resnext_tiny -b 4 --image-size 64 --steps 4 --window 2

docs/performance.md explains every field of the output.
"""
from __future__ import annotations

import argparse
import json

from ..recipe import MEMORY_FORMATS, PRECISIONS
from .options import name_list, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--mode", choices=("train", "infer", "data"), default=None,
        help="what to time (default: train, or data with --data-only)")
    add("--data-only", metavar="DIR", default=None, help="time the data loaders on DIR alone (same as --mode data)")
    add("-a", "--arch", default="resnext101_32x4d")
    add("-b", "--batch-size", type=positive_int, default=256, help="images per step")
    add("--image-size", type=positive_int, default=224)
    add("--num-classes", type=positive_int, default=None,
        help="classifier outputs (default: 1000, or the class folders of --data)")
    add("--precision", choices=PRECISIONS, default=None,
        help="amp (fp16), amp-bf16, tf32 or fp32 (default: amp on GPUs, fp32 on CPU)")
    add("--memory-format", choices=MEMORY_FORMATS, default=None, help="default: nhwc on GPUs, nchw on CPU")
    add("--compile", action="store_true",
        help="train: torch.compile the whole training step (as resnext train --compile); infer: the model")
    add("--cuda-graphs", action="store_true",
        help="train: replay the training step from a CUDA graph (as resnext train --cuda-graphs); infer: the forward "
             "(with --compile: torch.compile's reduce-overhead mode)")
    add("--fold-bn", action="store_true",
        help="infer: fold each BatchNorm into its convolution first (as resnext export --fold-bn does)")
    add("--data", metavar="DIR", default=None,
        help="train: a dataset folder (train/ and val/) to train on end to end instead of synthetic data")
    add("--data-backend", type=name_list, default=None,
        help="train: the backend (default synthetic, or pytorch with --data); data mode: comma-separated "
             "backends to time (default pytorch), also pytorch-full (JPEGs decoded at full size) and gpu-per-sample "
             "(the gpu backend's per-sample crop/resize)")
    add("-j", "--workers", type=non_negative_int, default=5, help="data loading processes")
    add("--warmup", type=non_negative_int, default=20, help="untimed steps first (compilation, autotuning)")
    add("--steps", type=positive_int, default=50, help="timed steps (batches in data mode)")
    add("--window", type=positive_int, default=10, help="steps per timed window; img/s is the windows' median")
    add("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add("--compare", choices=("timm", "torchvision"), default=None,
        help="also time that library's build of the same architecture, same settings, same process; data mode: "
             "torchvision times the plain torchvision training pipeline in turns with ours")
    add("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from ..errors import UserError

    mode = args.mode or ("data" if args.data_only else "train")
    if args.data_only and mode != "data":
        raise UserError(f"--data-only times the loaders; it cannot be combined with --mode {mode}.")
    if args.data_only and args.data and args.data_only != args.data:
        raise UserError("give the folder once: --data-only DIR (or --mode data --data DIR).")
    if mode != "infer" and args.fold_bn:
        raise UserError("--fold-bn applies to --mode infer (training needs the BatchNorm layers).")
    common = dict(batch_size=args.batch_size, image_size=args.image_size, device=args.device, warmup=args.warmup,
                  steps=args.steps, window=args.window)
    if mode == "data":
        folder = args.data_only or args.data
        if folder is None:
            raise UserError("--mode data needs a folder: --data-only DIR.")
        if args.compile or args.cuda_graphs:
            raise UserError("--compile and --cuda-graphs apply to --mode train and infer, not to the data loaders.")
        result = bench.benchmark_data(folder, args.data_backend or ("pytorch",), workers=args.workers,
                                      compare=args.compare, **common)
    else:
        model = dict(arch=args.arch, num_classes=args.num_classes, precision=args.precision,
                     memory_format=args.memory_format, compile=args.compile, cuda_graphs=args.cuda_graphs,
                     compare=args.compare)
        if mode == "train":
            backends = args.data_backend or (("pytorch",) if args.data else ("synthetic",))
            if len(backends) != 1:
                raise UserError("--mode train reads with one --data-backend; time several with --data-only.")
            result = bench.benchmark_training(data=args.data, data_backend=backends[0], workers=args.workers,
                                              **model, **common)
        else:
            if args.data or args.data_backend:
                raise UserError("--mode infer times the model on synthetic input; --data and --data-backend belong "
                                "to --mode train and data.")
            result = bench.benchmark_inference(fold_bn=args.fold_bn, **model, **common)
    print(json.dumps(result, indent=1) if args.json else bench.format_result(result))
    return 0
