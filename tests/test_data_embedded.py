"""The dataset that ships with the package: layout, idempotent and atomic materialization, credit."""
import threading

import numpy as np
import pytest
from PIL import Image

from resnext.data import embedded, find_dataset
from resnext.errors import UserError


def test_materialize_writes_class_folders_of_jpegs(tmp_path):
    root = embedded.materialize(tmp_path / "fm")
    train_dir, val_dir, classes = find_dataset(root)
    assert tuple(classes) == embedded.CLASS_NAMES
    for split_dir, per_class in ((train_dir, embedded.TRAIN_PER_CLASS), (val_dir, embedded.VAL_PER_CLASS)):
        for name in classes:
            files = sorted((split_dir / name).iterdir())
            assert len(files) == per_class and all(f.suffix == ".jpg" for f in files)
    with Image.open(next((train_dir / "trouser").iterdir())) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "L", (28, 28))
        assert np.asarray(image).std() > 10  # a real picture, not a blank
    # Validation images come from Fashion-MNIST's test split, never from its training split.
    assert all(f.name.startswith("val-") for f in (val_dir / "bag").iterdir())


def test_materialize_is_idempotent_and_refuses_foreign_folders(tmp_path):
    root = embedded.materialize(tmp_path / "fm")
    marker = root / "train" / "bag"
    before = marker.stat().st_mtime_ns
    assert embedded.materialize(tmp_path / "fm") == root and marker.stat().st_mtime_ns == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        embedded.materialize(tmp_path / "mine")
    (tmp_path / "empty").mkdir()
    assert embedded.materialize(tmp_path / "empty") == tmp_path / "empty"


def test_concurrent_materialize_gives_one_complete_folder(tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(embedded.materialize(tmp_path / "shared"))
        except Exception as err:  # collected, so the assertion shows it
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    assert sum(1 for _ in (tmp_path / "shared").rglob("*.jpg")) == 4000
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]  # no temporary folders left behind


def test_default_location_follows_resnext_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_HOME", str(tmp_path / "home"))
    root = embedded.materialize()
    assert root.parent == tmp_path / "home" / "datasets" and root.name.startswith("fashion-mnist-mini-")


def test_archive_is_compact_and_credited():
    assert embedded.ARCHIVE.stat().st_size < 4_000_000
    credit = (embedded.ARCHIVE.parent / "FASHION-MNIST-LICENSE").read_text()
    assert "Zalando SE" in credit and "MIT License" in credit
