"""EXIF orientation: a phone photo stored sideways with a tag is seen upright by predict, serve and Preprocessing,
and by every loader backend exactly when --exif-orientation asks (off by default, as torchvision and NVIDIA)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_support import single_thread, trained  # noqa: F401  (fixtures)
from PIL import Image, ImageOps
from test_data_support import needs_dali, photo

from resnext.cli import main
from resnext.data import create_loader
from resnext.data.decode import apply_exif_orientation, decode_file, exif_orientation_of
from resnext.prediction import Preprocessing

ORIENTATION = 0x0112


def save_with_orientation(pixels: np.ndarray, path: Path, orientation: int, **options) -> Path:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), **options)
    return path


def phone_pair(pixels: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """The same picture as an upright JPEG and as a phone stores it: pixels turned 90 degrees counter-clockwise
    (the sensor's view) with orientation 6 ("turn 90 degrees clockwise to view"). 4:4:4 at quality 100 and sides
    that are multiples of 8, so the two files hold nearly the same pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    upright = save_with_orientation(pixels, folder / "upright.jpg", 1, quality=100, subsampling=0)
    sideways = save_with_orientation(np.ascontiguousarray(np.rot90(pixels)), folder / "sideways.jpg", 6,
                                     quality=100, subsampling=0)
    return upright, sideways


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_tag_turns_pixels_as_pillow_does(tmp_path, orientation):
    pixels = photo(10, 6, orientation)
    path = save_with_orientation(pixels, tmp_path / "x.png", orientation)  # PNG: lossless, its eXIf chunk
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert exif_orientation_of(path.read_bytes()) == orientation
    assert np.array_equal(decode_file(path, exif_orientation=True).permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(decode_file(path).permute(1, 2, 0).numpy(), pixels)  # off: as stored
    as_stored = torch.from_numpy(pixels).permute(2, 0, 1)
    assert torch.equal(apply_exif_orientation(as_stored, orientation).permute(1, 2, 0),
                       torch.from_numpy(np.array(expected)))


def test_preprocessing_sees_a_phone_photo_upright_from_a_path_bytes_and_pil(tmp_path):
    upright, sideways = phone_pair(photo(64, 48), tmp_path)
    preprocessing = Preprocessing(image_size=32)
    reference = preprocessing(upright)
    for source in (sideways, sideways.read_bytes(), Image.open(sideways)):  # predict, serve, Python users
        assert (preprocessing(source) - reference).abs().max() < 0.1  # JPEG rounding only (normalized units)
    as_stored = Preprocessing(image_size=32, exif_orientation=False)(sideways)
    assert (as_stored - reference).abs().max() > 1.0


def test_predict_gives_a_rotated_phone_photo_the_upright_photos_answer(trained, tmp_path, capsys):
    # A trouser is tall and narrow: seen sideways it is another garment to the model.
    source = sorted((trained.val / "trouser").iterdir())[0]
    pixels = np.asarray(Image.open(source).convert("RGB").resize((64, 64)))
    upright, sideways = phone_pair(pixels, tmp_path)

    def probabilities(path: Path, *flags: str) -> list[float]:
        assert main(["predict", str(path), "--weights", str(trained.best), "--topk", "3", "--json", *flags]) == 0
        prediction = json.loads(capsys.readouterr().out)
        return dict(zip(prediction["classes"], prediction["probabilities"]))

    expected = probabilities(upright)
    assert max(expected, key=expected.get) == "trouser"
    assert probabilities(sideways) == pytest.approx(expected, abs=0.02)
    assert probabilities(sideways, "--no-exif-orientation") != pytest.approx(expected, abs=0.02)


def loader_pixels(backend: str, split: Path, **options) -> torch.Tensor:
    loader = create_loader(backend, split, train=False, batch_size=8, image_size=32, crop_pct=1.0, workers=0,
                           device="cpu", **options)
    return torch.cat([images for images, _ in loader])


@pytest.mark.parametrize("backend", ["pytorch", "gpu", pytest.param("dali-cpu", marks=needs_dali)])
def test_loaders_read_pixels_as_stored_unless_asked_then_upright(backend, tmp_path):
    pixels = photo(48, 32)
    upright, sideways = phone_pair(pixels, tmp_path / "files")
    for name, path in (("upright", upright), ("sideways", sideways)):
        (tmp_path / name / "a").mkdir(parents=True)
        shutil.copy(path, tmp_path / name / "a" / "photo.jpg")
    reference = loader_pixels("pytorch", tmp_path / "upright")
    # Default: as stored, as torchvision's and NVIDIA's loaders (DALI used to turn them on its own).
    stored = loader_pixels(backend, tmp_path / "sideways")
    assert (stored - loader_pixels("pytorch", tmp_path / "sideways")).abs().max() < 0.2
    assert (stored - reference).abs().max() > 1.0
    turned = loader_pixels(backend, tmp_path / "sideways", exif_orientation=True)
    assert (turned - reference).abs().max() < 0.2  # DALI's resize filter differs by a level at most


def test_train_records_the_choice_and_evaluate_follows_it(trained, tmp_path, capsys):
    from resnext.checkpoint import read_checkpoint

    assert read_checkpoint(trained.best)["preprocessing"]["exif_orientation"] is False  # the default
    assert main(["evaluate", str(trained.val), "--weights", str(trained.best), "-j", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preprocessing"]["exif_orientation"] is False
    assert main(["train", str(trained.data), "--arch", "resnext_tiny", "--image-size", "32", "-b", "16", "-j", "0",
                 "--epochs", "1", "--prof", "1", "--exif-orientation", "--no-tensorboard", "--no-progress",
                 "--workspace", str(tmp_path / "ws")]) == 0
    checkpoint = tmp_path / "ws" / "checkpoint.pth.tar"
    assert read_checkpoint(checkpoint)["preprocessing"]["exif_orientation"] is True
    capsys.readouterr()
    for flags, expected in (([], True), (["--no-exif-orientation"], False)):  # evaluate follows training
        assert main(["evaluate", str(trained.val), "--weights", str(checkpoint), "-j", "0", "--json", *flags]) == 0
        assert json.loads(capsys.readouterr().out)["preprocessing"]["exif_orientation"] is expected


def test_bytes_without_exif_or_with_a_broken_block_count_as_upright():
    buffer = io.BytesIO()
    Image.fromarray(photo(8, 8)).save(buffer, "JPEG")
    assert exif_orientation_of(buffer.getvalue()) == 1
    assert exif_orientation_of(b"not an image") == 1
    assert exif_orientation_of(buffer.getvalue()[:20]) == 1
