"""Measure a model on a validation folder: top-1, top-5, loss, img/s and per-batch latency (mean, 90/95/99th
percentiles and maximum: the columns of NVIDIA's inference tables), optionally per class.

DATA is a folder of class sub-folders, or a dataset root holding val/. Each class folder is scored against the
weights' class of the same name (a subset of the classes is fine; a folder the weights do not know is refused,
or mapped with --class-map). Preprocessing is NVIDIA's eval path (shorter side to image size + 32 at 224, center
crop) with the values stored with the weights; override them for weights trained otherwise (timm's gluon weights:
--interpolation bicubic).

  resnext evaluate /data/imagenet/val --weights runs/rx101/model_best.pth.tar
  resnext evaluate /data/imagenet --weights pretrained:timm-gluon --precision amp --cuda-graphs --json
  resnext evaluate val/ --weights checkpoint.pth.tar --ema --per-class --report eval-report/
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..recipe import DATA_BACKENDS, PRECISIONS
from .options import (add_class_map_argument, add_exif_argument, add_preprocessing_arguments, add_weights_arguments,
                      non_negative_int, positive_int)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="validation folder (class sub-folders) or dataset root")
    add_weights_arguments(parser)
    add_preprocessing_arguments(parser)
    add_exif_argument(parser, default=None)
    add_class_map_argument(parser)
    run = parser.add_argument_group("execution")
    run.add_argument("-b", "--batch-size", type=positive_int, default=256, help="images per batch")
    run.add_argument("-j", "--workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                     help="data loading processes")
    run.add_argument("--data-backend", choices=[b for b in DATA_BACKENDS if b != "synthetic"], default="pytorch")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    run.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="amp (fp16 autocast), amp-bf16, tf32 or fp32 (default: amp on GPUs, fp32 on CPU)")
    run.add_argument("--memory-format", choices=["nchw", "nhwc"], default=None,
                     help="default: nhwc (channels_last) on GPUs, nchw on CPU")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (compiled before timing)")
    run.add_argument("--cuda-graphs", action="store_true",
                     help="replay the model from CUDA graphs (lowest latency at small batches; CUDA only)")
    out = parser.add_argument_group("output")
    out.add_argument("--per-class", action="store_true", help="also print top-1 per class, weakest first")
    out.add_argument("--json", action="store_true", help="print the evaluation JSON instead of the summary")
    out.add_argument("--output-json", type=Path, default=None, metavar="PATH", help="also write the JSON to PATH")
    out.add_argument("--report", type=Path, default=None, metavar="DIR",
                     help="write an HTML report with per-class figures into DIR (needs resnext[report])")


def run(args: argparse.Namespace) -> int:
    from ..inference import evaluate_weights

    result = evaluate_weights(
        args.data, args.weights, use_ema=args.ema, arch=args.arch, batch_size=args.batch_size, workers=args.workers,
        backend=args.data_backend, device=args.device, precision=args.precision, memory_format=args.memory_format,
        compile=args.compile, cuda_graphs=args.cuda_graphs, image_size=args.image_size, crop_pct=args.crop_pct,
        interpolation=args.interpolation, class_map=args.class_map, exif_orientation=args.exif_orientation)
    text = json.dumps(result, indent=1)
    if args.output_json is not None:
        from ..report.evaluation import write_evaluation

        write_evaluation(result, args.output_json)
    if args.report is not None:
        from ..report import write_evaluation_report

        write_evaluation_report(result, args.report)
    print(text if args.json else format_evaluation(result, per_class=args.per_class))
    return 0


def format_evaluation(result: dict, per_class: bool = False) -> str:
    """The evaluation as a few human-readable lines (NVIDIA's inference table columns)."""
    latency = result["latency_ms"]
    lines = [
        f"{result['arch']}  {result['weights']}{'  (EMA)' if result['ema'] else ''}",
        f"{result['images']} images of {result['data']}  {result['precision']} on {result['device']}, "
        f"batch {result['batch_size']}",
        f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}",
        f"throughput {result['img_s']:.1f} img/s (model), {result['img_s_total']:.1f} img/s (with data loading)",
        "latency per batch (ms): " + "  ".join(f"{name} {value:.2f}" for name, value in latency.items()),
    ]
    evaluated, known = len(result["per_class"]), len(result["class_names"])
    if evaluated < known:
        lines.append(f"{evaluated} of the weights' {known} classes evaluated, each class folder against its class "
                     f"(matched by {result.get('classes_matched_by', 'name')})")
    if result["skipped"]:
        lines.append(f"{len(result['skipped'])} unreadable files left out (see the warnings above)")
    if per_class:
        width = max(display_width(item["name"]) for item in result["per_class"])
        lines.append(f"{pad('class', width)}  images   top-1")
        for item in sorted(result["per_class"], key=lambda item: (item["top1"], item["name"])):
            lines.append(f"{pad(item['name'], width)}  {item['images']:>6}  {item['top1']:6.2f}%")
    return "\n".join(lines)


def display_width(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide and full-width characters take two, combining marks none."""
    import unicodedata

    return sum(0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
               for char in text)


def pad(text: str, width: int) -> str:
    """`text` left-aligned in `width` terminal columns (str.ljust counts characters, not columns)."""
    return text + " " * max(0, width - display_width(text))
