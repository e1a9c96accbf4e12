"""Serve a model over HTTP and gRPC with NVIDIA's Triton Inference Server (PyTriton), batching concurrent requests.

Two models: MODEL takes preprocessed `images` (FP32 [3, S, S], the contract of `resnext export`) and returns
`logits`; MODEL_image takes one encoded image file as BYTES and returns `logits`, the top-k `classes` and
`probabilities`, and an `error` text. Clients use the standard tritonclient (docs/deployment.md).
Listens on 127.0.0.1 unless --host says otherwise; a port of 0 picks a free one. Ctrl-C or SIGTERM stops it.
Needs the serve extra: pip install "resnext[serve]".

  resnext serve --weights runs/rx101/model_best.pth.tar
  resnext serve --weights pretrained:nvidia-ngc --host 0.0.0.0 --max-batch-size 128 --queue-delay-us 2000
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..deployment import SERVE_MAX_BATCH, SERVE_PORTS, SERVE_QUEUE_DELAY_US
from ..recipe import PRECISIONS
from .options import (add_class_names_argument, add_exif_argument, add_preprocessing_arguments, add_weights_arguments,
                      non_negative_int, positive_int)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_arguments(parser)
    add_preprocessing_arguments(parser)
    add_exif_argument(parser, default=True)
    add_class_names_argument(parser)
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (0.0.0.0: every interface; default: this machine only)")
    for name, port in SERVE_PORTS.items():
        net.add_argument(f"--{name}-port", type=non_negative_int, default=port, help=f"default {port}; 0: a free port")
    net.add_argument("--model-name", default="resnext", help="name clients address (MODEL and MODEL_image)")
    net.add_argument("--max-batch-size", type=positive_int, default=SERVE_MAX_BATCH,
                     help="largest batch Triton's dynamic batcher forms from concurrent requests")
    net.add_argument("--queue-delay-us", type=non_negative_int, default=SERVE_QUEUE_DELAY_US,
                     help="how long a request may wait for others to batch with, in microseconds")
    net.add_argument("--topk", type=positive_int, default=5, help="class names MODEL_image returns")
    net.add_argument("--log-file", type=Path, default=None,
                     help="Triton's own log (default: a new file in the temporary folder)")
    model = parser.add_argument_group("execution")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    model.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="amp, amp-bf16, tf32 or fp32 (default: amp on GPUs, fp32 on CPU)")


def run(args: argparse.Namespace) -> int:
    from ..serve import serve

    logging.getLogger("pytriton").setLevel(logging.WARNING)  # its INFO lines repeat what ready() prints

    def ready(server) -> None:
        endpoints, predictor = server.endpoints, server.predictor
        size = predictor.preprocessing.image_size
        print(f"serving {predictor.model.arch} ({predictor.num_classes} classes, {predictor.precision} on "
              f"{predictor.device}) with Triton on {endpoints.host}\n"
              f"  HTTP {endpoints.http_url}   gRPC {endpoints.grpc_url}   metrics {endpoints.metrics_url}\n"
              f"  model '{server.model_name}': images FP32 [3, {size}, {size}] -> logits\n"
              f"  model '{server.image_model_name}': image BYTES (an encoded file) -> logits, classes, "
              f"probabilities, error\n"
              f"  dynamic batching up to {server.max_batch_size}, queue delay {server.queue_delay_us} us; "
              f"Triton log: {server.log_file}\n"
              "  Ctrl-C or SIGTERM stops the server.", flush=True)

    serve(args.weights, use_ema=args.ema, arch=args.arch, device=args.device, precision=args.precision,
          image_size=args.image_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
          exif_orientation=args.exif_orientation, class_names=args.class_names, on_ready=ready,
          model_name=args.model_name, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
          metrics_port=args.metrics_port, max_batch_size=args.max_batch_size, queue_delay_us=args.queue_delay_us,
          topk=args.topk, log_file=args.log_file)
    print("server stopped", flush=True)
    return 0
