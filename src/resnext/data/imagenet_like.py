"""An ImageNet-like JPEG folder for loader benchmarks: ~500x375 photos of ~110 KB, like ImageNet's average file.

Decode cost grows with pixels and bytes, so a benchmark on the 28x28 embedded images says nothing about
ImageNet. This builds train/ and val/ class folders from the real photos bundled with scikit-image (an
optional dependency: `pip install 'resnext[bench]'`), each file a different random crop (25-100% of the
photo, aspect 3/4-4/3), 500x375 or 375x500, randomly flipped and colour-jittered, with mild sensor-like
noise so that it compresses like a camera photo (JPEG quality 95, 4:2:0).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ..errors import UserError
from .folder import build_folder_atomically

# Colour photos that ship inside scikit-image (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle")
NOISE_SIGMA = 9.0
QUALITY = 95


def _photos() -> list[Image.Image]:
    try:
        data = importlib.import_module("skimage.data")
    except ImportError:
        raise UserError("building the ImageNet-like folder needs scikit-image; install it with "
                        "`pip install 'resnext[bench]'`.") from None
    photos = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        photos.append(Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB"))
    return photos


def _photo_like(source: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = source.size
    area, aspect = rng.uniform(0.25, 1.0) * width * height, rng.uniform(3 / 4, 4 / 3)
    crop_w, crop_h = min(width, int(np.sqrt(area * aspect))), min(height, int(np.sqrt(area / aspect)))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    size = (500, 375) if rng.random() < 0.75 else (375, 500)
    image = source.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, NOISE_SIGMA, (size[1], size[0], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_imagenet_like(dest: str | os.PathLike, classes: int = 10, per_class: int = 100, val_per_class: int = 10,
                       seed: int = 0) -> Path:
    """Write DEST/train/<class>/*.jpg (`per_class` each) and DEST/val/<class>/*.jpg (`val_per_class` each).

    Class k's images come from bundled photo k mod 8. The folder appears complete or not at all; DEST must be
    new or empty. Takes about 30 ms per image on one core.
    """
    for name, value in (("classes", classes), ("per_class", per_class), ("val_per_class", val_per_class)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}.")
    photos = _photos()

    def fill(root: Path) -> None:
        for split, count in (("train", per_class), ("val", val_per_class)):
            for label in range(classes):
                class_dir = root / split / f"class_{label:04d}"
                class_dir.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, label, i, split == "val"])
                    image = _photo_like(photos[label % len(photos)], rng)
                    image.save(class_dir / f"{split}_{label:04d}_{i:05d}.jpg", "JPEG", quality=QUALITY)

    return build_folder_atomically(Path(dest).expanduser(), fill)
