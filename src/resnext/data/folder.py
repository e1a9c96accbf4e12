"""Datasets on disk: layout validation, the file list of a split, and what happens to files that cannot be read.

Layout (NVIDIA's, torchvision ImageFolder's): ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, the same
class folders in both. An image may sit at any depth below its class folder (<class>/batch1/x.jpg counts for
<class>), as torchvision's ImageFolder finds it. By default class names are the folder names in sorted order,
so label i is class_names[i] on every machine; weights that carry class names give each folder the label of its
name instead (resnext.data.classes). `walk_images` is the one discovery rule of every command: names starting
with '.' (.DS_Store, ._file, .ipynb_checkpoints) are left out, as are files without an image extension, and each
command that reports (data check, the loaders' warnings) says what was left out and why.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import UserError, listed
from .classes import ClassLabels
from .decode import UnreadableImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")

# A training sample whose file cannot be read is replaced by the next readable file of the dataset. More
# unreadable files than this in a row means the dataset itself is damaged, which is an error.
MAX_REPLACEMENTS = 32

T = TypeVar("T")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# Why a file or folder below a split is not used (data check lists them; loaders warn about all but hidden ones).
HIDDEN = "hidden: its name starts with '.'"
NOT_AN_IMAGE = "not an image file extension"
OUTSIDE_CLASS_FOLDER = "not inside a class folder"
SEEN_BEFORE = "a folder already walked, reached again through a symbolic link"


def _walk(top: str, left_out: list[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) of `top` and every folder below it, symbolic links followed, hidden folders and
    folders reached a second time (a link loop) left out and recorded in `left_out`."""
    seen = {os.path.realpath(top)}

    def failed(err: OSError) -> None:
        left_out.append((err.filename or top, f"cannot list the folder ({err.strerror or err})"))

    for root, dirs, files in os.walk(top, onerror=failed, followlinks=True):
        kept = []
        for name in dirs:
            path = os.path.join(root, name)
            real = os.path.realpath(path)
            if name.startswith("."):
                left_out.append((path, HIDDEN))
            elif real in seen:
                left_out.append((path, SEEN_BEFORE))
            else:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        yield root, files


def walk_images(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files at any depth below `folder`, as paths relative to it, and the (path, reason) of the rest.

    The one discovery rule of every command (loaders, data check, predict on folders). It matches torchvision's
    ImageFolder (`make_dataset`): symbolic links to files and folders are followed, and the order is folders
    sorted by path, then files sorted by name. Unlike ImageFolder, hidden names (starting with '.') are left
    out with everything below them, and a folder reached again through a link is walked once (a link loop would
    otherwise never end). Left out, with the reason: hidden files and folders (HIDDEN), files without an image
    extension (NOT_AN_IMAGE), folders already walked (SEEN_BEFORE), folders that cannot be listed.
    """
    top = os.fspath(folder)
    left_out: list[tuple[str, str]] = []
    walked = sorted(_walk(top, left_out))  # by folder path, as sorted(os.walk(...)) in torchvision
    images = []
    for root, files in walked:
        relative = os.path.relpath(root, top)  # per folder, not per file: cheap
        relative = "" if relative == "." else relative
        for name in sorted(files):
            if name.startswith("."):
                left_out.append((os.path.join(root, name), HIDDEN))
            elif is_image_file(name):
                images.append(os.path.join(relative, name) if relative else name)
            else:
                left_out.append((os.path.join(root, name), NOT_AN_IMAGE))
    return images, left_out


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
    for _, files in _walk(os.fspath(class_dir), []):
        if any(is_image_file(name) and not name.startswith(".") for name in files):
            return True
    return False


def _check_split(split_dir: Path) -> list[str]:
    classes = find_classes(split_dir)
    empty = [name for name in classes if not _has_image(split_dir / name)]
    if empty:
        raise UserError(f"class folder{'s' if len(empty) > 1 else ''} {listed(empty)} in '{split_dir}' "
                        f"{'have' if len(empty) > 1 else 'has'} no images ({', '.join(IMAGE_EXTENSIONS)}) at any "
                        "depth; add images or remove the folder from train/ and val/.")
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
        parts = [f"only in train/: {listed(only_train)}" if only_train else "",
                 f"only in val/: {listed(only_val)}" if only_val else ""]
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
    """The images of one split: class folders in sorted order, their images (walk_images), and labels.

    classes: the label of each class folder (resnext.data.classes.ClassLabels, e.g. from match_classes), or a
    list of class names numbered from 0; default: the split's class folders in sorted order. Every class folder
    of the split must have a label; labels of classes without a folder simply do not occur (a subset).
    Paths are stored as one numpy bytes array (relative to the split folder) rather than a list of Python
    strings: DataLoader workers then share it with the parent without copy-on-write growth.
    `left_out` lists (path, reason) of everything below the split that is not used, `ignored` the same without
    hidden names (what the loaders warn about).
    """

    def __init__(self, root: str | os.PathLike, classes: ClassLabels | Sequence[str] | None = None):
        self.root = Path(root).expanduser()
        _require_folder(self.root, "data folder")
        folders = _check_split(self.root)
        if classes is None:
            classes = ClassLabels.from_folders(folders)
        elif not isinstance(classes, ClassLabels):
            classes = ClassLabels.from_folders(list(classes))
        unlabelled = [name for name in folders if name not in classes.class_to_idx]
        if unlabelled:
            raise UserError(f"class folder{'s' if len(unlabelled) > 1 else ''} {listed(unlabelled)} of '{self.root}' "
                            f"{'have' if len(unlabelled) > 1 else 'has'} no label among the classes "
                            f"{listed(classes.class_names)}; train/ and val/ must hold the same classes.")
        self.class_names = list(classes.class_names)  # label i is class_names[i]
        self.class_to_idx = {name: classes.class_to_idx[name] for name in folders}
        self.left_out: list[tuple[str, str]] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith("."):
                self.left_out.append((entry.path, HIDDEN))
            elif not entry.is_dir():
                self.left_out.append((entry.path, OUTSIDE_CLASS_FOLDER))
        paths: list[bytes] = []
        labels: list[int] = []
        self._counts: dict[str, int] = {}
        for name in folders:  # sorted, as torchvision's make_dataset, whatever the labels
            images, left_out = walk_images(self.root / name)
            self._counts[name] = len(images)
            paths += [os.fsencode(os.path.join(name, image)) for image in images]
            labels += [self.class_to_idx[name]] * len(images)
            self.left_out += left_out
        self._paths = np.array(paths, dtype=np.bytes_)
        self.labels = np.array(labels, dtype=np.int64)

    @property
    def ignored(self) -> list[tuple[str, str]]:
        """(path, reason) of the files and folders left out, hidden names excepted."""
        return [(path, reason) for path, reason in self.left_out if reason != HIDDEN]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._paths[index]))

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def class_counts(self) -> dict[str, int]:
        """Images per class folder, in sorted folder order."""
        return dict(self._counts)


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
