"""`resnext data check`: decode every image of a dataset and report counts, unreadable files and statistics.

Every file is fully decoded with Pillow and the decompression-bomb limit of training, in worker processes; the
loaders try libjpeg-turbo first and fall back to Pillow, so what this calls unreadable is what they would skip.
The images are those the loaders find (resnext.data.folder.walk_images: any depth below a class folder), and
everything else below the dataset is listed as left out, with the reason. Images whose EXIF orientation tag says
they are stored sideways or upside down are counted: predict and serve turn them upright, training and
evaluation only with --exif-orientation.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

import torch
from PIL import ExifTags

from ..preemption import ignore_stop_signals
from .decode import UnreadableImageError, max_image_pixels, open_image
from .folder import HIDDEN, ImageFolder, find_dataset, is_dataset_root

PER_CLASS_LISTED = 30  # the text report lists every class up to this many, else the smallest few


class _Inspect(torch.utils.data.Dataset):
    def __init__(self, folder: ImageFolder, max_pixels: int):
        self.folder, self.max_pixels = folder, max_pixels

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        path = self.folder.path(index)
        info = {"label": self.folder.label(index), "bytes": os.path.getsize(path) if os.path.exists(path) else 0}
        try:
            with open_image(path, self.max_pixels) as image:
                info.update(format=image.format or "?", mode=image.mode, width=image.width, height=image.height,
                            orientation=image.getexif().get(ExifTags.Base.Orientation, 1))
        except UnreadableImageError as err:
            info.update(path=path, error=err.reason)
        return info


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def check_split(folder: ImageFolder, workers: int = 2) -> dict:
    """Statistics of one split: per-class counts, unreadable files, what was left out and why, formats, modes,
    sizes, images with an EXIF orientation other than upright."""
    loader = torch.utils.data.DataLoader(_Inspect(folder, max_image_pixels()), batch_size=64, num_workers=workers,
                                         collate_fn=list, worker_init_fn=ignore_stop_signals)
    infos = [info for batch in loader for info in batch]
    good = [info for info in infos if "error" not in info]
    return {
        "path": str(folder.root),
        "images": len(infos),
        "classes": folder.class_counts(),
        "unreadable": [{"path": info["path"], "reason": info["error"]} for info in infos if "error" in info],
        "left_out": [{"path": path, "reason": reason} for path, reason in folder.left_out],
        "exif_rotated": [folder.path(index) for index, info in enumerate(infos) if info.get("orientation", 1) != 1],
        "formats": _count(info["format"] for info in good),
        "modes": _count(info["mode"] for info in good),
        "width": _spread([info["width"] for info in good]),
        "height": _spread([info["height"] for info in good]),
        "file_kb": _spread([info["bytes"] / 1000 for info in good]),
    }


def check_dataset(path: str | os.PathLike, workers: int = 2) -> dict:
    """Check a dataset root (train/ and val/, validated) or a single split folder of class folders."""
    path = Path(path).expanduser()
    if is_dataset_root(path):
        _, _, class_names = find_dataset(path)
        splits = {name: check_split(ImageFolder(path / name), workers) for name in ("train", "val")}
    else:
        folder = ImageFolder(path)
        splits = {path.name: check_split(folder, workers)}
        class_names = folder.class_names
    return {"root": str(path), "class_names": class_names, "splits": splits,
            "unreadable": sum(len(s["unreadable"]) for s in splits.values())}


def format_report(report: dict) -> str:
    """The check report as text lines."""
    lines = [f"{report['root']}: {len(report['class_names'])} classes, {report['unreadable']} unreadable files"]
    for name, split in report["splits"].items():
        counts = list(split["classes"].values())
        lines.append(f"{name}: {split['images']} images, per class min {min(counts)} / median "
                     f"{statistics.median(counts):g} / max {max(counts)}")
        if split["formats"]:
            lines.append("  formats: " + ", ".join(f"{k} {v}" for k, v in split["formats"].items())
                         + "; modes: " + ", ".join(f"{k} {v}" for k, v in split["modes"].items()))
            w, h, kb = split["width"], split["height"], split["file_kb"]
            lines.append(f"  width {w['min']}-{w['max']} (median {w['median']:g}), height {h['min']}-{h['max']} "
                         f"(median {h['median']:g}), file {kb['min']:.1f}-{kb['max']:.1f} KB "
                         f"(median {kb['median']:.1f})")
        classes = sorted(split["classes"].items(), key=lambda item: item[1])
        shown = classes if len(classes) <= PER_CLASS_LISTED else classes[:5]
        label = "per class" if len(classes) <= PER_CLASS_LISTED else "smallest classes"
        lines.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in sorted(shown)))
        for item in split["unreadable"]:
            lines.append(f"  unreadable: {item['path']} ({item['reason']})")
        hidden = [item for item in split["left_out"] if item["reason"] == HIDDEN]
        for item in split["left_out"]:
            if item["reason"] != HIDDEN:
                lines.append(f"  left out: {item['path']} ({item['reason']})")
        if hidden:
            shown = ", ".join(item["path"] for item in hidden[:3]) + (" ..." if len(hidden) > 3 else "")
            lines.append(f"  left out: {len(hidden)} hidden file(s) or folder(s), names starting with '.' ({shown})")
        if split["exif_rotated"]:
            shown = ", ".join(split["exif_rotated"][:3]) + (" ..." if len(split["exif_rotated"]) > 3 else "")
            lines.append(f"  {len(split['exif_rotated'])} image(s) carry an EXIF orientation tag (stored sideways "
                         f"or mirrored: {shown}); training and evaluation read them as stored unless "
                         "--exif-orientation")
    return "\n".join(lines)
