"""Decoding and preprocessing: every mode to RGB, one error type, same pixels from both decoders, the recipe's crops."""
import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from test_data_support import bogus_huffman_table, jpeg_bytes, photo

from resnext.data import transforms
from resnext.data.decode import decode_file, fast_jpeg_header, jpeg_header, read_bytes
from resnext.errors import UserError


def test_every_mode_becomes_rgb(tmp_path):
    gray = Image.fromarray(np.full((8, 10), 77, np.uint8))
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[:, :5] = (10, 20, 30, 255)  # left half opaque, right half transparent
    cases = {
        "gray.jpg": (gray, (77, 77, 77)),
        "gray.png": (gray, (77, 77, 77)),
        "cmyk.jpg": (Image.new("CMYK", (10, 8), (0, 0, 0, 0)), (255, 255, 255)),
        "palette.png": (Image.new("RGB", (10, 8), (204, 0, 51)).convert("P"), (204, 0, 51)),  # a web-palette colour
        "rgba.png": (Image.fromarray(rgba), (10, 20, 30)),
        "la.png": (Image.fromarray(np.dstack([np.full((8, 10), 50, np.uint8)] * 2)).convert("LA"), None),
        "gray16.png": (Image.fromarray(np.full((8, 10), 0x8000, np.uint16)), (128, 128, 128)),
    }
    for name, (image, first_pixel) in cases.items():
        image.save(tmp_path / name)
        loaded = transforms.load_image(tmp_path / name)
        assert loaded.mode == "RGB" and loaded.size == (10, 8), name
        if first_pixel is not None:
            assert np.abs(np.asarray(loaded)[0, 0].astype(int) - first_pixel).max() <= 2, name
    # Transparent pixels become white, not whatever colour the encoder left under them.
    assert tuple(np.asarray(transforms.load_image(tmp_path / "rgba.png"))[0, -1]) == (255, 255, 255)
    transparent_palette = Image.new("P", (4, 4), 0)
    transparent_palette.info["transparency"] = 0
    transparent_palette.save(tmp_path / "tp.png", transparency=0)
    assert tuple(np.asarray(transforms.load_image(tmp_path / "tp.png"))[0, 0]) == (255, 255, 255)


def test_unreadable_files_raise_one_error_type(tmp_path, monkeypatch):
    good = jpeg_bytes(Image.fromarray(photo()))
    files = {"empty.jpg": b"", "text.jpg": b"hello, not an image", "truncated.jpg": good[: len(good) // 2],
             "bogus.jpg": bogus_huffman_table(good)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    Image.fromarray(photo(200, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    for name in [*files, "bomb.png"]:
        for read in (transforms.load_image, decode_file):
            with pytest.raises(transforms.UnreadableImageError) as info:
                read(tmp_path / name)
            assert isinstance(info.value, UserError)
            assert info.value.path.endswith(name) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(transforms.UnreadableImageError, match="decompression-bomb"):
        transforms.load_image(tmp_path / "bomb.png")
    # The limit cannot be switched off by accident: None means Pillow's default.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert transforms.load_image(tmp_path / "bomb.png").size == (200, 100)


def test_fast_decoder_gives_pillows_pixels(tmp_path):
    rgb = Image.fromarray(photo(75, 50))
    cases = {"rgb.jpg": jpeg_bytes(rgb), "gray.jpg": jpeg_bytes(rgb.convert("L")),
             "progressive.jpg": jpeg_bytes(rgb, progressive=True), "cmyk.jpg": jpeg_bytes(rgb.convert("CMYK"))}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    rgb.save(tmp_path / "rgb.png")
    for name in [*cases, "rgb.png"]:
        fast = decode_file(tmp_path / name)
        assert fast.dtype == torch.uint8 and fast.shape == (3, 50, 75)
        pillow = torch.from_numpy(np.array(transforms.load_image(tmp_path / name)))
        assert torch.equal(fast.permute(1, 2, 0), pillow), name


def test_jpeg_header_routes_files():
    rgb = Image.fromarray(photo(75, 50))
    baseline, progressive = jpeg_bytes(rgb), jpeg_bytes(rgb, progressive=True)
    assert jpeg_header(baseline) == (75, 50, 3, 0xC0)
    assert jpeg_header(progressive) == (75, 50, 3, 0xC2)
    assert jpeg_header(jpeg_bytes(rgb.convert("L"))).components == 1
    assert jpeg_header(b"\x89PNG\r\n\x1a\n....") is None and jpeg_header(b"") is None

    def fast(data: bytes):
        return fast_jpeg_header(np.frombuffer(data, np.uint8), "x.jpg", 10**6)

    assert fast(baseline) and fast(progressive)
    assert fast(jpeg_bytes(rgb.convert("CMYK"))) is None  # 4 channels: Pillow converts CMYK
    assert fast(baseline[:-100]) is None  # no end-of-image marker: truncated, Pillow decides
    with pytest.raises(transforms.UnreadableImageError, match="decompression-bomb"):
        fast_jpeg_header(np.frombuffer(baseline, np.uint8), "x.jpg", 100)


def test_read_bytes_is_zero_copy_ready(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    data = read_bytes(str(tmp_path / "x.jpg"))
    assert data.dtype == np.uint8 and data.flags.writeable


def test_eval_transform_matches_torchvision_reference():
    image = Image.fromarray(photo(500, 375))
    out = transforms.eval_transform(224, 0.875, "bilinear")(image)
    reference = T.Compose([T.PILToTensor(), T.Resize(256, antialias=True), T.CenterCrop(224),
                           T.ToDtype(torch.float32, scale=True),
                           T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)])(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=1e-5)
    assert transforms.resize_size(224, 0.875) == 256 and transforms.resize_size(32, 0.875) == 37
    bicubic = transforms.eval_transform(32, 1.0, "bicubic")(image.convert("L"))
    assert bicubic.shape == (3, 32, 32)
    with pytest.raises(UserError, match="interpolation"):
        transforms.eval_transform(interpolation="lanczos")
    with pytest.raises(UserError, match="crop_pct"):
        transforms.eval_transform(crop_pct=1.5)


def test_normalize_batch_values_and_memory_format():
    pixels = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # NHWC memory
    mean = torch.tensor(transforms.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(transforms.IMAGENET_STD).view(1, 3, 1, 1)
    expected = (pixels.float() / 255 - mean) / std
    for memory_format in (torch.contiguous_format, torch.channels_last):
        out = transforms.normalize_batch(pixels, memory_format)
        assert out.dtype == torch.float32 and out.is_contiguous(memory_format=memory_format)
        assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError):
        transforms.normalize_batch(pixels.permute(0, 2, 3, 1))


def test_random_resized_crop_statistics_match_recipe():
    """Scale and aspect of our boxes: inside the recipe's bounds and distributed like torchvision's."""
    height, width, n = 375, 500, 4000
    rng = random.Random(0)
    ours = [transforms.random_resized_crop_box(height, width, rng) for _ in range(n)]
    torch.manual_seed(0)
    reference = [T.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
                 for _ in range(n)]

    def stats(boxes):
        scales = np.array([h * w / (height * width) for _, _, h, w in boxes])
        log_ratios = np.array([math.log(w / h) for _, _, h, w in boxes])
        return scales, log_ratios

    scales, log_ratios = stats(ours)
    ref_scales, ref_log_ratios = stats(reference)
    assert scales.min() >= 0.08 * 0.95 and scales.max() <= 1.0
    assert log_ratios.min() >= math.log(3 / 4) - 0.02 and log_ratios.max() <= math.log(4 / 3) + 0.02
    assert abs(scales.mean() - ref_scales.mean()) < 0.02 and abs(scales.std() - ref_scales.std()) < 0.02
    assert abs(log_ratios.mean() - ref_log_ratios.mean()) < 0.02
    for top, left, h, w in ours:
        assert 0 <= top <= height - h and 0 <= left <= width - w
    deciles = np.linspace(0.1, 0.9, 9)
    assert np.abs(np.quantile(scales, deciles) - np.quantile(ref_scales, deciles)).max() < 0.03
    assert np.abs(np.quantile(log_ratios, deciles) - np.quantile(ref_log_ratios, deciles)).max() < 0.03
    # An image too wide for the ratio range falls back to the largest central box within it.
    assert transforms.random_resized_crop_box(10, 1000, random.Random(0), scale=(0.99, 1.0)) == (0, 493, 10, 13)


def test_train_augment_depends_on_the_sample_seed_only():
    image = torch.from_numpy(photo(80, 60)).permute(2, 0, 1)
    for augmentation in (None, "autoaugment"):
        augment = transforms.TrainAugment(32, "bilinear", augmentation)
        state = torch.get_rng_state()
        first, again, other = augment(image, 12345), augment(image, 12345), augment(image, 54321)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
        assert first.shape == (3, 32, 32) and first.dtype == torch.uint8
        assert torch.equal(first, again) and not torch.equal(first, other)
    flips = [transforms.TrainAugment(8)(torch.arange(64, dtype=torch.uint8).view(1, 8, 8).expand(3, 8, 8), seed)
             for seed in range(200)]
    assert 70 < sum(bool(f[0, 0, 0] > f[0, 0, -1]) for f in flips) < 130  # flipped about half the time
    with pytest.raises(UserError, match="augmentation"):
        transforms.TrainAugment(32, augmentation="randaugment")
