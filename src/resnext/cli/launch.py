"""NVIDIA's launch.py: expand --model, --precision, --mode and --platform from configs.yml, then train.

The values of the four sections merge as launch.py merges them (precision, platform, model, mode; later ones win),
and every other argument is handed to `resnext train`, where it overrides them. The expanded command is printed,
then run: in this process, or under torchrun with multiproc.py's --nproc_per_node / --nnodes / --node_rank /
--master_addr / --master_port. --cfg_file reads NVIDIA's own configs.yml (or a JSON file) instead of ours.

  resnext launch --model resnext101-32x4d --precision AMP --mode convergence --platform DGXA100 /imagenet \\
      --epochs 90 --mixup 0.0 --workspace runs --raport-file raport.json
  resnext launch --nproc_per_node 8 --model resnext101-32x4d --precision TF32 --mode benchmark_training \\
      --platform DGXA100 /imagenet --raport-file benchmark.json --epochs 1 --prof 100
  resnext launch --dry-run --model se-resnext101-32x4d --precision AMP --mode evaluate --platform DGX1V /imagenet
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from .options import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg = parser.add_argument_group("launch.py")
    cfg.add_argument("--cfg_file", default=None, metavar="FILE",
                     help="configs file (NVIDIA's configs.yml or JSON); default: the values resnext ships")
    cfg.add_argument("--model", required=True, help="resnet50, resnext101-32x4d or se-resnext101-32x4d")
    cfg.add_argument("--precision", required=True, help="AMP, TF32 or FP32")
    cfg.add_argument("--mode", required=True,
                     help="convergence, benchmark_training, benchmark_training_short, benchmark_inference, evaluate")
    cfg.add_argument("--platform", required=True, help="DGX1V, DGX1V-16G, DGX1V-32G, DGX2V, DGXA100 or T4")
    procs = parser.add_argument_group("multiproc.py (through torchrun)")
    procs.add_argument("--nproc_per_node", type=positive_int, default=1, help="processes (GPUs) per node")
    procs.add_argument("--nnodes", type=positive_int, default=1)
    procs.add_argument("--node_rank", type=int, default=0)
    procs.add_argument("--master_addr", default="127.0.0.1")
    procs.add_argument("--master_port", type=positive_int, default=29500)
    parser.add_argument("--dry-run", action="store_true", help="print the expanded command and stop")
    parser.set_defaults(_pass_through=True)


def command(args: argparse.Namespace) -> list[str]:
    """The expanded command line: `resnext train ...` or torchrun ... -m resnext train ...`."""
    from ..nvidia import expand, train_argv

    values = expand(args.model, args.precision, args.mode, args.platform, args.cfg_file)
    train = ["train", *train_argv(values), *getattr(args, "rest", [])]
    if args.nproc_per_node == 1 and args.nnodes == 1:
        return ["resnext", *train]
    return ["torchrun", f"--nproc_per_node={args.nproc_per_node}", f"--nnodes={args.nnodes}",
            f"--node_rank={args.node_rank}", f"--master_addr={args.master_addr}",
            f"--master_port={args.master_port}", "-m", "resnext", *train]


def run(args: argparse.Namespace) -> int:
    argv = command(args)
    print(shlex.join(argv), flush=True)
    if args.dry_run:
        return 0
    if argv[0] == "resnext":
        from . import main

        return main(argv[1:])
    # torchrun as a module of this interpreter: the same environment as this `resnext`.
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", *argv[1:]])
