"""The `resnext` command: parses arguments, calls the library, turns user errors into one-line messages.

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`; this file
only wires them together and owns the error policy (no traceback for anything a user can cause).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import UserError

# name -> (module, one-line help). Command modules import optional dependencies (onnx, matplotlib, DALI,
# PyTriton) inside run(), so building the parser never needs them.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "parameters, GMACs and per-stage table of an architecture"),
    "data": ("data", "check a dataset, write the embedded one, build benchmark folders, compare backends"),
    "train": ("train", "train with NVIDIA's main.py command line (one process or torchrun)"),
    "launch": ("launch", "NVIDIA's launch.py: expand --model/--precision/--mode/--platform from configs.yml, train"),
    "demo": ("demo", "train and evaluate on the embedded dataset in a few minutes"),
    "report": ("report", "HTML page with loss, accuracy, LR and throughput figures from training logs"),
    "evaluate": ("evaluate", "top-1/top-5, img/s and latency percentiles of weights on a validation folder"),
    "predict": ("predict", "top-k class names of image files, folders or glob patterns"),
    "export": ("export", "verified ONNX, TorchScript, ExportedProgram, safetensors or Triton repository"),
    "serve": ("serve", "Triton Inference Server (PyTriton) with dynamic batching, HTTP and gRPC"),
    "benchmark": ("benchmark", "img/s, step time, peak memory and MFU of training, inference or data loading"),
}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error that points at --help instead of printing the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: list[str] | None = None) -> Parser:
    from .. import __version__

    parser = Parser(prog="resnext", description="ResNeXt101-32x4d and its family: train, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"resnext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f".{module_name}", __name__)
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        if hasattr(module, "prepare") and argv and argv[0] == name:
            # e.g. train's --preset sets defaults before parsing; it may also rewrite the arguments it gets
            rewritten = module.prepare(command, argv[1:])
            if rewritten is not None:
                argv[1:] = rewritten
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "_pass_through", False):  # launch hands what it does not know to train
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = extra
    if args.command is None:
        parser.print_help()
        return 2
    prog = f"resnext {args.command}"
    # Library notices (skipped files, a classifier head left untrained, a corrupt checkpoint passed over) go
    # through the "resnext" logger; on the command line they are plain lines on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `resnext ... | head` closed the pipe: not an error worth a message. Point stdout at devnull so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory; lower --batch-size or the image size.", file=sys.stderr)
        return 1
    except RuntimeError as err:
        import torch

        if not isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        print(f"{prog}: error: the GPU ran out of memory; lower --batch-size or the image size.", file=sys.stderr)
        return 1
    except OSError as err:
        # Disk full, permission denied, a path that vanished: the environment, not a bug in resnext.
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"{prog}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
