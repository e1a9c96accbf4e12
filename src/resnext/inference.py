"""Evaluation of weights on a validation folder, measured the way NVIDIA's inference tables are.

    evaluate_weights(data, weights, ...) -> dict  `resnext evaluate`: the evaluation JSON of docs/ARCHITECTURE.md
    prepare_model(model, device, ...)            eval mode, memory format, torch.compile and/or CUDA graphs
    CudaGraphModel(model)                        a module that replays one CUDA graph per input shape

Latency is wall time per batch with the device synchronized before and after, in milliseconds; percentiles are
nearest-rank, as the training log's val.compute_latency_at95/at99/at100. Timing on synthetic input (batch 256
throughput, batch 1 latency, eager / compiled / CUDA graph) is resnext.bench.benchmark_inference.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .device import autocast, synchronize
from .errors import UserError

log = logging.getLogger("resnext.inference")

# Batch shapes whose CUDA graphs are kept: the full batch and the last partial one, plus a few shorter batches
# where unreadable images were dropped; beyond that, batches run eagerly rather than capturing more graphs.
MAX_CAPTURED_SHAPES = 4


def _autocast_without_cache(device: torch.device, precision: str):
    # Autocast's cache of casted weights must be off while a CUDA graph is captured (torch.cuda.graph docs);
    # this context also applies the precision when the caller has none around the call.
    return autocast(device, precision, cache_enabled=False)


def capture_graph(forward: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """Record `forward` in a CUDA graph once; the returned call replays it and returns its (static) output.

    CudaGraphModel captures with it, and so `resnext evaluate --cuda-graphs` and `resnext benchmark --cuda-graphs`.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # cuDNN autotuning and allocations happen here, not during capture
            forward()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the data loader's pin-memory thread keeps calling the CUDA runtime while a graph is captured
    # mid-evaluation, which the default (global) mode treats as an error in the capture.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        output = forward()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay


class CudaGraphModel(nn.Module):
    """Runs `model` by replaying a CUDA graph captured once per input shape, which removes the per-kernel launch
    cost that dominates small batches (batch-1 latency). Inputs are copied into the captured buffer; the output
    is a fresh tensor, so callers may keep it."""

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self._graphs: dict[tuple, tuple[Callable[[], Tensor], Tensor]] = {}

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        key = (tuple(images.shape), images.dtype, images.stride())
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= MAX_CAPTURED_SHAPES:
                with _autocast_without_cache(images.device, self.precision):
                    return self.model(images)
            entry = self._graphs[key] = self._capture(images)
        replay, static_input = entry
        static_input.copy_(images)
        return replay().clone()

    def _capture(self, images: Tensor) -> tuple[Callable[[], Tensor], Tensor]:
        static_input = images.clone()
        device = images.device

        def forward() -> Tensor:
            with _autocast_without_cache(device, self.precision):
                return self.model(static_input)

        return capture_graph(forward, device), static_input


def prepare_model(model: nn.Module, device: str | torch.device, *, precision: str = "fp32",
                  memory_format: torch.memory_format = torch.contiguous_format, compile: bool = False,
                  cuda_graphs: bool = False) -> nn.Module:
    """`model` in eval mode on `device`, optionally compiled and/or replayed from CUDA graphs.

    compile: torch.compile (inductor). cuda_graphs: capture a CUDA graph per batch shape (CUDA only); with
    compile as well, torch.compile's own CUDA graphs (mode="reduce-overhead"). The caller runs the result under
    the precision's autocast (resnext.device.autocast); the CUDA-graph wrapper applies it during capture.
    """
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise UserError(f"CUDA graphs need a CUDA device, but the model runs on {device}; drop --cuda-graphs.")
    model = model.to(device, memory_format=memory_format).eval()
    if compile:
        return torch.compile(model, mode="reduce-overhead" if cuda_graphs else None)
    if cuda_graphs:
        return CudaGraphModel(model, precision)
    return model


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Mean and nearest-rank 90th / 95th / 99th / 100th percentiles of per-batch times, in milliseconds."""
    from .evaluation import percentile

    if not seconds:
        return {}
    ordered = sorted(seconds)
    summary = {"mean": 1000.0 * sum(ordered) / len(ordered)}
    for q in (90, 95, 99, 100):
        summary[f"p{q}"] = 1000.0 * percentile(ordered, q)
    return summary


@torch.no_grad()
def _warm_up(model: nn.Module, batch_sizes: list[int], image_size: int, device: torch.device, precision: str,
             memory_format: torch.memory_format) -> None:
    """One forward pass per batch shape, so compilation, graph capture and cuDNN autotuning are not timed."""
    for batch_size in dict.fromkeys(size for size in batch_sizes if size > 0):
        images = torch.randn(batch_size, 3, image_size, image_size, device=device)
        with autocast(device, precision):
            model(images.contiguous(memory_format=memory_format))
    synchronize(device)


def evaluate_weights(data: str | Path, weights, *, use_ema: bool = False, arch: str | None = None,
                     batch_size: int = 256, workers: int = 4, backend: str = "pytorch",
                     device: str | torch.device | None = None, precision: str | None = None,
                     memory_format: str | None = None, compile: bool = False, cuda_graphs: bool = False,
                     image_size: int | None = None, crop_pct: float | None = None,
                     interpolation: str | None = None, class_map: str | Path | dict | None = None,
                     exif_orientation: bool | None = None) -> dict:
    """Evaluate the model in `weights` on a validation folder: the evaluation JSON of docs/ARCHITECTURE.md.

    data: a split folder of class sub-folders, or a dataset root (its val/ is used). Each class folder is scored
    against the weights' class of the same name (resnext.data.match_classes: a subset of the classes is fine, a
    folder the weights do not know is a UserError); class_map ({folder: class name or index}, or a --class-map
    file) renames folders first. Weights without class names take the folders in sorted order.
    Preprocessing is the weights' own (checkpoint or named source), NVIDIA's eval path: shorter side to
    round(image_size / crop_pct), center crop; image_size / crop_pct / interpolation override it.
    exif_orientation: turn images upright by their EXIF tag; default: what the weights were trained with, else
    off (as torchvision's and NVIDIA's evaluation, which published accuracies come from).
    The numbers come from resnext.evaluation.evaluate, the function training validates with, so a checkpoint
    evaluated here with its training preprocessing gets the top-1 its training log reports.
    """
    from .data import IMAGENET_MEAN, IMAGENET_STD, create_loader, resolve_device
    from .data.classes import match_classes, read_class_map
    from .data.folder import find_classes, resolve_split
    from .device import configure_backends, resolve_memory_format, resolve_precision
    from .evaluation import evaluate
    from .prediction import Preprocessing
    from .report.figures import MAX_CONFUSION_CLASSES
    from .weights import load_model

    split = resolve_split(data, train=False)  # a wrong folder is refused before weights are read (or downloaded)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    layout = resolve_memory_format(memory_format, device)
    configure_backends(precision, deterministic=False)
    model, meta = load_model(weights, arch=arch, use_ema=use_ema, device=device)
    preprocessing = Preprocessing.for_weights(meta, image_size, crop_pct, interpolation)
    if (tuple(preprocessing.mean), tuple(preprocessing.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        raise UserError(f"these weights expect mean {list(preprocessing.mean)} and std {list(preprocessing.std)}, but "
                        "the evaluation loaders normalize with ImageNet's; use resnext.predict for such weights.")
    if class_map is not None and not isinstance(class_map, dict):
        class_map = read_class_map(class_map)
    classes = match_classes(find_classes(split), meta.class_names, meta.num_classes, class_map=class_map,
                            data=f"'{split}'")
    if exif_orientation is None:
        exif_orientation = bool((meta.preprocessing or {}).get("exif_orientation", False))
    loader = create_loader(backend, split, train=False, batch_size=batch_size, image_size=preprocessing.image_size,
                           crop_pct=preprocessing.crop_pct, interpolation=preprocessing.interpolation,
                           workers=workers, device=device, memory_format=layout, classes=classes,
                           exif_orientation=exif_orientation)
    class_names = list(classes.class_names)
    if len(classes.labels_used) < len(class_names):
        log.info("evaluating %d of the weights' %d classes (%s), each folder against its class by %s.",
                 len(classes.labels_used), len(class_names), split, classes.matched_by)

    prepared = prepare_model(model, device, precision=precision, memory_format=layout, compile=compile,
                             cuda_graphs=cuda_graphs)
    if compile or device.type == "cuda":
        full = batch_size if loader.dataset_size >= batch_size else 0
        _warm_up(prepared, [full, loader.dataset_size % batch_size], preprocessing.image_size, device, precision,
                 layout)
    confusion = len(class_names) <= MAX_CONFUSION_CLASSES
    raw = evaluate(prepared, loader, device=device, precision=precision, topk=5, confusion=confusion,
                   num_classes=len(class_names))
    # Only the classes that have a folder: a class the data does not hold has no accuracy to show.
    per_class = [{"name": class_names[label], "images": raw["per_class_images"][label],
                  "top1": 100.0 * raw["per_class_top1_hits"][label] / max(1, raw["per_class_images"][label])}
                 for label in classes.labels_used]
    result = {
        "top1": raw["top1"], "top5": raw["top5"], "loss": raw["loss"], "images": raw["images"],
        "img_s": raw["compute_ips"], "img_s_total": raw["total_ips"], "batch_size": batch_size,
        "latency_ms": latency_summary(raw["latencies"]),
        "per_class": per_class, "class_names": class_names,
        "weights": str(meta.path or weights), "arch": meta.arch, "ema": use_ema, "precision": precision,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "compile": compile, "cuda_graphs": cuda_graphs,
        "preprocessing": {**preprocessing.to_dict(), "exif_orientation": exif_orientation},
        "data": str(data), "skipped": [path for path, _ in loader.skipped],
        "class_to_idx": dict(classes.class_to_idx), "classes_matched_by": classes.matched_by,
    }
    if confusion:
        result["confusion"] = raw["confusion"]
    return result
