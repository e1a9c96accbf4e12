"""The `gpu` backend: workers only read bytes; JPEGs are decoded in batches by nvJPEG, then cropped on the GPU.

No dependency beyond torchvision (>= 0.19 for the batched `decode_jpeg(list, device='cuda')`). Per batch:
the workers read the files and check each JPEG's header; the main process decodes the batch on `device`,
then crops, resizes and flips the whole batch in a few launches (`batched_resized_crop`: two batched matrix
products with the resize filter's weights; the same draws as the `pytorch` backend), runs AutoAugment per
sample when asked, and normalizes. `batched=False` keeps the per-sample path (about ten launches per image),
the reference the batched one is tested against. Files nvJPEG should not get (PNG and other formats, CMYK,
lossless or arithmetic JPEGs, truncated files, decompression bombs) are decoded by the workers on the CPU; a
JPEG that nvJPEG still refuses is decoded on the CPU in the main process, and a file nobody can read is
skipped like in the `pytorch` backend. With device='cpu' the same code decodes with libjpeg-turbo (what the tests run).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from .base import Batch, FolderLoader
from .decode import (apply_exif_orientation, decode_file, decode_pixels, exif_orientation_of, fast_jpeg_header,
                     read_bytes)
from .folder import read_sample
from .transforms import EvalPreprocess, TrainAugment, interpolation_mode, normalize_batch, resize_size

# Half the filter's support in input pixels at scale 1 (PIL's and torch's antialiased kernels).
FILTER_HALF_SUPPORT = {InterpolationMode.BILINEAR: 1.0, InterpolationMode.BICUBIC: 2.0}
BICUBIC_A = -0.5  # the cubic convolution parameter PIL and torch's antialiased bicubic use
# Float elements of one chunk's padded source windows: batches whose windows would take more (very large
# images) are resampled in several chunks, so the padding never needs more than 1 GiB.
MAX_CHUNK_ELEMENTS = 1 << 28


class Resample(NamedTuple):
    """One sample's geometry: a source window, the size it is resized to, the part of that kept, and a flip.

    window: (top, left, height, width) in the source image; resized: (height, width) the window is resized to;
    offset: (top, left) of the output inside the resized window; flip: mirror the output horizontally.
    """
    window: tuple[int, int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    flip: bool


def _filter(x: Tensor, interpolation: InterpolationMode) -> Tensor:
    x = x.abs()
    if interpolation == InterpolationMode.BILINEAR:
        return (1 - x).clamp_(min=0)
    a = BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(in_sizes: Tensor, out_sizes: Tensor, first: Tensor, count: int, padded: int,
                   interpolation: InterpolationMode) -> Tensor:
    """Antialiased resize weights along one axis, for a batch: float32 (N, count, padded).

    Row i of sample n holds the weights of output pixel first[n] + i of a resize from in_sizes[n] to
    out_sizes[n] pixels over input pixels 0..padded-1 (zero past in_sizes[n]). The algorithm is PIL's and
    torch's `interpolate(..., antialias=True)` (aten/src/ATen/native/UpSample.h,
    _compute_indices_min_size_weights_aa): support = half-width x scale when shrinking, taps from
    trunc(center - support + 0.5) to trunc(center + support + 0.5), weights normalized to sum 1; at scale 1 the
    row is the identity. in_sizes, out_sizes, first: int64 (N,) on the device the weights are wanted on.
    """
    device = in_sizes.device
    in_sizes, out_sizes = in_sizes.float()[:, None, None], out_sizes.float()[:, None, None]
    scale = in_sizes / out_sizes
    shrink = scale >= 1
    support = FILTER_HALF_SUPPORT[interpolation] * torch.where(shrink, scale, torch.ones_like(scale))
    inverse_scale = torch.where(shrink, 1 / scale, torch.ones_like(scale))
    center = scale * (first[:, None, None] + torch.arange(count, device=device)[None, :, None] + 0.5)
    low = torch.trunc(center - support + 0.5).clamp_(min=0)
    high = torch.minimum(torch.trunc(center + support + 0.5), in_sizes)
    taps = torch.arange(padded, device=device, dtype=torch.float32)[None, None, :]
    weights = _filter((taps - center + 0.5) * inverse_scale, interpolation)
    weights = torch.where((taps >= low) & (taps < high), weights, torch.zeros_like(weights))
    return weights / weights.sum(-1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Full fp32 products: TF32 (which training may have switched on) would move pixels by a level or more."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _chunks(plans: Sequence[Resample]) -> list[range]:
    """Consecutive index ranges whose padded float windows fit MAX_CHUNK_ELEMENTS (at least one sample each)."""
    chunks, start, height, width = [], 0, 0, 0
    for k, plan in enumerate(plans):
        new_height, new_width = max(height, plan.window[2]), max(width, plan.window[3])
        if k > start and (k + 1 - start) * 3 * new_height * new_width > MAX_CHUNK_ELEMENTS:
            chunks.append(range(start, k))
            start, new_height, new_width = k, plan.window[2], plan.window[3]
        height, width = new_height, new_width
    chunks.append(range(start, len(plans)))
    return chunks


def batched_resized_crop(images: Sequence[Tensor], plans: Sequence[Resample], size: int,
                         interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> Tensor:
    """Crop, resize (antialiased) and flip a batch of differently sized images in a few launches.

    images: uint8 (3, H_n, W_n), all on one device; plans: one Resample each; returns uint8 (N, 3, size, size).
    Each chunk (usually the whole batch) costs one copy per image into a zero-padded float batch of the
    windows, then two batched matrix products out = Wy @ window @ Wx^T with resize_weights (the flip reverses
    the rows of Wx), rounded to uint8 as torchvision rounds a float resize. The per-sample reference
    (torchvision's resized_crop, resize + center_crop, horizontal_flip) agrees within one level: the CPU's uint8
    kernel uses fixed-point weights, and sums run in another order (tests/test_data_fast_paths.py).
    """
    if not images:
        raise ValueError("batched_resized_crop needs at least one image")
    device = images[0].device
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8, device=device)
    for chunk in _chunks(plans):
        chosen = [plans[k] for k in chunk]
        height, width = max(p.window[2] for p in chosen), max(p.window[3] for p in chosen)
        windows = torch.zeros(len(chosen), 3, height, width, device=device)
        for row, k in enumerate(chunk):
            top, left, h, w = plans[k].window
            windows[row, :, :h, :w].copy_(images[k][:, top:top + h, left:left + w])
        # One host-to-device copy of the geometry, then everything is batched on the device.
        geometry = torch.tensor([[p.window[2], p.window[3], *p.resized, *p.offset, p.flip] for p in chosen],
                                dtype=torch.int64).to(device, non_blocking=True)
        wy = resize_weights(geometry[:, 0], geometry[:, 2], geometry[:, 4], size, height, interpolation)
        wx = resize_weights(geometry[:, 1], geometry[:, 3], geometry[:, 5], size, width, interpolation)
        wx = torch.where(geometry[:, 6, None, None].bool(), wx.flip(1), wx)
        with _ieee_fp32_matmul():
            resized = wy[:, None] @ windows @ wx.transpose(1, 2)[:, None]
        if interpolation == InterpolationMode.BICUBIC:
            resized.clamp_(0, 255)
        out[chunk.start:chunk.stop] = resized.round_()
    return out


def resample_plans(preprocess: TrainAugment | EvalPreprocess, shapes: Sequence[tuple[int, int]],
                   seeds: Sequence[int]) -> tuple[list[Resample], list]:
    """The Resample of each (height, width) image that `preprocess` would apply, and the AutoAugment generators.

    Training: the sample's RandomResizedCrop box resized to image_size, flipped as drawn (TrainAugment.draw).
    Eval: the whole image resized as torchvision's resize(shorter side) sizes it, then the center crop's offset
    (torchvision's center_crop rounding).
    """
    plans, generators = [], []
    for (height, width), seed in zip(shapes, seeds):
        if isinstance(preprocess, TrainAugment):
            box, flip, rng = preprocess.draw(height, width, seed)
            plans.append(Resample(box, (preprocess.image_size,) * 2, (0, 0), flip))
            generators.append(rng)
            continue
        short = resize_size(preprocess.image_size, preprocess.crop_pct)
        if height <= width:
            resized = (short, int(short * width / height))
        else:
            resized = (int(short * height / width), short)
        offset = tuple(int(round((side - preprocess.image_size) / 2.0)) for side in resized)
        plans.append(Resample((0, 0, height, width), resized, offset, False))
    return plans, generators


def preprocess_batch(preprocess: TrainAugment | EvalPreprocess, images: Sequence[Tensor],
                     seeds: Sequence[int]) -> Tensor:
    """`preprocess` applied to each uint8 (3, H, W) image with its sample seed, batched: uint8 (N, 3, S, S).

    The same draws and geometry as calling preprocess(image, seed) image by image (the reference), with the
    crop, resize and flip of all images done by batched_resized_crop; AutoAugment, when on, runs per image.
    """
    plans, generators = resample_plans(preprocess, [tuple(image.shape[-2:]) for image in images], seeds)
    interpolation = preprocess.interpolation
    if isinstance(preprocess, EvalPreprocess):
        interpolation = interpolation_mode(interpolation)
    out = batched_resized_crop(images, plans, preprocess.image_size, interpolation)
    if isinstance(preprocess, TrainAugment) and preprocess.autoaugment is not None:
        out = torch.stack([preprocess.auto_augment(image, rng) for image, rng in zip(out, generators)])
    return out


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

    def __init__(self, folder, *, batched: bool = True, **options):
        self.batched = batched
        super().__init__(folder, **options)

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
        images, labels, seeds, skips = [], [], [], []
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
            images.append(image)
            labels.append(label)
            seeds.append(seed)
        labels = torch.tensor(labels, dtype=torch.int64).to(self.device, non_blocking=True)
        if not images:  # a validation batch of unreadable files only; prefetch_to_device drops it
            return torch.empty(0, 3, 0, 0, device=self.device), labels
        if self.batched:
            images = preprocess_batch(self.preprocess, images, seeds)
        else:
            images = torch.stack([self.preprocess(image, seed) for image, seed in zip(images, seeds)])
        return normalize_batch(images, self.memory_format), labels
