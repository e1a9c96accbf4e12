"""The `gpu` backend: workers only read bytes; JPEGs are decoded in batches by nvJPEG, then cropped on the GPU.

No dependency beyond torchvision (>= 0.19 for the batched `decode_jpeg(list, device='cuda')`). Per batch:
the workers read the files and check each JPEG's header; the main process decodes the batch on `device`,
then runs the same per-sample crop/resize/flip (and AutoAugment) as the `pytorch` backend, on the device,
and normalizes. Files nvJPEG should not get (PNG and other formats, CMYK, lossless or arithmetic JPEGs,
truncated files, decompression bombs) are decoded by the workers on the CPU; a JPEG that nvJPEG still
refuses is decoded on the CPU in the main process, and a file nobody can read is skipped like in the
`pytorch` backend. With device='cpu' the same code decodes with libjpeg-turbo (what the tests run).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from .base import Batch, FolderLoader
from .decode import (apply_exif_orientation, decode_file, decode_pixels, exif_orientation_of, fast_jpeg_header,
                     read_bytes)
from .folder import read_sample
from .transforms import normalize_batch


class EncodedSample(NamedTuple):
    payload: Tensor | None  # JPEG bytes (1-D uint8) when `encoded`, else decoded pixels (3, H, W) uint8
    encoded: bool
    orientation: int  # EXIF orientation (1-8) still to apply after decoding the bytes on the device; 1: none
    index: int  # the dataset index actually read (a replacement's in training)
    label: int
    seed: int
    skips: list[tuple[str, str]]


class EncodedBatch(NamedTuple):
    jpeg_bytes: Tensor  # the encoded payloads, concatenated
    jpeg_offsets: list[int]  # payload k is jpeg_bytes[jpeg_offsets[k]:jpeg_offsets[k + 1]]
    pixels: list[Tensor]  # the payloads decoded on the CPU
    encoded: list[bool]  # per kept sample: which of the two lists it is in
    orientations: list[int]
    indices: list[int]
    seeds: list[int]
    labels: Tensor  # int64 (N,)
    skips: list[tuple[str, str]]
    missing: int


class EncodedSamples(torch.utils.data.Dataset):
    def __init__(self, folder, train: bool, max_pixels: int, exif_orientation: bool = False):
        self.folder, self.train, self.max_pixels = folder, train, max_pixels
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.folder)

    def _read(self, path: str) -> tuple[Tensor, bool, int]:
        data = read_bytes(path)
        if fast_jpeg_header(data, path, self.max_pixels) is not None:
            # nvJPEG ignores EXIF orientation (torchvision's apply_exif_orientation is CPU-only): the worker reads
            # the tag from the header and the device turns the decoded pixels.
            return torch.from_numpy(data), True, exif_orientation_of(data) if self.exif_orientation else 1
        return decode_pixels(data, path, self.max_pixels, self.exif_orientation), False, 1

    def __getitem__(self, key: tuple[int, int]) -> EncodedSample:
        index, sample_seed = key
        skips: list[tuple[str, str]] = []
        index, read = read_sample(self.folder, index, self._read, skips, replace=self.train)
        if read is None:
            return EncodedSample(None, False, 1, index, -1, sample_seed, skips)
        return EncodedSample(read[0], read[1], read[2], index, self.folder.label(index), sample_seed, skips)


def collate_encoded(samples: list[EncodedSample]) -> EncodedBatch:
    kept = [s for s in samples if s.payload is not None]
    jpegs = [s.payload for s in kept if s.encoded]
    offsets = [0]
    for payload in jpegs:
        offsets.append(offsets[-1] + payload.numel())
    # One tensor for all the bytes: one shared-memory transfer per batch instead of one per file.
    jpeg_bytes = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)
    return EncodedBatch(jpeg_bytes, offsets, [s.payload for s in kept if not s.encoded], [s.encoded for s in kept],
                        [s.orientation for s in kept], [s.index for s in kept], [s.seed for s in kept],
                        torch.tensor([s.label for s in kept], dtype=torch.int64),
                        [skip for s in samples for skip in s.skips], len(samples) - len(kept))


class GpuLoader(FolderLoader):
    backend = "gpu"
    pin_memory = False  # encoded bytes go to nvJPEG from host memory; only decoded pixels cross, and rarely

    def _make_dataset(self):
        return EncodedSamples(self.folder, self.train, self.max_pixels, self.exif_orientation)

    collate = staticmethod(collate_encoded)

    def _decode_jpegs(self, payloads: list[Tensor]) -> list[Tensor | None]:
        """Decode on `device` in one batched call; when it raises, file by file (None where that fails too)."""
        if not payloads:
            return []
        if self.device.type == "cuda":
            # nvJPEG writes into fresh allocations from its own stream, which does not wait for this (side) stream:
            # memory the previous batch's resize kernels still read could be handed out again. Let them finish.
            torch.cuda.current_stream(self.device).synchronize()
        try:
            return list(decode_jpeg(payloads, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass
        decoded: list[Tensor | None] = []
        for payload in payloads:
            try:
                decoded.append(decode_jpeg(payload, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                decoded.append(None)
        return decoded

    def _to_device(self, batch: EncodedBatch) -> Batch:
        offsets = batch.jpeg_offsets
        jpegs = iter(self._decode_jpegs([batch.jpeg_bytes[offsets[k]:offsets[k + 1]]
                                         for k in range(len(offsets) - 1)]))
        pixels = iter(batch.pixels)
        images, labels, skips = [], [], []
        for encoded, orientation, index, label, seed in zip(batch.encoded, batch.orientations, batch.indices,
                                                            batch.labels.tolist(), batch.seeds):
            image = next(jpegs) if encoded else next(pixels).to(self.device, non_blocking=True)
            if image is not None:
                image = apply_exif_orientation(image, orientation)
            else:  # the device decoder refused it: the CPU decoders decide, as in the pytorch backend
                index, image = read_sample(
                    self.folder, index, lambda path: decode_file(path, self.max_pixels, self.exif_orientation), skips,
                    replace=self.train)
                self.record_skips(skips)
                if image is None:
                    if self.train:
                        self.raise_damaged(skips[-1][0])
                    continue
                image, label = image.to(self.device), self.folder.label(index)
            images.append(self.preprocess(image, seed))
            labels.append(label)
        labels = torch.tensor(labels, dtype=torch.int64).to(self.device, non_blocking=True)
        if not images:  # a validation batch of unreadable files only; prefetch_to_device drops it
            return torch.empty(0, 3, 0, 0, device=self.device), labels
        return normalize_batch(torch.stack(images), self.memory_format), labels
