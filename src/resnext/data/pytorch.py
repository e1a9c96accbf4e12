"""The `pytorch` backend (NVIDIA's CPU path): workers decode, crop, flip; uint8 crosses to the device.

Worker processes read each file, decode it (libjpeg-turbo through torchvision for JPEGs, Pillow for the
rest; training JPEGs by default through simplejpeg, only at the scale the crop needs), apply the per-sample
crop/flip/AutoAugment and pack uint8 NHWC batches in shared memory. The main process copies them from
pinned memory on a side CUDA stream one batch ahead and converts to normalized float on the device, where it
costs almost nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .base import Batch, FolderLoader, shared_empty
from .decode import decode_file, decode_pixels, exif_orientation_of, fast_jpeg_header, read_bytes
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
    """What a worker does with one (dataset index, sample seed) key: read, decode, preprocess.

    scaled_decode: training JPEGs go through preprocess.from_jpeg (crop box from the header, DCT-scaled decode);
    other files, JPEGs that path refuses, and (with exif_orientation) photos whose EXIF tag turns them, are decoded
    in full as before.
    exif_orientation: turn each image upright by its EXIF orientation tag before it is cropped.
    """

    def __init__(self, folder, preprocess, train: bool, max_pixels: int, scaled_decode: bool = False,
                 exif_orientation: bool = False):
        self.folder, self.preprocess, self.train, self.max_pixels = folder, preprocess, train, max_pixels
        self.scaled_decode, self.exif_orientation = scaled_decode, exif_orientation

    def __len__(self) -> int:
        return len(self.folder)

    def _load(self, path: str, sample_seed: int) -> Tensor:
        if not self.scaled_decode:
            return self.preprocess(decode_file(path, self.max_pixels, self.exif_orientation), sample_seed)
        data = read_bytes(path)
        header = fast_jpeg_header(data, path, self.max_pixels)
        # The scaled path draws its crop box on the stored pixels: a photo its EXIF tag turns is decoded whole.
        if header is not None and not (self.exif_orientation and exif_orientation_of(data) != 1):
            try:
                return self.preprocess.from_jpeg(data, header, sample_seed)
            except ValueError:
                pass  # the full decode and its Pillow fallback decide
        return self.preprocess(decode_pixels(data, path, self.max_pixels, self.exif_orientation), sample_seed)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, sample_seed = key
        skips: list[tuple[str, str]] = []
        # The augmentation follows the sample (its seed), whichever file ended up being read for it.
        index, image = read_sample(self.folder, index, lambda path: self._load(path, sample_seed), skips,
                                   replace=self.train)
        if image is None:
            return Sample(None, -1, skips)
        return Sample(image.permute(1, 2, 0), self.folder.label(index), skips)


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

    def __init__(self, folder, *, scaled_decode: bool = False, **options):
        self.scaled_decode = scaled_decode
        super().__init__(folder, **options)

    def _make_dataset(self):
        return DecodedSamples(self.folder, self.preprocess, self.train, self.max_pixels,
                              scaled_decode=self.scaled_decode and self.train, exif_orientation=self.exif_orientation)

    collate = staticmethod(collate_uint8)

    def _to_device(self, batch: PackedBatch) -> Batch:
        images = batch.images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        labels = batch.labels.to(self.device, non_blocking=True)
        return normalize_batch(images, self.memory_format), labels
