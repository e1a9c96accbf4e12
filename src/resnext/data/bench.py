"""Measuring loaders: throughput (`resnext benchmark --data-only`) and pixel agreement between backends.

Both take loaders made by create_loader, so they measure exactly what training would run. `TorchvisionLoader`
is the peer `--compare torchvision` times beside ours: the plain torchvision training pipeline.
"""
from __future__ import annotations

import statistics
import time
from typing import Iterator

import torch

from ..device import synchronize
from ..errors import UserError
from .transforms import IMAGENET_STD, normalize_batch


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
    name = getattr(loader, "backend", type(loader).__name__)
    return measure_alternately({name: loader}, warmup_batches, timed_batches, window)[name]


def measure_alternately(loaders: dict, warmup_batches: int = 10, timed_batches: int = 50, window: int = 10,
                        drain_batches: int = 0) -> dict:
    """measure_loader's figures for several loaders timed in turns: a window of each, round after round (one
    loader: measure_loader).

    Taking turns exposes all of them to the same machine load (other jobs, turbo, page cache), so their ratios
    hold even where the absolute rates drift. Each loader keeps its workers between turns, which then prepare
    up to workers x prefetch batches while another loader is timed: `drain_batches` (that number) are taken
    untimed at the start of each turn, so a turn times batches made during it. Returns {name: figures}.
    """
    if timed_batches < 1 or warmup_batches < 0 or window < 1 or drain_batches < 0:
        raise UserError("measure_alternately needs timed_batches >= 1, window >= 1, warmup and drain >= 0.")
    streams = {name: _batches(loader) for name, loader in loaders.items()}
    for stream in streams.values():
        for _ in range(warmup_batches):
            synchronize(next(stream)[0].device)
    times: dict[str, list[float]] = {name: [] for name in loaders}
    sizes: dict[str, list[int]] = {name: [] for name in loaders}
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    shapes = {}
    for start in range(0, timed_batches, window):
        for name, stream in streams.items():
            for _ in range(drain_batches):
                synchronize(next(stream)[0].device)
            began = last = time.perf_counter()
            for _ in range(min(window, timed_batches - start)):
                images, _labels = next(stream)
                synchronize(images.device)
                now = time.perf_counter()
                times[name].append(now - last)
                sizes[name].append(len(images))
                shapes[name] = (list(images.shape), str(images.device))
                last = now
            rates[name].append(sum(sizes[name][start:]) / (last - began))
    return {name: {"backend": getattr(loaders[name], "backend", name),
                   "images_per_second": statistics.median(rates[name]), "window_images_per_second": rates[name],
                   "batch_time_ms": {"median": 1000 * statistics.median(times[name]),
                                     "mean": 1000 * statistics.fmean(times[name]),
                                     "max": 1000 * max(times[name])},
                   "timed_batches": timed_batches, "images": sum(sizes[name]), "batch_shape": shapes[name][0],
                   "device": shapes[name][1]}
            for name in loaders}


class TorchvisionLoader:
    """The plain torchvision training pipeline, the peer of `resnext benchmark --data-only DIR --compare torchvision`.

    torchvision.datasets.ImageFolder (PIL decode of the whole image), transforms.v2 RandomResizedCrop(image_size)
    (PIL's antialiased bilinear resize of the crop), RandomHorizontalFlip, PILToTensor: uint8 tensors, batched
    by torch's DataLoader with shuffling, `workers` processes, `prefetch` batches each, pinned memory on CUDA.
    Its batches then get exactly our loaders' last step (copy to the device, normalize_batch), so both deliver
    what a training step consumes and the comparison is between the pipelines, not their output formats.
    """

    backend = "torchvision"

    def __init__(self, root, *, batch_size: int, image_size: int, workers: int, device: torch.device,
                 memory_format: torch.memory_format, prefetch: int = 2, seed: int = 0):
        import torchvision
        from torchvision.transforms import v2

        from .folder import resolve_split

        transform = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                                v2.PILToTensor()])
        dataset = torchvision.datasets.ImageFolder(resolve_split(root, train=True), transform=transform)
        self.device, self.memory_format = device, memory_format
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers > 0 else None, generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the DataLoader reshuffles at every pass."""

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield normalize_batch(images, self.memory_format), labels.to(self.device, non_blocking=True)


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
