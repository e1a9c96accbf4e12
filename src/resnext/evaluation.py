"""Evaluation: accuracy, loss, throughput and latency of a model on a loader, the one routine that training's
validation, `resnext evaluate`, prediction benchmarks and reports all use.

    evaluate(model, loader, device=...)  -> {"top1", "top5", "loss", "images", "compute_ips", latencies, per class}
    percentile(ordered, q)               the nearest-rank percentile the latency figures use
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data.base import Loader
from .device import autocast, synchronize
from .distributed import DistEnv
from .errors import UserError


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, *, device: torch.device, precision: str = "fp32", topk: int = 5,
             env: DistEnv | None = None, max_batches: int | None = None, confusion: bool = False,
             num_classes: int | None = None, label_smoothing: float = 0.0) -> dict:
    """Accuracy, loss (cross-entropy; with `label_smoothing`, NVIDIA's smoothed training criterion), throughput and
    per-batch latency of `model` on `loader`.

    Returns top1 / top{topk} (percent), loss (mean cross-entropy per image, nats), images, compute_ips and
    total_ips (img/s: model time only / wall time), compute_latency and compute_latency_at95/99/100 (seconds per
    batch), latencies (this rank's seconds per batch, in order), per_class_images and per_class_top1_hits (lists of
    num_classes ints), and with `confusion=True` confusion (num_classes x num_classes counts, rows true class,
    columns predicted). Under torchrun every rank evaluates its own shard and the counts are summed, so each image
    counts once (a rank whose shard is empty still joins every sum). num_classes: default, the loader's class
    count. Raises UserError when the model's outputs do not match the class count or no image could be read.
    """
    env = env or DistEnv(device=device)
    num_classes = num_classes or len(loader.class_names)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-k hits, images
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # images, top-1 hits
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device) if confusion else None
    latencies = []
    started = time.perf_counter()
    for index, (images, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        synchronize(device)
        latencies.append(time.perf_counter() - t0)
        if logits.shape[1] != num_classes:
            raise UserError(f"the model has {logits.shape[1]} outputs but the data has {num_classes} classes.")
        top = logits.topk(min(topk, num_classes), dim=1).indices
        hits = top.eq(labels[:, None])
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing).double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
        per_class[0] += torch.bincount(labels, minlength=num_classes).double()
        per_class[1] += torch.bincount(labels[hits[:, 0]], minlength=num_classes).double()
        if matrix is not None:
            matrix += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes ** 2).double()
    wall = time.perf_counter() - started
    model.train(was_training)
    local_images = float(sums[3])
    distributed.all_reduce_sum(sums, env)
    distributed.all_reduce_sum(per_class, env)
    if matrix is not None:
        distributed.all_reduce_sum(matrix, env)
    images = float(sums[3])
    if images == 0:
        raise UserError("the validation split yielded no readable images.")
    compute = sum(latencies)
    ordered = sorted(latencies) or [float("nan")]  # an empty shard has no latency to report
    result = {
        "top1": 100.0 * float(sums[1]) / images,
        f"top{topk}": 100.0 * float(sums[2]) / images,
        "loss": float(sums[0]) / images,
        "images": int(images),
        "compute_ips": local_images * env.world_size / max(compute, 1e-9),
        "total_ips": images / max(wall, 1e-9),
        "compute_latency": compute / len(latencies) if latencies else float("nan"),
        "compute_latency_at95": percentile(ordered, 95),
        "compute_latency_at99": percentile(ordered, 99),
        "compute_latency_at100": ordered[-1],
        "latencies": latencies,
        "per_class_images": [int(v) for v in per_class[0].tolist()],
        "per_class_top1_hits": [int(v) for v in per_class[1].tolist()],
    }
    if matrix is not None:
        n = per_class.shape[1]
        result["confusion"] = [[int(v) for v in row] for row in matrix.view(n, n).tolist()]
    return result


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of an ascending list: the smallest value with at least q% of
    the values at or below it (Hyndman and Fan's definition 1: no interpolation, always a measured value)."""
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[index]
