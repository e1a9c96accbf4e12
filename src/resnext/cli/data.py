"""Datasets: check a folder, write the embedded dataset, build an ImageNet-like benchmark folder, compare backends.

  resnext data check DIR [--json]            class counts, unreadable files, sizes/formats/modes
                                             (DIR: a dataset root with train/ and val/, or one split folder;
                                             exit status 1 when some image cannot be read)
  resnext data embedded [DEST]               write the bundled Fashion-MNIST slice, print its folder
  resnext data make-imagenet-like DIR        ~500x375, ~110 KB JPEGs for `resnext benchmark --data-only`
  resnext data compare DIR                   pixel differences between data backends on the same images
"""
from __future__ import annotations

import argparse
import json

from ..recipe import INTERPOLATIONS
from .options import name_list, non_negative_int, positive_int, unit_interval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser("check", help="decode every image; counts, unreadable files, statistics")
    check.add_argument("dir", help="dataset root (train/ and val/) or one split folder of class folders")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("-j", "--workers", type=non_negative_int, default=2, help="decoding processes")

    embedded = sub.add_parser("embedded", help="write the bundled Fashion-MNIST slice and print its folder")
    embedded.add_argument("dest", nargs="?", help="folder to create (default: $RESNEXT_HOME or ~/.cache/resnext)")

    imagenet = sub.add_parser("make-imagenet-like", help="ImageNet-like JPEG folder for loader benchmarks")
    imagenet.add_argument("dir", help="folder to create (new or empty)")
    imagenet.add_argument("--classes", type=positive_int, default=10)
    imagenet.add_argument("--per-class", type=positive_int, default=100, help="train images per class")
    imagenet.add_argument("--val-per-class", type=positive_int, default=10, help="val images per class")
    imagenet.add_argument("--seed", type=non_negative_int, default=0)

    compare = sub.add_parser("compare", help="pixel differences between backends on the same images")
    compare.add_argument("dir", help="dataset root or split folder")
    compare.add_argument("--backends", type=name_list, default=("pytorch", "gpu", "dali-cpu"),
                         help="comma-separated, the first is the reference (default: pytorch,gpu,dali-cpu)")
    compare.add_argument("--train", action="store_true",
                         help="compare training batches (same crops: pytorch and gpu only) instead of eval batches")
    compare.add_argument("--image-size", type=positive_int, default=224)
    compare.add_argument("--crop-pct", type=unit_interval, default=0.875)
    compare.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear")
    compare.add_argument("-b", "--batch-size", type=positive_int, default=64)
    compare.add_argument("-j", "--workers", type=non_negative_int, default=2)
    compare.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    compare.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        from ..data.check import check_dataset, format_report

        report = check_dataset(args.dir, workers=args.workers)
        print(json.dumps(report, indent=1) if args.json else format_report(report))
        return 1 if report["unreadable"] else 0
    if args.data_command == "embedded":
        from ..data.embedded import materialize

        print(materialize(args.dest))
        return 0
    if args.data_command == "make-imagenet-like":
        from ..data.imagenet_like import make_imagenet_like

        print(make_imagenet_like(args.dir, classes=args.classes, per_class=args.per_class,
                                 val_per_class=args.val_per_class, seed=args.seed))
        return 0
    from ..data.bench import compare_backends

    result = compare_backends(args.dir, args.backends, train=args.train, image_size=args.image_size,
                              crop_pct=args.crop_pct, interpolation=args.interpolation, batch_size=args.batch_size,
                              workers=args.workers, device=args.device)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, diff in result["backends"].items():
            print(f"{name} vs {result['reference']} ({'train' if args.train else 'eval'}, {diff['images']} images): "
                  f"mean |difference| {diff['mean_abs_diff']:.3f}, max {diff['max_abs_diff']:.0f} (0-255 pixel levels)")
    return 0
