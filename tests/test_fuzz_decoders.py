"""Decoder fuzzing: random and mutated bytes posing as image files never crash a decoder or a loader worker and
never hang an epoch; every file that cannot be read is skipped and counted.

The seeds are real images (the embedded data re-encoded as baseline, progressive, grayscale and CMYK JPEG, PNG with
and without palette, transparency or 16 bits, BMP, GIF, TIFF, WebP); hypothesis truncates them, flips, overwrites
and inserts bytes, splices them, or writes bytes of its own.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnext.data import create_loader
from resnext.data.decode import UnreadableImageError, decode_file, load_image
from resnext.data.transforms import EvalPreprocess, TrainAugment

SIZE = 32
# Pillow warns about the damage it reads past (corrupt EXIF, short tags): expected here by construction.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _encodings() -> dict[str, bytes]:
    """One small real photo in every format and flavour the decoders handle."""
    from resnext.data import embedded

    photo = Image.open(sorted((embedded.materialize() / "train" / "coat").iterdir())[0]).convert("RGB")
    photo = photo.resize((37, 29))  # odd sizes, not square
    variants = {
        "baseline.jpg": (photo, "JPEG", {}), "progressive.jpg": (photo, "JPEG", {"progressive": True}),
        "gray.jpg": (photo.convert("L"), "JPEG", {}), "cmyk.jpg": (photo.convert("CMYK"), "JPEG", {}),
        "rgb.png": (photo, "PNG", {}), "palette.png": (photo.convert("P"), "PNG", {"transparency": 0}),
        "rgba.png": (photo.convert("RGBA"), "PNG", {}), "16bit.png": (photo.convert("I;16"), "PNG", {}),
        "image.bmp": (photo, "BMP", {}), "image.gif": (photo, "GIF", {}), "image.tiff": (photo, "TIFF", {}),
        "image.webp": (photo, "WEBP", {}),
    }
    encoded = {}
    for name, (image, fmt, options) in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        encoded[name] = buffer.getvalue()
    return encoded


SEEDS = _encodings()


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            data = data[:at]
        elif op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # a piece of another format's file in the middle of this one
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            data[at:] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(data)


files = st.one_of(
    st.binary(max_size=512),  # noise, empty files included
    st.sampled_from(sorted(SEEDS)).flatmap(lambda name: mutated(SEEDS[name])),
    st.sampled_from([s[:16] for s in SEEDS.values()]).flatmap(lambda head: st.binary(max_size=256).map(head.__add__)),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=files)
def test_decoders_return_pixels_or_one_error_type(data, tmp_path):
    path = tmp_path / "fuzzed.jpg"
    path.write_bytes(data)
    try:
        pixels = decode_file(path)  # the loaders' decoder: libjpeg-turbo first, Pillow for the rest
    except UnreadableImageError:
        pixels = None
    if pixels is not None:
        assert pixels.dtype.is_floating_point is False and pixels.ndim == 3 and pixels.shape[0] == 3
        assert min(pixels.shape[1:]) >= 1
        # A decodable file of any shape goes through both preprocessing paths.
        assert TrainAugment(SIZE)(pixels, 0).shape == (3, SIZE, SIZE)
        assert EvalPreprocess(SIZE)(pixels).shape == (3, SIZE, SIZE)
    try:
        image = load_image(io.BytesIO(data))  # evaluate / predict / serve's decoder
    except UnreadableImageError:
        return
    assert image.mode == "RGB" and min(image.size) >= 1


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    # A 20-byte-per-row PNG header that claims 100,000 x 100,000 pixels.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(UnreadableImageError, match="decompression"):
        decode_file(path)
    with pytest.raises(UnreadableImageError, match="decompression"):
        load_image(path)


GOOD = ["baseline.jpg", "rgb.png", "gray.jpg", "progressive.jpg"]


def dataset(root: Path, fuzzed: list[bytes]) -> tuple[set[str], set[str]]:
    """Two class folders: the good seeds and the fuzzed files, interleaved; returns (good paths, fuzzed paths)."""
    good, bad = set(), set()
    for index, name in enumerate(GOOD):
        path = root / ("a", "b")[index % 2] / f"good{index}{Path(name).suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(SEEDS[name])
        good.add(str(path))
    for index, data in enumerate(fuzzed):
        path = root / ("a", "b")[index % 2] / f"fuzzed{index}.jpg"
        path.write_bytes(data)
        bad.add(str(path))
    return good, bad


@pytest.mark.timeout(240)  # a hung worker fails the test here instead of stalling CI
@pytest.mark.parametrize("backend", ["pytorch", "gpu"])  # DALI: see docs/reliability.md
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(fuzzed=st.lists(files, min_size=4, max_size=8))
def test_loader_workers_skip_and_count_unreadable_files(tmp_path_factory, backend, fuzzed):
    root = tmp_path_factory.mktemp("fuzzed")
    good, bad = dataset(root, fuzzed)
    # Validation: every file is either yielded or skipped, never both, never lost; good files are never skipped.
    val = create_loader(backend, root, train=False, batch_size=4, image_size=SIZE, workers=2, device="cpu")
    yielded = sum(len(labels) for _, labels in val)
    skipped = {path for path, _ in val.skipped}
    assert skipped <= bad and yielded + len(skipped) == len(good) + len(bad)
    # Training: unreadable files are replaced, every batch is full, the epoch completes.
    train = create_loader(backend, root, train=True, batch_size=4, image_size=SIZE, workers=2, device="cpu")
    batches = [images.shape for images, _ in train]
    assert batches == [(4, 3, SIZE, SIZE)] * len(train)
    assert {path for path, _ in train.skipped} <= bad
    assert all(np.isfinite(images.numpy()).all() for images, _ in train)
