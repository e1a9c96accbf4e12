"""Train with NVIDIA's main.py command line (same flags, defaults and meaning), on one process or under torchrun.

DATA holds train/ and val/ folders of class sub-folders. A command of NVIDIA's main.py runs unchanged with
`python main.py` replaced by `resnext train` (docs/nvidia.md: every flag, NVIDIA's meaning and ours). Our
improvements are opt-in; `--preset resnext` turns them all on with the ResNeXt101-32x4d recipe.

  resnext train /data/imagenet --preset resnext --workspace runs/rx101
  resnext train /data/imagenet --preset nvidia-90ep-amp --workspace runs/rx101
  torchrun --nproc_per_node 8 -m resnext train /data/imagenet --preset nvidia-250ep-amp --workspace runs/rx101
  resnext train /data/imagenet --workspace runs/rx101 --resume auto        # continue after preemption
  resnext train /data/imagenet --arch resnext101-32x4d --resume nvidia_checkpoint.pth.tar  # NVIDIA's run, continued
"""
from __future__ import annotations

import argparse

from ..options import add_to_parser, expand_nvidia_abbreviations
from ..recipe import PRESET_NAMES, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_to_parser(parser, TrainConfig)
    for action in parser._actions:
        if action.dest == "preset":
            action.choices = PRESET_NAMES


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig these arguments describe (the preset is applied by `prepare` before parsing)."""
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    train(config_from_args(args))
    return 0


def prepare(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Before parsing: a --preset's values become the defaults of `parser` (explicit flags still win), and the
    abbreviations NVIDIA's parser accepts are spelled out (returns the arguments to parse)."""
    from ..recipe import preset

    known = {s for action in parser._actions for s in action.option_strings}
    argv = expand_nvidia_abbreviations(argv, TrainConfig, known)
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--preset")
    found, _ = probe.parse_known_args(argv)
    if found.preset in PRESET_NAMES:
        parser.set_defaults(**preset(found.preset))
    return argv
