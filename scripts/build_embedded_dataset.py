#!/usr/bin/env python3
"""Build src/resnext/assets/fashion-mnist-mini.tar.xz, the dataset that ships with the package.

Fashion-MNIST (Zalando Research, MIT licence; https://github.com/zalandoresearch/fashion-mnist), as Debian's
`dataset-fashion-mnist` package installs it: the first TRAIN_PER_CLASS images of each class of the training
split become train/, the first VAL_PER_CLASS of each class of the test split become val/. Each image is a
28x28 grayscale JPEG (quality 95) in a folder named after its class, named after its index in the original
split. The tar file is byte-for-byte reproducible (sorted members, fixed dates and owners).

    python scripts/build_embedded_dataset.py [--source /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# Fashion-MNIST's label order; folder names are these, lower-case, '/' and ' ' replaced.
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TRAIN_PER_CLASS = 300
VAL_PER_CLASS = 100
QUALITY = 95
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "resnext" / "assets" / "fashion-mnist-mini.tar.xz"


def folder_name(label: str) -> str:
    return label.lower().replace("/", "_").replace(" ", "_")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic with the number of dimensions, the sizes, then uint8 data."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def members(images: np.ndarray, labels: np.ndarray, split: str, per_class: int):
    for label, name in enumerate(LABELS):
        for index in np.flatnonzero(labels == label)[:per_class]:
            yield f"{split}/{folder_name(name)}/{split}-{index:05d}.jpg", jpeg(images[index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    entries = []
    for prefix, split, per_class in (("train", "train", TRAIN_PER_CLASS), ("t10k", "val", VAL_PER_CLASS)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        entries.extend(members(images, labels, split, per_class))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.output, "w:xz", format=tarfile.PAX_FORMAT, preset=9) as tar:
        for name, data in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    print(f"{args.output}: {len(entries)} images, {args.output.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
