"""The dataset that ships with the package: a slice of Fashion-MNIST as class folders of JPEG files.

4,000 real images (28x28 grayscale clothing photos, 10 classes): 300 per class in train/ from Fashion-MNIST's
training split and 100 per class in val/ from its test split, in the same layout as any user dataset. They live
in one compact archive (src/resnext/assets/fashion-mnist-mini.tar.xz, built by
scripts/build_embedded_dataset.py) and are written out as files on first use.

Fashion-MNIST: Copyright 2017 Zalando SE, MIT licence; https://github.com/zalandoresearch/fashion-mnist
(see src/resnext/assets/FASHION-MNIST-LICENSE).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from ..paths import cache_home
from .folder import build_folder_atomically

ARCHIVE = Path(__file__).resolve().parents[1] / "assets" / "fashion-mnist-mini.tar.xz"

# Label order: the loaders sort class folders by name, so label i is CLASS_NAMES[i].
CLASS_NAMES = ("ankle_boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "t-shirt_top", "trouser")
TRAIN_PER_CLASS = 300
VAL_PER_CLASS = 100
_STAMP = ".resnext-embedded-dataset"  # inside the folder: the archive's digest, written before the folder appears


@lru_cache(maxsize=1)
def archive_digest() -> str:
    return hashlib.sha256(ARCHIVE.read_bytes()).hexdigest()


def default_location() -> Path:
    return cache_home() / "datasets" / f"fashion-mnist-mini-{archive_digest()[:12]}"


def _is_materialized(dest: Path) -> bool:
    stamp = dest / _STAMP
    return stamp.is_file() and stamp.read_text().strip() == archive_digest()


def _extract(into: Path) -> None:
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        # The "data" filter (Python >= 3.11.4 / 3.10.12) refuses links and absolute paths; the archive is ours
        # anyway, so older Pythons extract it as it is.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    (into / _STAMP).write_text(archive_digest() + "\n")


def materialize(dest: str | os.PathLike | None = None) -> Path:
    """Write the embedded dataset (train/ and val/ class folders of JPEGs) to `dest` and return its path.

    Default `dest`: <cache>/datasets/fashion-mnist-mini-<digest> (cache: $RESNEXT_HOME or ~/.cache/resnext).
    Idempotent (an existing complete copy is returned as it is) and atomic (files appear all at once, also
    when several processes call it together). A `dest` that exists with other content is an error.
    """
    dest = Path(dest).expanduser() if dest is not None else default_location()
    if _is_materialized(dest):
        return dest
    if not ARCHIVE.is_file():
        raise UserError(f"the embedded dataset archive '{ARCHIVE}' is missing; reinstall resnext.")
    build_folder_atomically(dest, _extract)
    if not _is_materialized(dest):  # another process filled `dest` first with something else
        raise UserError(f"'{dest}' already exists and is not the embedded dataset; give a new or empty folder.")
    return dest
