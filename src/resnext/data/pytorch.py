"""The `pytorch` backend (NVIDIA's CPU path): workers decode, crop, flip; uint8 crosses to the device.

Worker processes read each file, decode it (libjpeg-turbo through torchvision for JPEGs, Pillow for the
rest), apply the per-sample crop/flip/AutoAugment and pack uint8 NHWC batches in shared memory. The main
process copies them from pinned memory on a side CUDA stream one batch ahead and converts to normalized
float on the device, where it costs almost nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .base import Batch, FolderLoader, shared_empty
from .decode import decode_file
from .folder import read_sample
from .transforms import normalize_batch


class Sample(NamedTuple):
    image: Tensor | None  # uint8 (H, W, 3), None when unreadable and not replaced
    label: int
    skips: list[tuple[str, str]]


class PackedBatch(NamedTuple):
    images: Tensor  # uint8 (N, H, W, 3)
    labels: Tensor  # int64 (N,)
    skips: list[tuple[str, str]]
    missing: int  # samples left out (unreadable; in training: no readable replacement)


class DecodedSamples(torch.utils.data.Dataset):
    """What a worker does with one (dataset index, sample seed) key: read, decode, preprocess."""

    def __init__(self, folder, preprocess, train: bool, max_pixels: int, exif_orientation: bool = False):
        self.folder, self.preprocess, self.train, self.max_pixels = folder, preprocess, train, max_pixels
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, sample_seed = key
        skips: list[tuple[str, str]] = []
        index, image = read_sample(self.folder, index,
                                   lambda path: decode_file(path, self.max_pixels, self.exif_orientation), skips,
                                   replace=self.train)
        if image is None:
            return Sample(None, -1, skips)
        # The augmentation follows the sample (its seed), whichever file ended up being read for it.
        return Sample(self.preprocess(image, sample_seed).permute(1, 2, 0), self.folder.label(index), skips)


def collate_uint8(samples: list[Sample]) -> PackedBatch:
    kept = [s for s in samples if s.image is not None]
    skips = [skip for s in samples for skip in s.skips]
    shape = tuple(kept[0].image.shape) if kept else (0, 0, 3)
    images = shared_empty((len(kept), *shape), torch.uint8)
    if kept:
        torch.stack([s.image for s in kept], out=images)
    labels = torch.tensor([s.label for s in kept], dtype=torch.int64)
    return PackedBatch(images, labels, skips, len(samples) - len(kept))


class PytorchLoader(FolderLoader):
    backend = "pytorch"

    def _make_dataset(self):
        return DecodedSamples(self.folder, self.preprocess, self.train, self.max_pixels, self.exif_orientation)

    collate = staticmethod(collate_uint8)

    def _to_device(self, batch: PackedBatch) -> Batch:
        images = batch.images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        labels = batch.labels.to(self.device, non_blocking=True)
        return normalize_batch(images, self.memory_format), labels
