"""`resnext data ...` end to end, the ImageNet-like folder, and the loader measurements."""
import json
import subprocess
import sys

import pytest
from optional import needs_skimage
from PIL import Image
from test_data_support import BOMB_LIMIT, make_broken_dataset, needs_dali

from resnext.cli import main
from resnext.data import create_loader
from resnext.data.bench import compare_backends, measure_loader
from resnext.data.imagenet_like import make_imagenet_like
from resnext.errors import UserError


def test_check_reports_counts_and_statistics(embedded_data, capsys):
    assert main(["data", "check", str(embedded_data), "--json", "-j", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unreadable"] == 0 and len(report["class_names"]) == 10
    train = report["splits"]["train"]
    assert train["images"] == 3000 and set(train["classes"].values()) == {300}
    assert train["formats"] == {"JPEG": 3000} and train["modes"] == {"L": 3000}
    assert train["width"] == {"min": 28, "median": 28, "max": 28}
    assert main(["data", "check", str(embedded_data / "val"), "-j", "0"]) == 0  # a single split folder
    assert "val: 1000 images, per class min 100 / median 100 / max 100" in capsys.readouterr().out


def test_check_lists_unreadable_files_and_exits_1(tmp_path, monkeypatch, capsys):
    broken = make_broken_dataset(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    assert main(["data", "check", str(tmp_path), "-j", "2"]) == 1
    out = capsys.readouterr().out
    for name in broken:
        assert f"unreadable: {tmp_path / 'train' / 'a' / name} (" in out
    assert f"left out: {tmp_path / 'train' / 'a' / 'notes.txt'} (not an image file extension)" in out
    assert "left out: 2 hidden file(s) or folder(s)" not in out  # one per split
    assert f"left out: 1 hidden file(s) or folder(s), names starting with '.' ({tmp_path / 'val' / 'a' / '.DS_Store'})" in out
    assert "modes: RGB" in out and "CMYK 1" in out and "P 1" in out and "RGBA 1" in out


def test_every_command_finds_the_images_below_class_folders(tmp_path, capsys):
    import torch

    from resnext import create_model
    from test_data_folder import nested_dataset

    nested_dataset(tmp_path / "data")
    assert main(["data", "check", str(tmp_path / "data"), "--json", "-j", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["images"] == report["splits"]["val"]["images"] == 9
    assert report["splits"]["train"]["classes"] == {"bag": 7, "coat": 2}
    assert main(["train", str(tmp_path / "data"), "--arch", "resnext_tiny", "--image-size", "16", "-b", "3", "-j", "0",
                 "--epochs", "1", "--no-tensorboard", "--no-progress", "--workspace", str(tmp_path / "ws")]) == 0
    log = (tmp_path / "ws" / "experiment_raport.json").read_text()
    assert '"iterations_per_epoch": 3' in log and '"val.images": 9' in log  # 9 training and 9 validation images
    torch.save(create_model("resnext_tiny", 2).state_dict(), tmp_path / "tiny2.pt")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "data"), "--weights", str(tmp_path / "tiny2.pt"), "--image-size", "16",
                 "-j", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 9
    assert main(["predict", str(tmp_path / "data" / "val"), "--weights", str(tmp_path / "tiny2.pt"), "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 9


def test_check_reports_what_it_leaves_out_and_rotated_photos(tmp_path, capsys):
    from test_data_folder import nested_dataset
    from test_data_support import photo

    nested_dataset(tmp_path)
    bag = tmp_path / "train" / "bag"
    (bag / "batch1" / "loop").symlink_to(bag, target_is_directory=True)
    (tmp_path / "val" / "Thumbs.db").write_bytes(b"x")
    image = Image.fromarray(photo(40, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    image.save(bag / "phone.jpg", exif=exif.tobytes())
    assert main(["data", "check", str(tmp_path), "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "train: 10 images" in out  # 9 and the phone photo
    assert f"left out: {bag / 'batch1' / 'loop'} (a folder already walked, reached again through a symbolic link)" in out
    assert f"left out: {tmp_path / 'val' / 'Thumbs.db'} (not inside a class folder)" in out
    assert f"1 image(s) carry an EXIF orientation tag (stored sideways or mirrored: {bag / 'phone.jpg'})" in out


def test_an_unreadable_file_has_one_reason_in_check_and_in_the_loaders(tmp_path, monkeypatch, capsys):
    broken = make_broken_dataset(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    assert main(["data", "check", str(tmp_path), "--json", "-j", "0"]) == 1
    checked = {item["path"]: item["reason"] for item in json.loads(capsys.readouterr().out)["splits"]["val"]["unreadable"]}
    assert checked[str(tmp_path / "val" / "a" / "empty.jpg")] == "the file is empty (0 bytes)"
    for backend in ("pytorch", "gpu"):
        loader = create_loader(backend, tmp_path, train=False, batch_size=64, image_size=16, workers=0, device="cpu")
        list(loader)
        unreadable = {path: reason for path, reason in loader.skipped if reason != "not an image file extension"}
        assert unreadable == checked, backend
    assert len(checked) == len(broken)


def test_cli_errors_are_one_line():
    result = subprocess.run([sys.executable, "-m", "resnext", "data", "check", "/nonexistent/data"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "resnext data: error: data folder '/nonexistent/data' does not exist."


def test_embedded_command_prints_the_folder(tmp_path, capsys):
    assert main(["data", "embedded", str(tmp_path / "fm")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "fm")


@needs_skimage
def test_imagenet_like_folder_looks_like_imagenet(tmp_path, capsys):
    assert main(["data", "make-imagenet-like", str(tmp_path / "inl"), "--classes", "2", "--per-class", "3",
                 "--val-per-class", "1", "--seed", "5"]) == 0
    root = tmp_path / "inl"
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 8 and len(list((root / "val").rglob("*.jpg"))) == 2
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and sorted(image.size) == [375, 500]
        assert 60_000 < path.stat().st_size < 180_000  # ImageNet's files average about 110 KB
    again = make_imagenet_like(tmp_path / "again", classes=2, per_class=3, val_per_class=1, seed=5)
    assert [p.read_bytes() for p in sorted(again.rglob("*.jpg"))] == [p.read_bytes() for p in files]
    with pytest.raises(UserError, match="not empty"):
        make_imagenet_like(root, classes=1, per_class=1)


@needs_dali
def test_compare_backends_measures_pixel_differences(embedded_data, capsys):
    result = compare_backends(embedded_data, ("pytorch", "gpu", "dali-cpu"), image_size=32, batch_size=250,
                              workers=0, device="cpu")
    assert result["reference"] == "pytorch"
    gpu = result["backends"]["gpu"]  # batched crop/resize: float weights against the CPU's fixed-point uint8 kernel
    assert gpu["images"] == 1000 and gpu["mean_abs_diff"] < 0.2 and gpu["max_abs_diff"] <= 1 + 1e-3
    dali = result["backends"]["dali-cpu"]
    # Same crop geometry as torchvision (one-pixel shifts would give ~20 here); only the resize filters differ.
    assert dali["images"] == 1000 and 0 < dali["mean_abs_diff"] < 0.5 and dali["max_abs_diff"] <= 2
    with pytest.raises(UserError, match="own random crops"):
        compare_backends(embedded_data, ("pytorch", "dali-cpu"), train=True)
    assert main(["data", "compare", str(embedded_data / "val"), "--backends", "pytorch,gpu", "--train",
                 "--image-size", "24", "-j", "0", "--device", "cpu"]) == 0
    assert "gpu vs pytorch (train, 960 images): mean |difference| 0." in capsys.readouterr().out


def test_measure_loader_reports_throughput(embedded_data):
    loader = create_loader("pytorch", embedded_data, train=True, batch_size=256, image_size=32, workers=0,
                           device="cpu")
    result = measure_loader(loader, warmup_batches=1, timed_batches=14, window=5)  # 11 batches an epoch: wraps
    assert result["backend"] == "pytorch" and result["images"] == 14 * 256
    assert len(result["window_images_per_second"]) == 3 and result["images_per_second"] > 0
    assert result["batch_shape"] == [256, 3, 32, 32] and result["device"] == "cpu"
    assert 0 < result["batch_time_ms"]["median"] <= result["batch_time_ms"]["max"]
