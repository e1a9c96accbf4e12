"""The `synthetic` backend: one random batch made on the device, yielded again and again (for benchmarks).

As NVIDIA's synthetic loader, it measures the model without any input pipeline. The images are random
uint8 pixels normalized like real ones, so their value range matches the other backends. Every iteration
yields the same two tensors: consumers must not modify them in place.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .base import Batch
from .transforms import normalize_batch


class SyntheticLoader:
    backend = "synthetic"

    def __init__(self, *, batch_size: int, image_size: int, num_classes: int, device: torch.device,
                 memory_format: torch.memory_format, rank: int, world_size: int, seed: int, batches_per_epoch: int):
        generator = torch.Generator().manual_seed(seed + rank)
        pixels = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
        self._batch = (normalize_batch(pixels.to(device), memory_format), labels.to(device))
        self.class_names = [f"class_{i}" for i in range(num_classes)]
        self.dataset_size = batches_per_epoch * batch_size * world_size
        self.skipped: list[tuple[str, str]] = []
        self.batches_per_epoch = batches_per_epoch
        self.start_batch = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.start_batch, self.batches_per_epoch):
            yield self._batch
