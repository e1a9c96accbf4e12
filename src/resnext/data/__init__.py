"""Data: dataset folders, the embedded demo dataset, and five backends behind one loader interface.

    from resnext.data import create_loader, embedded
    loader = create_loader("pytorch", embedded.materialize(), train=True, batch_size=64, image_size=32, workers=2)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # normalized float32 images and int64 labels, on the device
            ...

docs/ARCHITECTURE.md ("Data contract") is the interface; docs/data.md explains the backends and their numbers.
"""
from __future__ import annotations

import difflib
import logging
import os

import torch

from ..device import resolve_device
from ..errors import UserError
from ..recipe import DATA_BACKENDS as BACKENDS
from ..recipe import JPEG_DECODES
from .classes import ClassLabels, match_classes, read_class_map, read_class_names
from .decode import UnreadableImageError, load_image, max_image_pixels
from .folder import IMAGE_EXTENSIONS, ImageFolder, find_dataset, resolve_split, walk_images
from .transforms import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess, TrainAugment, eval_transform, normalize_batch

__all__ = ["BACKENDS", "create_loader", "find_dataset", "resolve_device", "ImageFolder", "IMAGE_EXTENSIONS",
           "UnreadableImageError", "load_image", "eval_transform", "normalize_batch", "IMAGENET_MEAN", "IMAGENET_STD",
           "ClassLabels", "match_classes", "read_class_map", "read_class_names", "walk_images"]

MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a whole number >= 1, got {value!r}.")


def create_loader(backend: str, root: str | os.PathLike | None = None, *, train: bool = True, batch_size: int = 256,
                  image_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bilinear", workers: int = 4,
                  device: str | torch.device | None = None,
                  memory_format: torch.memory_format = torch.contiguous_format, rank: int = 0, world_size: int = 1,
                  seed: int = 0, drop_last: bool | None = None, num_classes: int | None = None,
                  augmentation: str | None = None, prefetch: int = 2, synthetic_batches_per_epoch: int = 100,
                  jpeg_decode: str = "scaled", gpu_batched: bool = True, dali_ops: str = "resnext",
                  classes: ClassLabels | None = None, exif_orientation: bool = False):
    """A loader of (images, labels) device batches; see docs/ARCHITECTURE.md "Data contract".

    backend: pytorch | gpu | dali-cpu | dali-gpu | synthetic.
    root: a split folder (one sub-folder of images per class) or a dataset root holding train/ and val/
        (then `train` picks the split). Not used by synthetic.
    train: training augmentation (RandomResizedCrop + flip [+ AutoAugment]), shuffling and disjoint shards;
        else eval preprocessing (resize to round(image_size / crop_pct), center crop) in file order.
    batch_size: per process. drop_last: default `train`.
    workers: worker processes (pytorch, gpu) or DALI threads; 0 reads in the main process.
    prefetch: batches each worker (or DALI) prepares ahead.
    num_classes: the synthetic label range (default 1000); for folder backends, when given, it must equal
        the number of classes (of `classes` when given, else of class folders).
    augmentation: None or "autoaugment" (pytorch and gpu backends).
    synthetic_batches_per_epoch: len() of the synthetic loader.
    jpeg_decode: how the pytorch backend's training loader decodes JPEGs: "scaled" (default) draws the crop box
        from the header and decodes with simplejpeg at 1/2, 1/4 or 1/8 scale when the crop keeps image_size
        pixels per side (pixels within the tolerance in docs/data.md); "full" decodes every image at full size.
        Evaluation loaders always decode in full.
    gpu_batched: the gpu backend crops, resizes and flips a whole batch in a few launches
        (gpu.batched_resized_crop); False runs the per-sample reference path.
    dali_ops: the DALI backends' pipeline: "resnext" (the same pixels as the pytorch backend) or "nvidia"
        (NVIDIA's operators and parameters, what `resnext train` runs by default); see data/dali.py.
    classes: the label of each class folder (match_classes: the weights' index of the folder's name), default
        the class folders in sorted order numbered from 0. loader.class_names is then classes.class_names.
    exif_orientation: turn each image upright by its EXIF orientation tag before cropping (every backend).
        Off by default, as in torchvision's and NVIDIA's loaders (published ImageNet results are without it).
    """
    if backend not in BACKENDS:
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown data backend '{backend}'; {hint}choose one of {', '.join(BACKENDS)}.")
    _check_positive(batch_size=batch_size, image_size=image_size, prefetch=prefetch, world_size=world_size)
    if not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers must be a whole number >= 0, got {workers!r}.")
    if not 0 <= rank < world_size:
        raise UserError(f"rank must be in [0, {world_size}), got {rank}.")
    if jpeg_decode not in JPEG_DECODES:
        raise UserError(f"jpeg_decode must be one of {', '.join(JPEG_DECODES)}, got {jpeg_decode!r}.")
    if memory_format not in MEMORY_FORMATS:
        raise UserError(f"memory_format must be torch.contiguous_format or torch.channels_last, got {memory_format}.")
    device = resolve_device(device)
    if backend == "synthetic":
        _check_positive(synthetic_batches_per_epoch=synthetic_batches_per_epoch)
        from .synthetic import SyntheticLoader

        num_classes = num_classes or (classes.num_classes if classes is not None else 1000)
        return SyntheticLoader(batch_size=batch_size, image_size=image_size, num_classes=num_classes,
                               device=device, memory_format=memory_format, rank=rank, world_size=world_size, seed=seed,
                               batches_per_epoch=synthetic_batches_per_epoch)

    if root is None:
        raise UserError(f"the {backend} backend reads a dataset folder; give its path "
                        "(or use --data-backend synthetic).")
    if interpolation == "triangular" and not backend.startswith("dali"):
        raise UserError(f"interpolation 'triangular' exists in DALI only; use bilinear or bicubic with the {backend} "
                        "backend, or a DALI backend.")
    preprocess = None
    if not backend.startswith("dali"):
        preprocess = (TrainAugment(image_size, interpolation, augmentation) if train
                      else EvalPreprocess(image_size, crop_pct, interpolation))
    folder = ImageFolder(resolve_split(root, train), classes)
    if num_classes is not None and num_classes != len(folder.class_names):
        what = "classes" if classes is not None else "class folders"
        raise UserError(f"'{folder.root}' has {len(folder.class_names)} {what} but num_classes is "
                        f"{num_classes}; leave num_classes out to take it from the dataset.")
    common = dict(train=train, batch_size=batch_size, workers=workers, device=device, memory_format=memory_format,
                  rank=rank, world_size=world_size, seed=seed, drop_last=train if drop_last is None else drop_last,
                  prefetch=prefetch, exif_orientation=exif_orientation)
    if backend.startswith("dali"):
        if augmentation is not None:
            raise UserError(f"--augmentation {augmentation} runs in the pytorch and gpu backends, not in {backend} "
                            "(as in NVIDIA's code); choose --data-backend pytorch or gpu.")
        from .dali import DaliLoader

        loader = DaliLoader(folder, decode_on_gpu=backend == "dali-gpu", image_size=image_size, crop_pct=crop_pct,
                            interpolation=interpolation, ops=dali_ops, **common)
    elif backend == "gpu":
        from .gpu import GpuLoader

        loader = GpuLoader(folder, preprocess=preprocess, max_pixels=max_image_pixels(), batched=gpu_batched,
                           **common)
    else:
        from . import decode
        from .pytorch import PytorchLoader

        if train and jpeg_decode == "scaled" and decode.simplejpeg is None:
            logging.getLogger("resnext.data").warning(
                "simplejpeg is not installed: training JPEGs are decoded at full size (pip install simplejpeg).")
        loader = PytorchLoader(folder, preprocess=preprocess, max_pixels=max_image_pixels(),
                               scaled_decode=jpeg_decode == "scaled", **common)
    if train and len(loader) == 0:
        raise UserError(f"'{folder.root}' has {len(folder)} images, fewer than one batch of {batch_size} per process "
                        f"({world_size} processes); lower the batch size.")
    return loader


def resolve_backend(name: str | None) -> str:
    """`name`, or for None NVIDIA's default dali-cpu when DALI is installed, else pytorch (with a notice)."""
    if name is not None:
        return name
    import importlib.util
    import logging

    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return "dali-cpu"
    logging.getLogger("resnext").info("--data-backend: NVIDIA's default dali-cpu needs DALI, which is not installed "
                                      "(pip install 'resnext[dali]'); using pytorch.")
    return "pytorch"


def check_num_classes(num_classes: int | None, class_names: list[str], where) -> None:
    """A classifier of `num_classes` outputs fits the dataset when it has an output for every class folder; more is
    allowed (NVIDIA's --num_classes 1000 on a smaller dataset: the extra outputs are never a label)."""
    if num_classes is None or num_classes == len(class_names):
        return
    if num_classes < len(class_names):
        raise UserError(f"--num-classes {num_classes} does not match the {len(class_names)} class folders in {where}; "
                        "drop --num-classes or fix the dataset.")
    import logging

    logging.getLogger("resnext").info(f"the classifier has {num_classes} outputs for {len(class_names)} class folders "
                                      f"in {where}; outputs {len(class_names)}-{num_classes - 1} are never a label.")
