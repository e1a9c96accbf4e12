"""Measuring loaders: throughput (`resnext benchmark --data-only`) and pixel agreement between backends.

Both take loaders made by create_loader, so they measure exactly what training would run.
"""
from __future__ import annotations

import statistics
import time
from typing import Iterator

import torch

from ..device import synchronize
from ..errors import UserError
from .transforms import IMAGENET_STD


def _batches(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches without end: epoch after epoch (set_epoch 0, 1, ...)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield batch
        if not produced:
            raise UserError("the loader yields no batches; give a folder with at least one batch of images.")
        epoch += 1


def measure_loader(loader, warmup_batches: int = 10, timed_batches: int = 50, window: int = 10) -> dict:
    """Images per second a loader delivers on its device, with nothing else running.

    Each batch is waited for on the device (synchronized), so the time is the time until the batch is
    usable. After `warmup_batches` (worker start-up, caches, cuDNN/nvJPEG initialization), `timed_batches`
    are timed in windows of `window` batches; `images_per_second` is the median of the windows' rates, which
    a stall at an epoch boundary does not move. `batch_time_ms` is the time per batch (the training loop's
    "data time" when the model is faster than the loader).
    """
    if timed_batches < 1 or warmup_batches < 0 or window < 1:
        raise UserError("measure_loader needs timed_batches >= 1, warmup_batches >= 0 and window >= 1.")
    batches = _batches(loader)
    for _ in range(warmup_batches):
        synchronize(next(batches)[0].device)
    times, sizes = [], []
    last = time.perf_counter()
    for _ in range(timed_batches):
        images, _labels = next(batches)
        synchronize(images.device)
        now = time.perf_counter()
        times.append(now - last)
        sizes.append(len(images))
        last = now
    rates = [sum(sizes[i:i + window]) / sum(times[i:i + window]) for i in range(0, timed_batches, window)]
    return {
        "backend": getattr(loader, "backend", type(loader).__name__),
        "images_per_second": statistics.median(rates),
        "window_images_per_second": rates,
        "batch_time_ms": {"median": 1000 * statistics.median(times), "mean": 1000 * statistics.fmean(times),
                          "max": 1000 * max(times)},
        "timed_batches": timed_batches,
        "images": sum(sizes),
        "batch_shape": list(images.shape),
        "device": str(images.device),
    }


def compare_backends(root, backends: tuple[str, ...] = ("pytorch", "gpu", "dali-cpu"), *, train: bool = False,
                     **loader_options) -> dict:
    """How far each backend's pixels are from the first one's, on the same images in the same order.

    Eval loaders (train=False) of every backend read the same files in the same order; train loaders of the
    pytorch and gpu backends also draw the same crops (DALI draws its own, so it is refused with train=True).
    `loader_options` go to create_loader. Returns, per backend after the first: mean and max absolute
    difference in 0-255 pixel units (normalized values times std x 255) and the images compared.
    """
    from . import create_loader

    if len(backends) < 2:
        raise UserError("give at least two backends to compare.")
    if train and any(name.startswith("dali") for name in backends):
        raise UserError("DALI draws its own random crops, so train batches cannot be compared with it; compare "
                        "eval batches (without --train).")
    reference, *others = (create_loader(name, root, train=train, **loader_options) for name in backends)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    results = {}
    for name, loader in zip(backends[1:], others):
        total, peak, count, values = 0.0, 0.0, 0, 0
        for (ref_images, ref_labels), (images, labels) in zip(reference, loader):
            if not torch.equal(ref_labels.cpu(), labels.cpu()):
                raise UserError(f"{name} and {backends[0]} read different images; a file one of them skips shifts "
                                "the order (see `resnext data check`).")
            diff = (ref_images.float().cpu() - images.float().cpu()).abs_().mul_(std)
            total, peak = total + float(diff.sum()), max(peak, float(diff.max()))
            count, values = count + len(labels), values + diff.numel()
        results[name] = {"mean_abs_diff": total / max(1, values), "max_abs_diff": peak, "images": count}
    return {"reference": backends[0], "train": train, "backends": results}
