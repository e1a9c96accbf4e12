"""Show an architecture's size and cost: parameters, GMACs/GFLOPs at an image size, activations, per-stage table.

  resnext info --arch resnext101_32x4d
  resnext info --arch resnet50 --image-size 160 --json
"""
from __future__ import annotations

import argparse
import json

from .options import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", "-a", default="resnext101_32x4d",
                        help="architecture (--list shows them; NVIDIA spellings accepted)")
    parser.add_argument("--image-size", type=positive_int, default=224, help="square input size in pixels")
    parser.add_argument("--num-classes", "--num_classes", type=positive_int, default=1000, help="classifier outputs")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--list", action="store_true", help="list the architectures and exit")


def run(args: argparse.Namespace) -> int:
    from ..summary import format_summary, model_summary

    if args.list:
        from ..models import ARCHS

        for name, spec in ARCHS.items():
            print(f"{name:<22} {spec.description}")
        return 0
    summary = model_summary(args.arch, image_size=args.image_size, num_classes=args.num_classes)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0
