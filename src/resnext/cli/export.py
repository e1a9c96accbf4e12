"""Export a model for deployment, verified against PyTorch before anything is written.

Formats: onnx (checked in onnxruntime), torchscript, exported-program (torch.export, .pt2), safetensors (bare
weights with arch, class names and preprocessing: NVIDIA's checkpoint2model, for any checkpoint layout),
triton (a Triton Inference Server model repository for the onnxruntime backend, with dynamic batching), and
nvidia (a training checkpoint of ours in the layout NVIDIA's main.py --resume continues).
Graph exports take `images` (NCHW, dynamic batch) and return `logits`; docs/deployment.md has the details and
the TensorRT conversion.

  resnext export --weights runs/rx101/model_best.pth.tar --format onnx --output rx101.onnx
  resnext export --weights checkpoint.pth.tar --ema --format safetensors --output rx101-ema.safetensors
  resnext export --weights model_best.pth.tar --format triton --output model_repository/ --precision fp16
  resnext export --weights runs/rx101/checkpoint.pth.tar --format nvidia --output checkpoint_nvidia.pth.tar
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..deployment import EXPORT_FORMATS, REPOSITORY_MAX_BATCH, REPOSITORY_QUEUE_DELAY_US
from .options import add_class_names_argument, add_weights_arguments, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_arguments(parser)
    parser.add_argument("--format", "-f", required=True, help=f"one of {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="file to write (default: the weights' name with the format's extension, here); "
                             "for triton the model repository folder")
    parser.add_argument("--precision", default="fp32", help="fp32 or fp16 (weights, input and output)")
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold BatchNorm into the convolutions (graph formats; faster inference)")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="input height and width (default: the weights' training size, else 224)")
    parser.add_argument("--no-module-prefix", dest="module_prefix", action="store_false",
                        help="nvidia: keys without DDP's 'module.' prefix, for a single-GPU NVIDIA run")
    add_class_names_argument(parser)
    triton = parser.add_argument_group("triton")
    triton.add_argument("--model-name", default="resnext", help="the model's name in the repository")
    triton.add_argument("--max-batch-size", type=positive_int, default=REPOSITORY_MAX_BATCH,
                        help="largest batch Triton's dynamic batcher forms")
    triton.add_argument("--queue-delay-us", type=non_negative_int, default=REPOSITORY_QUEUE_DELAY_US,
                        help="how long Triton waits to fill a batch, in microseconds")


def run(args: argparse.Namespace) -> int:
    from ..export import export_model

    result = export_model(args.weights, args.format, args.output, use_ema=args.ema, arch=args.arch,
                          precision=args.precision, fold_bn=args.fold_bn, image_size=args.image_size,
                          max_batch_size=args.max_batch_size, model_name=args.model_name,
                          queue_delay_us=args.queue_delay_us, module_prefix=args.module_prefix,
                          class_names=args.class_names)
    print(f"wrote {result.path} ({result.format}, {result.precision}; largest difference to PyTorch "
          f"{result.max_abs_diff:.2g}, allowed {result.tolerance:.2g})")
    return 0
