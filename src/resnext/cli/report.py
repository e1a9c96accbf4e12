"""Turn training logs into one HTML page with figures: loss, accuracy, learning rate, loss scale, throughput.

  resnext report runs/rx101-amp                         writes runs/rx101-amp/report/index.html
  resnext report runs/amp runs/tf32 --output cmp/       overlays both runs on the same axes
  resnext report runs/rx101-amp/experiment_raport.json  a log file given directly

A RUN_DIR is a training workspace (holding experiment_raport.json) or the log file itself; an evaluation.json
beside the log adds the evaluation results. Works on a run that is still going and on a resumed run.
The page embeds its figures, so it can be mailed as one file. Needs matplotlib: pip install "resnext[report]".
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="training workspace or log file; several are overlaid")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="folder for index.html and the PNGs (default: RUN_DIR/report; required for several runs)")


def run(args: argparse.Namespace) -> int:
    print(write_report(args.runs, args.output))
    return 0
