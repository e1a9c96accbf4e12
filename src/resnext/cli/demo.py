"""Run the main job on the embedded dataset: train, evaluate, checkpoint, report, in a few minutes on a CPU.

  resnext demo                        # writes ./resnext-demo/
  resnext demo --workspace /tmp/demo --epochs 3
"""
from __future__ import annotations

import argparse

from .options import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default="resnext-demo", help="folder for the checkpoint, log and report")
    parser.add_argument("--epochs", type=positive_int, default=None, help="default: 15 on CPU, 10 on GPU")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML report")


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.workspace, device=args.device, epochs=args.epochs, report=args.report)
    print(f"\n{result['arch']}, {result['epochs']} epochs on the embedded Fashion-MNIST subset "
          f"({result['train_seconds']:.0f} s of training)")
    print(f"best checkpoint (epoch {result['best_epoch'] + 1}): top-1 {result['top1']:.2f}%, top-5 "
          f"{result['top5']:.2f}% on 1,000 held-out images, {result['eval_img_s']:.0f} img/s")
    print(f"checkpoint: {result['checkpoint']}")
    if result.get("report"):
        print(f"report:     {result['report']}")
    return 0
