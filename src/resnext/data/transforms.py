"""The recipe's preprocessing, shared by every backend that runs in PyTorch and by evaluate/predict/export.

Train (NVIDIA's recipe): RandomResizedCrop (area 0.08-1, aspect 3/4-4/3) to `image_size`, horizontal flip
with probability 1/2, optional AutoAugment (NVIDIA's ImageNet policy, data/autoaugment.py). Eval: resize the
shorter side to round(image_size / crop_pct), center crop `image_size`. Both resize with antialiasing. Normalization with
ImageNet's mean/std runs on the device, on uint8 batches (`normalize_batch`).

The crop box, the flip and the AutoAugment choices of a sample are drawn from a generator seeded with that
sample's own seed (see sampling.sample_seeds), so they do not depend on which process or worker ran it,
nor on where an epoch was resumed. The pixel work is torchvision's tensor functions, so the CPU workers of the
`pytorch` backend and the GPU of the `gpu` backend run the same code.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ..errors import UserError
from ..recipe import AUGMENTATIONS as TRAIN_AUGMENTATIONS
from .decode import JpegHeader, UnreadableImageError, decode_jpeg_scaled, load_image, to_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "AUGMENTATIONS", "UnreadableImageError", "load_image",
           "eval_transform", "normalize_batch", "eval_resize_crop", "random_resized_crop_box", "TrainAugment",
           "EvalPreprocess", "resize_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
PIL_FILTERS = {InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
               InterpolationMode.BICUBIC: Image.Resampling.BICUBIC}
AUGMENTATIONS = (None, *TRAIN_AUGMENTATIONS)


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise UserError(f"unknown interpolation '{name}'; choose {' or '.join(INTERPOLATIONS)}.") from None


def resize_size(image_size: int, crop_pct: float) -> int:
    """The shorter side before the eval center crop: 256 for 224 at crop_pct 0.875 (NVIDIA's image size + 32)."""
    if not 0.0 < crop_pct <= 1.0:
        raise UserError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    return round(image_size / crop_pct)


def random_resized_crop_box(height: int, width: int, rng: random.Random,
                            scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a RandomResizedCrop: torchvision's algorithm, drawn from `rng`.

    Ten tries at a box of random area fraction in `scale` and log-uniform aspect ratio in `ratio` that fits
    the image; then the largest central box within the ratio bounds.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return rng.randint(0, height - crop_height), rng.randint(0, width - crop_width), crop_height, crop_width
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_width, crop_height = int(round(height * max(ratio))), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


class TrainAugment:
    """Crop, flip and (optionally) AutoAugment one uint8 (3, H, W) image, on whatever device it lives on.

    `draw` takes a sample's random choices from its seed, `apply` does the pixel work; `__call__` is both.
    `from_jpeg` is the same augmentation reading a JPEG's bytes: the box is drawn from the header's size, then
    only as much of the image is decoded as the output needs (decode.decode_jpeg_scaled).
    """

    def __init__(self, image_size: int, interpolation: str = "bilinear", augmentation: str | None = None):
        if augmentation not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation '{augmentation}'; choose autoaugment or none.")
        self.image_size = image_size
        self.interpolation = interpolation_mode(interpolation)
        self.autoaugment = None
        if augmentation == "autoaugment":
            from .autoaugment import NvidiaAutoAugment

            self.autoaugment = NvidiaAutoAugment()

    def draw(self, height: int, width: int,
             sample_seed: int) -> tuple[tuple[int, int, int, int], bool, random.Random]:
        """(crop box (top, left, height, width), flip, the generator for the rest) of a height x width image."""
        rng = random.Random(sample_seed)
        box = random_resized_crop_box(height, width, rng)
        return box, rng.random() < 0.5, rng

    def apply(self, image: Tensor, box: tuple[int, int, int, int], flip: bool, rng: random.Random) -> Tensor:
        """Crop `box` of `image`, resize it to image_size (antialiased), flip, AutoAugment with `rng`."""
        image = F.resized_crop(image, *box, [self.image_size, self.image_size], interpolation=self.interpolation,
                               antialias=True)
        return self.flip_and_augment(image, flip, rng)

    def flip_and_augment(self, image: Tensor, flip: bool, rng: random.Random) -> Tensor:
        """The resized crop, flipped when `flip`, then AutoAugmented (when on) with `rng`."""
        if flip:
            image = F.horizontal_flip(image)
        return self.auto_augment(image, rng)

    def auto_augment(self, image: Tensor, rng: random.Random) -> Tensor:
        """AutoAugment (when on) the cropped image, its choices drawn from `rng`; the image itself when off."""
        if self.autoaugment is not None:
            image = self.autoaugment(image, rng)  # NVIDIA's order: crop, flip, then AutoAugment
        return image

    def __call__(self, image: Tensor, sample_seed: int) -> Tensor:
        return self.apply(image, *self.draw(image.shape[-2], image.shape[-1], sample_seed))

    def from_jpeg(self, data: np.ndarray, header: JpegHeader, sample_seed: int) -> Tensor:
        """The same draws as __call__ on the decoded image, from the file's bytes; ValueError if it cannot decode.

        At full scale the pixels are __call__'s exactly. Decoded at 1/d, the crop box is fractional: Pillow's
        resize takes such a box (its antialiased filter is the one torch ported, same weights), then the flip
        and AutoAugment run as in apply.
        """
        box, flip, rng = self.draw(header.height, header.width, sample_seed)
        pixels, box, denominator = decode_jpeg_scaled(data, header, box, self.image_size)
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if denominator == 1:
            return self.apply(image, tuple(int(side) for side in box), flip, rng)
        top, left, height, width = box
        resized = Image.fromarray(pixels).resize((self.image_size, self.image_size), PIL_FILTERS[self.interpolation],
                                                 box=(left, top, left + width, top + height))
        return self.flip_and_augment(torch.from_numpy(np.array(resized)).permute(2, 0, 1), flip, rng)


def eval_resize_crop(image: Tensor, image_size: int = 224, crop_pct: float = 0.875,
                     interpolation: str = "bilinear") -> Tensor:
    """Resize the shorter side to round(image_size / crop_pct) and center crop image_size (uint8 stays uint8)."""
    image = F.resize(image, [resize_size(image_size, crop_pct)], interpolation=interpolation_mode(interpolation),
                     antialias=True)
    return F.center_crop(image, [image_size, image_size])


class EvalPreprocess:
    """eval_resize_crop as a per-sample callable with the same signature as TrainAugment (the seed is unused)."""

    def __init__(self, image_size: int, crop_pct: float = 0.875, interpolation: str = "bilinear"):
        resize_size(image_size, crop_pct)
        interpolation_mode(interpolation)
        self.image_size, self.crop_pct, self.interpolation = image_size, crop_pct, interpolation

    def __call__(self, image: Tensor, sample_seed: int = 0) -> Tensor:
        return eval_resize_crop(image, self.image_size, self.crop_pct, self.interpolation)


_STATS: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _mean_std_255(device: torch.device) -> tuple[Tensor, Tensor]:
    # Cached per device: building them per batch would cost a host-to-device copy (and a sync) every step.
    if device not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN).mul(255).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).mul(255).view(1, 3, 1, 1)
        _STATS[device] = (mean.to(device), std.to(device))
    return _STATS[device]


def normalize_batch(images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """uint8 (N, 3, H, W) images (any strides, any device) -> float32 normalized with ImageNet mean/std.

    The result is laid out in `memory_format` (torch.channels_last for NHWC); the layout change happens on
    the uint8 data, a quarter of the bytes of the float result.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize_batch expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
    mean, std = _mean_std_255(images.device)
    # One converting copy into the result's layout, then two in-place passes: the same numbers as
    # .contiguous().float().sub(mean).div(std), in half the time on a CPU (one pass over the uint8 data).
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
    return out.copy_(images).sub_(mean).div_(std)


class _EvalTransform:
    def __init__(self, image_size: int, crop_pct: float, interpolation: str, exif_orientation: bool):
        self.preprocess = EvalPreprocess(image_size, crop_pct, interpolation)
        self.exif_orientation = exif_orientation

    def __call__(self, image: Image.Image) -> Tensor:
        if self.exif_orientation:
            image = ImageOps.exif_transpose(image)
        pixels = F.pil_to_tensor(to_rgb(image))
        return normalize_batch(self.preprocess(pixels).unsqueeze(0))[0]

    def __repr__(self) -> str:
        p = self.preprocess
        return (f"eval_transform(image_size={p.image_size}, crop_pct={p.crop_pct}, interpolation='{p.interpolation}', "
                f"exif_orientation={self.exif_orientation})")


def eval_transform(image_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bilinear",
                   exif_orientation: bool = False):
    """A callable PIL image -> normalized float (3, image_size, image_size) tensor: exactly the loaders' eval path.

    exif_orientation: turn the image upright by its EXIF tag first (the loaders' --exif-orientation; off by
    default, as the loaders). For people's photos use resnext.Preprocessing, which applies it by default.
    """
    return _EvalTransform(image_size, crop_pct, interpolation, exif_orientation)
