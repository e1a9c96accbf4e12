"""Classify image files: the top-k class names and probabilities of each image.

PATH is an image file, a folder (searched recursively) or a glob pattern (quote it). Class names are the ones the
weights carry (a model trained on your dataset knows its class folders); a 1,000-class model without names gets
ImageNet's. A file that cannot be read is reported on stderr and in the output, and the others go on; the exit
status is then 1.

  resnext predict cat.jpg --weights pretrained:nvidia-ngc
  resnext predict photos/ "shots/*.png" --weights runs/rx101/model_best.pth.tar --topk 3 --csv > predictions.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from ..recipe import PRECISIONS
from .options import (add_class_names_argument, add_exif_argument, add_preprocessing_arguments, add_weights_arguments,
                      non_negative_int, positive_int)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    add_weights_arguments(parser)
    add_preprocessing_arguments(parser)
    add_exif_argument(parser, default=True)
    add_class_names_argument(parser)
    parser.add_argument("--topk", type=positive_int, default=5, help="classes per image")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=32, help="images per forward pass")
    parser.add_argument("-j", "--workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                        help="threads decoding images")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="amp, amp-bf16, tf32 or fp32 (default: amp on GPUs, fp32 on CPU)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    output.add_argument("--csv", action="store_true", help="CSV: path, rank, class, index, probability, error")


def run(args: argparse.Namespace) -> int:
    from ..prediction import Predictor, find_images

    paths = find_images(args.paths)
    predictor = Predictor.from_weights(args.weights, use_ema=args.ema, arch=args.arch, device=args.device,
                                       precision=args.precision, image_size=args.image_size,
                                       crop_pct=args.crop_pct, interpolation=args.interpolation,
                                       exif_orientation=args.exif_orientation, class_names=args.class_names)
    predictions = predictor.predict_files(paths, topk=args.topk, batch_size=args.batch_size,
                                          workers=max(1, args.workers))
    writer = csv.writer(sys.stdout) if args.csv else None
    if writer is not None:
        writer.writerow(["path", "rank", "class", "index", "probability", "error"])
    failed = 0
    for prediction in predictions:
        failed += prediction.error is not None
        if args.json:
            print(json.dumps(prediction.to_dict()), flush=True)
        elif writer is not None:
            if prediction.error is not None:
                writer.writerow([prediction.path, "", "", "", "", prediction.error])
            for rank, (name, index, probability) in enumerate(
                    zip(prediction.classes, prediction.indices, prediction.probabilities), start=1):
                writer.writerow([prediction.path, rank, name, index, f"{probability:.6f}", ""])
        elif prediction.error is not None:
            print(f"{prediction.path}: cannot read ({prediction.error})", flush=True)
        else:
            best = ", ".join(f"{name} {100 * probability:.1f}%"
                             for name, probability in zip(prediction.classes, prediction.probabilities))
            print(f"{prediction.path}: {best}", flush=True)
    if failed:
        print(f"resnext predict: {failed} of {len(paths)} files could not be read", file=sys.stderr)
    return 1 if failed else 0
