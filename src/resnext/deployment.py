"""Settings that `resnext export`, `resnext serve` and their Python functions share, kept free of torch so the
command line can offer them as defaults without importing it."""
from __future__ import annotations

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program", "safetensors", "triton", "nvidia")

# A Triton model repository written by `resnext export --format triton` (config.pbtxt's dynamic batcher).
REPOSITORY_MAX_BATCH = 256
REPOSITORY_QUEUE_DELAY_US = 100

# `resnext serve` (PyTriton): Triton's own default ports; smaller batches and a longer wait suit a live server
# that batches concurrent requests.
SERVE_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SERVE_MAX_BATCH = 64
SERVE_QUEUE_DELAY_US = 1000
