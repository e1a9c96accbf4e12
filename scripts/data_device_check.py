#!/usr/bin/env python3
"""Check and time every data backend on one device: the GPU-side counterpart of tests/test_data_*.py.

    python scripts/data_device_check.py --device cuda [--out results.json]
    python scripts/data_device_check.py --device cpu --classes 2 --per-class 8 --timed 4   # dry run on a CPU

On an ImageNet-like folder it checks the data contract of each backend available on the device (shape,
dtype, memory format, value range, device), measures eval-crop pixel differences against the pytorch backend
(and train-crop differences pytorch vs gpu, which draw the same crops), trains one epoch of the gpu backend
(and dali-gpu) through a folder seeded with broken files, and times each backend with measure_loader.
Prints one JSON object (also written to --out).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_data_support import BOMB_LIMIT, make_broken_dataset  # noqa: E402  (the tests' broken-file folder)

from resnext.data import create_loader  # noqa: E402
from resnext.data.bench import compare_backends, measure_loader  # noqa: E402
from resnext.data.imagenet_like import make_imagenet_like  # noqa: E402
from resnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def available_backends(device: torch.device) -> list[str]:
    names = ["pytorch", "gpu", "dali-cpu", "synthetic"] + (["dali-gpu"] if device.type == "cuda" else [])
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        names = [name for name in names if not name.startswith("dali")]
    return names


def contract(backend: str, root: Path, device: torch.device, workers: int, batch_size: int) -> dict:
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    problems = []
    for train in (True, False):
        loader = create_loader(backend, root, train=train, batch_size=batch_size, image_size=224, workers=workers,
                               device=device, memory_format=torch.channels_last, num_classes=None
                               if backend != "synthetic" else 10, synthetic_batches_per_epoch=2)
        images, labels = next(iter(loader))
        checks = {
            "shape": images.shape[1:] == (3, 224, 224) and images.shape[0] == labels.shape[0],
            "dtype": images.dtype == torch.float32 and labels.dtype == torch.int64,
            "channels_last": images.is_contiguous(memory_format=torch.channels_last),
            "device": images.device.type == device.type and labels.device.type == device.type,
            "range": low - 1e-3 <= float(images.min()) and float(images.max()) <= high + 1e-3,
        }
        problems += [f"{'train' if train else 'eval'}: {name}" for name, ok in checks.items() if not ok]
    return {"ok": not problems, "problems": problems}


def broken_epoch(backend: str, root: Path, device: torch.device, workers: int) -> dict:
    loader = create_loader(backend, root, train=True, batch_size=4, image_size=64, workers=workers, device=device)
    shapes = {tuple(images.shape) for images, _ in loader}
    return {"batch_shapes": sorted(shapes), "skipped": sorted(Path(p).name for p, _ in loader.skipped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, help="an existing dataset folder (default: build an ImageNet-like one, "
                                                  "which needs scikit-image)")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--timed", type=int, default=20, help="timed batches per backend")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    backends = available_backends(device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "backends": backends, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = args.data or make_imagenet_like(Path(tmp) / "inl", classes=args.classes, per_class=args.per_class,
                                               val_per_class=max(1, args.per_class // 4))
        result["dataset"], result["dataset_seconds"] = str(root), time.perf_counter() - started
        result["contract"] = {name: contract(name, root, device, args.workers, args.batch_size) for name in backends}
        folder_backends = tuple(name for name in backends if name != "synthetic")
        options = dict(image_size=224, batch_size=args.batch_size, workers=args.workers, device=device)
        result["eval_pixel_difference"] = compare_backends(root, folder_backends, **options)["backends"]
        result["train_pixel_difference"] = compare_backends(root, ("pytorch", "gpu"), train=True, **options)["backends"]
        broken_root = Path(tmp) / "broken"
        make_broken_dataset(broken_root)
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = BOMB_LIMIT
        result["broken_files"] = {name: broken_epoch(name, broken_root, device, 2)
                                  for name in ("pytorch", "gpu", "dali-gpu") if name in backends}
        Image.MAX_IMAGE_PIXELS = None
        result["images_per_second"] = {}
        for name in backends:
            loader = create_loader(name, root, train=True, batch_size=args.batch_size, image_size=224,
                                   workers=args.workers, device=device, memory_format=torch.channels_last,
                                   num_classes=1000 if name == "synthetic" else None)
            result["images_per_second"][name] = measure_loader(loader, warmup_batches=5, timed_batches=args.timed,
                                                               window=max(1, args.timed // 4))
            del loader
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
