"""NVIDIA's AutoAugment ImageNet policy (`--augmentation autoaugment`), on uint8 image tensors.

The policy of NVIDIA's image_classification/autoaugment.py (after Cubuk et al., arXiv:1805.09501): one of 25
sub-policies drawn uniformly, each two operations applied with their own probability, with NVIDIA's magnitude
tables (11 levels per operation). It differs from torchvision's ImageNet AutoAugment in its sub-policies, in
magnitudes that are not signed around 1 for colour (a factor in 0.1-1.9), in translations in pixels (0-250) and in
its "solarizeadd" operation. Geometric operations pick a random sign and fill with grey 128; translate and rotate
resample with nearest neighbour (PIL's default there), shear bilinearly (NVIDIA's PIL code uses bicubic, which
torchvision's tensor kernels lack; the same geometry, a smoother filter). All draws come from the caller's
random.Random, so a sample's augmentation is a function of its own seed.
"""
from __future__ import annotations

import math
import random

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

FILL = [128.0, 128.0, 128.0]
LEVELS = 11


def _levels(low: float, high: float) -> list[float]:
    return [low + (high - low) * i / (LEVELS - 1) for i in range(LEVELS)]


# Magnitude of each level (NVIDIA's np.linspace tables; posterize rounded to whole bits).
MAGNITUDES = {
    "shearX": _levels(0, 0.3), "shearY": _levels(0, 0.3),
    "translateX": _levels(0, 250), "translateY": _levels(0, 250),
    "rotate": _levels(0, 30), "color": _levels(0.1, 1.9),
    "posterize": [round(v) for v in _levels(0, 4)], "solarize": _levels(0, 256),
    "solarizeadd": _levels(0, 110), "contrast": _levels(0.1, 1.9), "sharpness": _levels(0.1, 1.9),
    "brightness": _levels(0.1, 1.9), "autocontrast": [0] * LEVELS, "equalize": [0] * LEVELS, "invert": [0] * LEVELS,
}

# (probability, operation, level) x 2 for each of NVIDIA's sub-policies, in its order.
POLICIES = (
    ((0.8, "equalize", 1), (0.8, "shearY", 4)), ((0.4, "color", 9), (0.6, "equalize", 3)),
    ((0.4, "color", 1), (0.6, "rotate", 8)), ((0.8, "solarize", 3), (0.4, "equalize", 7)),
    ((0.4, "solarize", 2), (0.6, "solarize", 2)),
    ((0.2, "color", 0), (0.8, "equalize", 8)), ((0.4, "equalize", 8), (0.8, "solarizeadd", 3)),
    ((0.2, "shearX", 9), (0.6, "rotate", 8)), ((0.6, "color", 1), (1.0, "equalize", 2)),
    ((0.4, "invert", 9), (0.6, "rotate", 0)),
    ((1.0, "equalize", 9), (0.6, "shearY", 3)), ((0.4, "color", 7), (0.6, "equalize", 0)),
    ((0.4, "posterize", 6), (0.4, "autocontrast", 7)), ((0.6, "solarize", 8), (0.6, "color", 9)),
    ((0.2, "solarize", 4), (0.8, "rotate", 9)),
    ((1.0, "rotate", 7), (0.8, "translateY", 9)), ((0.0, "shearX", 0), (0.8, "solarize", 4)),
    ((0.8, "shearY", 0), (0.6, "color", 4)), ((1.0, "color", 0), (0.6, "rotate", 2)),
    ((0.8, "equalize", 4), (0.0, "equalize", 8)),
    ((1.0, "equalize", 4), (0.6, "autocontrast", 2)), ((0.4, "shearY", 7), (0.6, "solarizeadd", 7)),
    ((0.8, "posterize", 2), (0.6, "solarize", 10)), ((0.6, "solarize", 8), (0.6, "equalize", 1)),
    ((0.8, "color", 6), (0.4, "rotate", 5)),
)
SIGNED = ("shearX", "shearY", "translateX", "translateY", "rotate")


def apply_op(image: Tensor, name: str, magnitude: float) -> Tensor:
    """One of NVIDIA's operations on a uint8 (3, H, W) tensor (signed magnitudes already carry their sign)."""
    if name in ("shearX", "shearY"):
        # PIL's affine (1, m, 0, 0, 1, 0) shears about the top-left corner, as center=[0, 0] does here.
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if name == "shearX" else [0.0, angle]
        return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=InterpolationMode.BILINEAR, fill=FILL, center=[0, 0])
    if name in ("translateX", "translateY"):
        shift = [-magnitude, 0.0] if name == "translateX" else [0.0, -magnitude]
        return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=FILL)
    if name == "rotate":
        return F.rotate(image, magnitude, interpolation=InterpolationMode.NEAREST, fill=FILL)
    if name == "color":
        return F.adjust_saturation(image, magnitude)
    if name == "contrast":
        return F.adjust_contrast(image, magnitude)
    if name == "sharpness":
        return F.adjust_sharpness(image, magnitude)
    if name == "brightness":
        return F.adjust_brightness(image, magnitude)
    if name == "posterize":
        return F.posterize(image, int(magnitude))
    if name == "solarize":
        # PIL inverts the pixels >= threshold; a threshold of 256 leaves the image as it is.
        return image if magnitude > 255 else F.solarize(image, magnitude)
    if name == "solarizeadd":
        # NVIDIA's solarize_add: pixels below 128 get `magnitude` added (clipped at 255), the others stay.
        added = (image.to(torch.int16) + int(magnitude)).clamp_(max=255).to(image.dtype)
        return torch.where(image < 128, added, image)
    if name == "autocontrast":
        return F.autocontrast(image)
    if name == "equalize":
        return F.equalize(image)
    if name == "invert":
        return F.invert(image)
    raise ValueError(f"unknown AutoAugment operation '{name}'")


class NvidiaAutoAugment:
    """NVIDIA's AutoaugmentImageNetPolicy with its random draws taken from a random.Random."""

    def __call__(self, image: Tensor, rng: random.Random) -> Tensor:
        for probability, name, level in POLICIES[rng.randint(0, len(POLICIES) - 1)]:
            if rng.random() < probability:
                magnitude = MAGNITUDES[name][level]
                if name in SIGNED:
                    magnitude *= rng.choice([-1, 1])
                image = apply_op(image, name, magnitude)
        return image
