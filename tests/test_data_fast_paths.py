"""The fast data paths against their references: scaled JPEG decoding (pytorch backend), the gpu backend's batched
crop/resize/flip, the cheaper normalization, and `resnext benchmark --data-only --compare torchvision`."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from optional import needs_skimage
from PIL import Image

from resnext.data import create_loader
from resnext.data import gpu as gpu_module
from resnext.data.decode import dct_scale_denominator, decode_pixels, fast_jpeg_header
from resnext.data.gpu import preprocess_batch
from resnext.data.imagenet_like import _photos
from resnext.data.pytorch import DecodedSamples
from resnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, TrainAugment, normalize_batch
from resnext.training import train

from test_train import final_state, tiny_config

# Scaled decoding against decode-everything-then-crop-and-resize, in 0-255 levels per image (docs/data.md).
SCALED_MEAN_TOLERANCE = 3.5  # mean absolute difference of one crop (measured: at most 2.94)
SCALED_P99_TOLERANCE = 24  # 99th percentile of the absolute differences of one crop (measured: <= 18)
SCALED_OVERALL_MEAN_TOLERANCE = 1.25  # mean over all the crops (measured: 0.91)


def photo_jpeg(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator, **save) -> bytes:
    """A real photo at `size` with camera-like noise (as `make-imagenet-like` makes them), encoded with `save`."""
    pixels = np.asarray(photo.resize(size, Image.BICUBIC), dtype=np.float32)
    noisy = np.clip(pixels + rng.normal(0.0, 9.0, pixels.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    if save.pop("gray", False):
        image = image.convert("L")
    stream = io.BytesIO()
    image.save(stream, "JPEG", quality=save.pop("quality", 90), **save)
    return stream.getvalue()


ENCODINGS = {"baseline 4:2:0": {}, "baseline 4:4:4": {"subsampling": 0}, "baseline 4:2:2": {"subsampling": 1},
             "progressive 4:2:0": {"progressive": True}, "grayscale": {"gray": True}}
SIZES = ((1600, 1200), (900, 1200), (2001, 1333), (500, 375))


@pytest.fixture(scope="module")
def jpegs() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    photos = _photos()
    files = []
    for k, size in enumerate(SIZES):
        for name, save in ENCODINGS.items():
            data = photo_jpeg(photos[(k + len(files)) % len(photos)], size, rng, **save)
            files.append((f"{name} {size[0]}x{size[1]}", np.frombuffer(data, dtype=np.uint8).copy()))
    return files


@needs_skimage  # the test photos ship inside scikit-image
def test_scaled_decode_matches_the_full_decode_within_tolerance(jpegs):
    """DCT-scaled decoding then resizing agrees with decoding everything; at full scale it is bit-identical."""
    means, scaled_by = [], {1: 0, 2: 0, 4: 0, 8: 0}
    for name, data in jpegs:
        header = fast_jpeg_header(data, name, 10**9)
        assert header is not None, name
        full = decode_pixels(data, name)
        for image_size in (224, 128, 64):
            augment = TrainAugment(image_size)
            for seed in range(4):
                box, _, _ = augment.draw(header.height, header.width, seed)
                denominator = dct_scale_denominator(box[2], box[3], image_size)
                scaled_by[denominator] += 1
                fast, reference = augment.from_jpeg(data, header, seed), augment(full, seed)
                assert fast.shape == reference.shape == (3, image_size, image_size) and fast.dtype == torch.uint8
                diff = (fast.int() - reference.int()).abs().float()
                if denominator == 1:
                    assert torch.equal(fast, reference), (name, image_size, seed)
                    continue
                assert diff.mean() <= SCALED_MEAN_TOLERANCE, (name, image_size, seed, float(diff.mean()))
                assert diff.flatten().quantile(0.99) <= SCALED_P99_TOLERANCE, (name, image_size, seed)
                means.append(float(diff.mean()))
    assert all(count > 0 for count in scaled_by.values()), scaled_by  # every scale was exercised
    assert np.mean(means) <= SCALED_OVERALL_MEAN_TOLERANCE, np.mean(means)


@needs_skimage  # the test photos ship inside scikit-image
def test_scaled_decode_keeps_the_draws_and_autoaugment(jpegs):
    """Flip and AutoAugment follow the same draws as the full path (at full scale: identical outputs)."""
    name, data = next((n, d) for n, d in jpegs if n.endswith("500x375"))
    header = fast_jpeg_header(data, name, 10**9)
    augment = TrainAugment(224, augmentation="autoaugment")
    full = decode_pixels(data, name)
    for seed in range(6):
        assert torch.equal(augment.from_jpeg(data, header, seed), augment(full, seed))


def test_dct_scale_is_chosen_only_when_the_crop_keeps_the_output_size():
    assert dct_scale_denominator(447, 1000, 224) == 1
    assert dct_scale_denominator(448, 448, 224) == 2
    assert dct_scale_denominator(1000, 900, 224) == 4
    assert dct_scale_denominator(1792, 1800, 224) == 8
    assert dct_scale_denominator(5000, 5000, 224) == 8  # libjpeg's smallest scale


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def photo_dataset(root: Path, size: tuple[int, int], seed: int) -> Path:
    """A two-class dataset of real photos as JPEGs of `size`: 16 training and 2 validation images."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    for split, count in (("train", 16), ("val", 2)):
        for k in range(count):
            write(root / split / f"c{k % 2}" / f"{k}.jpg", photo_jpeg(photos[k % 8], size, rng))
    return root


@needs_skimage  # the test photos ship inside scikit-image
def test_files_the_scaled_path_cannot_take_fall_back_to_the_full_path(tmp_path, jpegs):
    """CMYK JPEGs, PNGs and JPEGs simplejpeg refuses go through today's decoders; broken files stay unreadable."""
    rng = np.random.default_rng(1)
    photo = _photos()[0]
    cmyk = io.BytesIO()
    photo.resize((640, 480)).convert("CMYK").save(cmyk, "JPEG", quality=90)
    png = io.BytesIO()
    photo.resize((640, 480)).save(png, "PNG")
    good = photo_jpeg(photo, (1200, 900), rng)
    files = [write(tmp_path / "a" / "cmyk.jpg", cmyk.getvalue()), write(tmp_path / "a" / "plain.png", png.getvalue()),
             write(tmp_path / "a" / "good.jpg", good),
             # a valid header and end marker around garbage: simplejpeg refuses it, and so does Pillow
             write(tmp_path / "a" / "garbage.jpg", good[:600] + bytes(2000) + b"\xff\xd9")]
    from resnext.data.folder import ImageFolder

    folder = ImageFolder(tmp_path)
    augment = TrainAugment(64)
    fast = DecodedSamples(folder, augment, train=False, max_pixels=10**9, scaled_decode=True)
    plain = DecodedSamples(folder, augment, train=False, max_pixels=10**9, scaled_decode=False)
    names = [Path(folder.path(i)).name for i in range(len(folder))]
    for index, name in enumerate(names):
        a, b = fast[(index, 11)], plain[(index, 11)]
        if name == "garbage.jpg":
            assert a.image is None and b.image is None and a.skips and a.skips[0][0].endswith(name)
        elif name == "good.jpg":  # scaled: within tolerance, not equal
            assert (a.image.int() - b.image.int()).abs().float().mean() <= SCALED_MEAN_TOLERANCE
        else:  # not taken by the scaled path: exactly the full path
            assert torch.equal(a.image, b.image), name
    assert {Path(p).name for p in files} == set(names)


@needs_skimage  # the test photos ship inside scikit-image
def test_scaled_training_loader_is_the_full_one_at_full_scale_and_deterministic(tmp_path):
    """ImageNet-sized JPEGs at 224 px: never scaled, so the default loader gives the plain path's batches; and
    the scaled path keeps the determinism contract (workers, resume)."""
    rng = np.random.default_rng(2)
    photos = _photos()
    for k in range(12):
        write(tmp_path / "data" / f"c{k % 2}" / f"{k}.jpg", photo_jpeg(photos[k % 8], (500, 375), rng))
        write(tmp_path / "big" / f"c{k % 2}" / f"{k}.jpg", photo_jpeg(photos[k % 8], (1024, 768), rng))
    options = dict(train=True, batch_size=4, device="cpu", seed=5)
    scaled = create_loader("pytorch", tmp_path / "data", image_size=224, workers=0, **options)
    full = create_loader("pytorch", tmp_path / "data", image_size=224, workers=0, jpeg_decode="full", **options)
    for (a, la), (b, lb) in zip(scaled, full):
        assert torch.equal(la, lb) and torch.equal(a, b)
    big = [create_loader("pytorch", tmp_path / "big", image_size=48, workers=w, **options) for w in (0, 2)]
    big[1].set_epoch(1, start_batch=1)
    big[0].set_epoch(1)
    batches = [list(loader) for loader in big]
    assert len(batches[0]) == 3 and len(batches[1]) == 2
    for (a, la), (b, lb) in zip(batches[0][1:], batches[1]):
        assert torch.equal(la, lb) and torch.equal(a, b)
    big_full = create_loader("pytorch", tmp_path / "big", image_size=48, workers=0, jpeg_decode="full", **options)
    big_full.set_epoch(1)
    differences = [(a - b).abs().mean() for (a, _), (b, _) in zip(batches[0], big_full)]
    std = torch.tensor(IMAGENET_STD).mean() * 255
    assert 0 < max(differences) * std <= SCALED_MEAN_TOLERANCE  # scaled here, within the stated tolerance


def test_jpeg_decode_option_is_checked():
    from resnext.errors import UserError

    with pytest.raises(UserError, match="jpeg_decode must be one of scaled, full"):
        create_loader("pytorch", ".", jpeg_decode="fast", device="cpu")


@needs_skimage  # the test photos ship inside scikit-image
def test_train_jpeg_decode_flag_reaches_the_training_loader(tmp_path):
    """--jpeg-decode full and scaled train on different pixels when crops are scaled, the same otherwise."""
    photo_dataset(tmp_path / "data", (320, 240), seed=3)
    weights = {}
    for decode in ("scaled", "full"):
        workspace = tmp_path / decode
        train(tiny_config(tmp_path / "data", workspace, epochs=1, image_size=16, batch_size=8, jpeg_decode=decode))
        weights[decode] = final_state(workspace)
        assert weights[decode]["config"]["jpeg_decode"] == decode
    assert any(not torch.equal(weights["scaled"]["model"][k], weights["full"]["model"][k])
               for k in weights["full"]["model"])


# ---- gpu backend: batched crop / resize / flip ---------------------------------------------------------------

@pytest.fixture(scope="module")
def decoded(jpegs) -> list[torch.Tensor]:
    images = [decode_pixels(data, name) for name, data in jpegs[:8]]
    images += [images[0][:, :90, :40].contiguous(), images[1][:, :25, :300].contiguous()]  # tiny: upscaled crops
    return images


def float_reference(preprocess, image: torch.Tensor, seed: int) -> torch.Tensor:
    """The per-sample path on float pixels, rounded back: what it computes on CUDA (torchvision has no uint8
    antialiased kernel there)."""
    out = preprocess(image.float(), seed)
    return out.clamp(0, 255).round().to(torch.uint8)


@needs_skimage  # the test photos ship inside scikit-image
@pytest.mark.parametrize("make", [lambda: TrainAugment(224), lambda: TrainAugment(96, "bicubic"),
                                  lambda: EvalPreprocess(224), lambda: EvalPreprocess(64, 0.5, "bicubic")],
                         ids=["train-bilinear", "train-bicubic", "eval-bilinear", "eval-bicubic"])
def test_batched_crop_resize_flip_matches_the_per_sample_path(decoded, make):
    """Against the float per-sample path (CUDA's): at most one level, on at most 1e-4 of the pixels (rounding
    ties). Against the CPU's uint8 kernel (fixed-point weights; bicubic rounds and clamps between its two
    passes): bilinear at most one level; bicubic's mean under 0.5 level."""
    preprocess = make()
    seeds = list(range(100, 100 + len(decoded)))
    batched = preprocess_batch(preprocess, decoded, seeds)
    floats = torch.stack([float_reference(preprocess, image, seed) for image, seed in zip(decoded, seeds)])
    uint8 = torch.stack([preprocess(image, seed) for image, seed in zip(decoded, seeds)])
    diff = (batched.int() - floats.int()).abs()
    assert batched.shape == (len(decoded), 3, preprocess.image_size, preprocess.image_size)
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-4
    cpu_diff = (batched.int() - uint8.int()).abs()
    if "bilinear" in str(preprocess.interpolation).lower():
        assert cpu_diff.max() <= 1
    assert cpu_diff.float().mean() <= 0.5


@needs_skimage  # the test photos ship inside scikit-image
def test_batched_path_splits_large_batches_into_chunks_with_the_same_result(decoded, monkeypatch):
    preprocess = TrainAugment(64)
    seeds = list(range(len(decoded)))
    whole = preprocess_batch(preprocess, decoded, seeds)
    monkeypatch.setattr(gpu_module, "MAX_CHUNK_ELEMENTS", 3 * 600 * 600)  # about one window per chunk
    assert len(gpu_module._chunks(gpu_module.resample_plans(preprocess, [i.shape[-2:] for i in decoded],
                                                            seeds)[0])) > 3
    assert torch.equal(preprocess_batch(preprocess, decoded, seeds), whole)


@needs_skimage  # the test photos ship inside scikit-image
def test_batched_path_flips_and_autoaugments_like_the_per_sample_path(decoded):
    preprocess = TrainAugment(48, augmentation="autoaugment")
    seeds = list(range(7, 7 + len(decoded)))
    batched = preprocess_batch(preprocess, decoded, seeds)
    draws = [preprocess.draw(i.shape[-2], i.shape[-1], s)[1] for i, s in zip(decoded, seeds)]
    assert any(draws) and not all(draws)
    plain = TrainAugment(48)  # the float per-sample crop/resize/flip, then the same AutoAugment draws
    reference = torch.stack([preprocess.auto_augment(float_reference(plain, image, seed),
                                                     preprocess.draw(image.shape[-2], image.shape[-1], seed)[2])
                             for image, seed in zip(decoded, seeds)])
    # AutoAugment's operations amplify a one-level difference (posterize, equalize, solarize): compare the means.
    assert (batched.float() - reference.float()).abs().mean() <= 1.0


def test_gpu_loader_batched_and_per_sample_agree(embedded_data):
    for train_mode in (True, False):
        batched, per_sample = (create_loader("gpu", embedded_data, train=train_mode, batch_size=64, image_size=40,
                                             workers=0, device="cpu", gpu_batched=flag) for flag in (True, False))
        (a, la), (b, lb) = next(iter(batched)), next(iter(per_sample))
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        assert torch.equal(la, lb) and ((a - b).abs() * std).max() <= 1 + 1e-3


# ---- normalization and the benchmark ------------------------------------------------------------------------

def test_normalize_batch_gives_the_same_numbers_as_before():
    images = torch.randint(0, 256, (4, 20, 24, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).mul(255).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).mul(255).view(1, 3, 1, 1)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        expected = images.contiguous(memory_format=memory_format).float().sub_(mean).div_(std)
        got = normalize_batch(images, memory_format)
        assert torch.equal(got, expected) and got.is_contiguous(memory_format=memory_format)


@needs_skimage  # the test photos ship inside scikit-image
def test_data_benchmark_compares_with_the_torchvision_pipeline(tmp_path):
    photo_dataset(tmp_path / "data", (200, 150), seed=4)
    command = [sys.executable, "-m", "resnext", "benchmark", "--data-only", str(tmp_path / "data"), "--device",
               "cpu", "-j", "0", "-b", "4", "--image-size", "32", "--warmup", "1", "--steps", "4", "--window", "2",
               "--data-backend", "pytorch,pytorch-full,gpu-per-sample", "--compare", "torchvision"]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["backends"]) == {"pytorch", "pytorch-full", "gpu-per-sample"}
    peer = data["compare"]
    assert peer["library"] == "torchvision" and peer["batch_shape"] == [4, 3, 32, 32] and peer["timed_batches"] == 4
    for figures in data["backends"].values():
        assert figures["ratio"] == pytest.approx(figures["images_per_second"] / peer["images_per_second"])
        assert len(figures["window_ratios"]) == 2
    text = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert text.returncode == 0 and "pytorch / torchvision = " in text.stdout and "torchvision " in text.stdout
    refused = subprocess.run([*command[:-2], "--compare", "timm"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "must be torchvision" in refused.stderr

