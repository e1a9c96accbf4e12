"""Helpers for the data tests: image writers and a folder of broken files (the embedded dataset: conftest)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from optional import needs_dali  # noqa: F401  (re-exported for the data tests)
from PIL import Image


def photo(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth RGB test picture (gradients plus a few shapes), so resizes and crops have something to show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels += rng.normal(0, 8, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def bogus_huffman_table(data: bytes) -> bytes:
    """A JPEG whose first Huffman table claims more codes than exist: its header is fine, every decoder fails."""
    start = data.index(b"\xff\xc4")
    return data[:start + 5] + b"\xff" * 16 + data[start + 21:]


def write_good_images(class_dir: Path, count: int, seed: int = 0) -> None:
    class_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(photo(40 + 4 * i, 30 + 3 * i, seed + i)).save(class_dir / f"good_{i:02d}.jpg", quality=90)


def make_broken_dataset(root: Path) -> dict[str, str]:
    """train/ and val/ of classes a and b with good images plus every kind of bad file in train/a and val/a.

    Returns {file name: what is wrong} for the unreadable ones. Also present and readable: grayscale, CMYK,
    progressive JPEGs, palette / alpha PNGs; and ignored: a hidden file and a non-image file (reported).
    """
    broken = {
        "empty.jpg": "zero bytes",
        "text.jpg": "not an image",
        "truncated.jpg": "truncated",
        "bogus_huffman.jpg": "corrupt inside a valid header",
        "bomb.png": "over the pixel limit set by the tests",
    }
    good_jpeg = jpeg_bytes(Image.fromarray(photo(64, 48, 7)))
    for split in ("train", "val"):
        write_good_images(root / split / "a", 6)
        write_good_images(root / split / "b", 8, seed=100)
        a = root / split / "a"
        (a / "empty.jpg").write_bytes(b"")
        (a / "text.jpg").write_text("this is not a picture\n")
        (a / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
        (a / "bogus_huffman.jpg").write_bytes(bogus_huffman_table(good_jpeg))
        Image.fromarray(photo(120, 100)).save(a / "bomb.png")  # 12,000 pixels; tests set the limit to 10,000
        Image.fromarray(photo(50, 40)).convert("L").save(a / "gray.jpg")
        Image.fromarray(photo(50, 40)).convert("CMYK").save(a / "cmyk.jpg")
        (a / "progressive.jpg").write_bytes(jpeg_bytes(Image.fromarray(photo(52, 44)), progressive=True))
        Image.fromarray(photo(30, 30)).convert("P").save(a / "palette.png")
        Image.fromarray(np.dstack([photo(30, 30), np.full((30, 30), 128, np.uint8)])).save(a / "alpha.png")
        (a / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (a / "notes.txt").write_text("labels were checked by hand\n")
    return broken


BOMB_LIMIT = 10_000
