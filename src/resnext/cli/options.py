"""Argument types shared by the subcommands: each rejects a bad value with one sentence."""
from __future__ import annotations

import argparse
import math

from ..recipe import INTERPOLATIONS


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def unit_interval(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights, --ema and --arch: the model evaluate, predict, export and serve load."""
    group = parser.add_argument_group("weights")
    group.add_argument("--weights", "-w", required=True, metavar="W",
                       help="checkpoint or weights file in any layout resnext reads (ours, NVIDIA's, timm's, "
                            "torchvision's, safetensors), or pretrained:NAME")
    group.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    group.add_argument("--arch", "-a", default=None,
                       help="the architecture the weights must be (default: taken from the file)")


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """--image-size, --crop-pct, --interpolation: override the eval preprocessing stored with the weights."""
    group = parser.add_argument_group("preprocessing (default: what the weights were trained with, else 224 / "
                                      "0.875 / bilinear)")
    group.add_argument("--image-size", type=positive_int, default=None, help="center crop size in pixels")
    group.add_argument("--crop-pct", type=unit_interval, default=None,
                       help="crop fraction: the shorter side is resized to image size / crop pct (0.875: 256 -> 224)")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                       help="resize filter (timm's gluon weights: bicubic)")


def add_class_names_argument(parser: argparse.ArgumentParser) -> None:
    """--class-names: name the classes of weights that carry none (predict, export, serve)."""
    parser.add_argument("--class-names", metavar="FILE|DIR", default=None,
                        help="class names for weights that carry none: a labels file (one name per line, in class "
                             "order) or the dataset folder they were trained on (its class folders, sorted); for "
                             "weights that carry names, a check that these are among them")


def add_class_map_argument(parser: argparse.ArgumentParser) -> None:
    """--class-map: relabel class folders explicitly where data meets weights (evaluate, train)."""
    parser.add_argument("--class-map", metavar="FILE", default=None,
                        help='map class folders to the weights\' classes when the names differ: a JSON object '
                             '{"folder": "class name or index"} or CSV lines folder,class (default: by name)')


def add_exif_argument(parser: argparse.ArgumentParser, default: bool | None) -> None:
    """--exif-orientation / --no-exif-orientation: on for photos (predict, serve), off for training data, and for
    evaluate (None) what the weights were trained with."""
    if default:
        text = ("turn each image upright by its EXIF orientation tag first, as phone photos need (default; "
                "--no-exif-orientation reads the pixels as stored, as training and evaluation do by default)")
    else:
        when = "what the weights were trained with, else off" if default is None else "off"
        text = (f"turn each image upright by its EXIF orientation tag (default: {when}, as torchvision's and "
                "NVIDIA's loaders, which published ImageNet accuracies come from; docs/data.md)")
    parser.add_argument("--exif-orientation", action=argparse.BooleanOptionalAction, default=default, help=text)


def name_list(text: str) -> tuple[str, ...]:
    """'pytorch,gpu' -> ('pytorch', 'gpu'); the library checks the names (importing it here would slow start-up)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
