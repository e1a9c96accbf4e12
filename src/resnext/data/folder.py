"""Datasets on disk: layout validation, the file list of a split, and what happens to files that cannot be read.

Layout (NVIDIA's, torchvision ImageFolder's): ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, the same
class folders in both. Class names are the folder names in sorted order, so label i is class_names[i] on
every machine. Names starting with '.' (.DS_Store, ._file, .ipynb_checkpoints) are ignored; any other file
without an image extension is reported as skipped.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ..errors import UserError
from .decode import UnreadableImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")

# A training sample whose file cannot be read is replaced by the next readable file of the dataset. More
# unreadable files than this in a row means the dataset itself is damaged, which is an error.
MAX_REPLACEMENTS = 32

T = TypeVar("T")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of a split; UserError when there are none."""
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        found = f" (it holds {loose} images directly)" if loose else ""
        raise UserError(f"'{split_dir}' has no class folders{found}; put each class's images in a sub-folder "
                        "named after the class.")
    return classes


def _has_image(class_dir: Path) -> bool:
    with os.scandir(class_dir) as entries:
        return any(is_image_file(e.name) and not e.name.startswith(".") for e in entries)


def _check_split(split_dir: Path) -> list[str]:
    classes = find_classes(split_dir)
    empty = [name for name in classes if not _has_image(split_dir / name)]
    if empty:
        raise UserError(f"class folder{'s' if len(empty) > 1 else ''} {_list(empty)} in '{split_dir}' "
                        f"{'have' if len(empty) > 1 else 'has'} no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images or remove the folder from train/ and val/.")
    return classes


def _require_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what} '{path}' does not exist.")
    if not path.is_dir():
        raise UserError(f"{what} '{path}' is a file, not a folder; give the folder that holds train/ and val/.")


def find_dataset(root: str | os.PathLike) -> tuple[Path, Path, list[str]]:
    """Validate a dataset root and return (train_dir, val_dir, class_names).

    One UserError sentence for each way the layout can be wrong: the root missing or a file, train/ or val/
    missing, no class folders, class folders that differ between train/ and val/ (named), a class folder
    without images.
    """
    root = Path(root).expanduser()
    _require_folder(root, "dataset folder")
    missing = [name for name in ("train", "val") if not (root / name).is_dir()]
    if missing:
        raise UserError(f"dataset folder '{root}' has no {' or '.join(m + '/' for m in missing)} folder; it must hold "
                        "train/ and val/, each with one sub-folder of images per class.")
    train_dir, val_dir = root / "train", root / "val"
    train_classes, val_classes = find_classes(train_dir), find_classes(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        parts = [f"only in train/: {_list(only_train)}" if only_train else "",
                 f"only in val/: {_list(only_val)}" if only_val else ""]
        differences = "; ".join(part for part in parts if part)
        raise UserError(f"train/ and val/ of '{root}' have different class folders ({differences}); both must hold "
                        "the same classes.")
    _check_split(train_dir)
    _check_split(val_dir)
    return train_dir, val_dir, train_classes


def is_dataset_root(path: Path) -> bool:
    """Whether `path` looks like a dataset root (has train/ or val/) rather than a split folder of classes."""
    return (path / "train").is_dir() or (path / "val").is_dir()


def resolve_split(root: str | os.PathLike, train: bool) -> Path:
    """A split folder: `root` itself, or root/train or root/val when `root` is a dataset root (validated)."""
    root = Path(root).expanduser()
    _require_folder(root, "data folder")
    if is_dataset_root(root):
        train_dir, val_dir, _ = find_dataset(root)
        return train_dir if train else val_dir
    return root


class ImageFolder:
    """The images of one split: sorted class folders, sorted files, labels; other files listed in `ignored`.

    Paths are stored as one numpy bytes array (relative to the split folder) rather than a list of Python
    strings: DataLoader workers then share it with the parent without copy-on-write growth.
    """

    def __init__(self, root: str | os.PathLike, class_names: list[str] | None = None):
        self.root = Path(root).expanduser()
        _require_folder(self.root, "data folder")
        self.class_names = class_names if class_names is not None else _check_split(self.root)
        paths: list[bytes] = []
        labels: list[int] = []
        self.ignored: list[tuple[str, str]] = []  # (path, reason): files that are not images at all
        for label, name in enumerate(self.class_names):
            class_dir = self.root / name
            if not class_dir.is_dir():
                raise UserError(f"'{self.root}' has no class folder '{name}'; train/ and val/ must hold the same "
                                "classes.")
            for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
                if entry.name.startswith(".") or entry.is_dir():
                    continue
                if is_image_file(entry.name):
                    paths.append(os.fsencode(os.path.join(name, entry.name)))
                    labels.append(label)
                else:
                    self.ignored.append((entry.path, "not an image file extension"))
        self._paths = np.array(paths, dtype=np.bytes_)
        self.labels = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._paths[index]))

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def read_sample(folder: ImageFolder, index: int, read: Callable[[str], T], skips: list[tuple[str, str]],
                replace: bool) -> tuple[int, T | None]:
    """Read sample `index` with `read(path)`; return (index actually read, result).

    A file that raises UnreadableImageError is appended to `skips` as (path, reason). With `replace`
    (training), the next files of the dataset are tried in turn, so the batch keeps its shape and the
    replacement is the same on every run; without it (validation) the result is None and the image is dropped.
    After MAX_REPLACEMENTS unreadable files in a row the result is None as well.
    """
    for offset in range(MAX_REPLACEMENTS if replace else 1):
        candidate = (index + offset) % len(folder)
        path = folder.path(candidate)
        try:
            return candidate, read(path)
        except UnreadableImageError as err:
            skips.append((path, err.reason))
    return index, None


def build_folder_atomically(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Create folder `dest` complete or not at all: `fill` writes into a temporary sibling that is renamed.

    `dest` may exist only as an empty folder. When another process creates `dest` first, its result stands
    and ours is discarded (callers check that it is the same content).
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"'{dest}' already exists and is not empty; give a new or empty folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, dest)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError:
            if not (dest.is_dir() and any(dest.iterdir())):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
