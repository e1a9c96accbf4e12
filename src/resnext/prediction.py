"""Prediction on image files: the eval preprocessing as a reusable callable, batched inference, class names.

    import resnext
    for result in resnext.predict(["photos/", "shots/*.jpg"], weights="model_best.pth.tar", topk=5):
        print(result.path, result.classes[0], result.probabilities[0])

    preprocessing = Preprocessing.for_weights(meta)    # the weights' own image size, crop and interpolation
    batch = torch.stack([preprocessing(path) for path in paths])

Pixels go through the same code as the validation loaders (resnext.data: libjpeg-turbo or Pillow decode, shorter
side to round(size / crop_pct), center crop, ImageNet normalization), so a file predicted here gets the logits it
gets inside `resnext evaluate`, with one difference meant for people's photos: an image whose EXIF orientation tag
says it is stored sideways (a phone held upright) is turned upright first (exif_orientation=False, or
--no-exif-orientation, reads it as stored, as the loaders do unless told otherwise). A file that cannot be read
becomes a Prediction with `error` set; the others go on.
"""
from __future__ import annotations

import glob
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from .data import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, UnreadableImageError
from .data.decode import EMPTY_FILE, decode_file, decode_pixels, to_rgb
from .data.folder import walk_images
from .data.transforms import eval_resize_crop, interpolation_mode, resize_size
from .device import autocast
from .errors import UserError
from .weights import imagenet_class_names

log = logging.getLogger("resnext.predict")

DEFAULT_IMAGE_SIZE = 224
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bilinear"


def class_names_for(num_classes: int, names: Sequence[str] | None, given: str | os.PathLike | Sequence[str] | None = None
                    ) -> list[str]:
    """The names to print for a classifier: its own, else ImageNet's for 1,000 outputs, else class_0, class_1...

    given: class names from the user (--class-names: a labels file, a dataset folder, or a list), matched to the
    weights' own by name (resnext.data.match_classes): for weights that carry names they must be among them
    (the weights' order stays, whatever the order given); weights without names take them in the order given,
    as many as the weights have classes. A UserError names what does not match.
    """
    if given is not None:
        from .data.classes import match_classes, read_class_names

        if isinstance(given, (str, os.PathLike)):
            listed, source = read_class_names(given), f"--class-names '{given}'"
        else:
            listed, source = [str(name) for name in given], "the class names given"
        own = names if names and len(names) == num_classes else None
        return list(match_classes(listed, own, num_classes, data=source, what="class name").class_names)
    if names and len(names) == num_classes:
        return [str(name) for name in names]
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{index}" for index in range(num_classes)]


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of one image: decode, upright by EXIF orientation, shorter side to round(size / crop_pct),
    center crop, normalize.

    Calling it on a path, bytes or a PIL image returns a float32 (3, image_size, image_size) tensor, normalized
    with `mean` / `std` (of [0, 1] pixels). `for_weights(meta)` takes the values the weights were trained with.
    exif_orientation: turn images upright by their EXIF orientation tag (Pillow's ImageOps.exif_transpose), on by
    default because people's photos need it; False gives exactly the loaders' default pixels.
    """

    image_size: int = DEFAULT_IMAGE_SIZE
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    exif_orientation: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise UserError(f"image size must be a whole number >= 1, got {self.image_size!r}.")
        resize_size(self.image_size, self.crop_pct)  # a UserError for a crop_pct outside (0, 1]
        interpolation_mode(self.interpolation)  # a UserError for an unknown interpolation

    @classmethod
    def for_weights(cls, meta=None, image_size: int | None = None, crop_pct: float | None = None,
                    interpolation: str | None = None, exif_orientation: bool = True) -> "Preprocessing":
        """The preprocessing stored with the weights (ModelMeta.preprocessing), with any value overridden."""
        stored = dict(getattr(meta, "preprocessing", None) or {})

        def pick(given, key: str, default):
            return given if given is not None else stored.get(key) or default

        return cls(image_size=int(pick(image_size, "image_size", DEFAULT_IMAGE_SIZE)),
                   crop_pct=float(pick(crop_pct, "crop_pct", DEFAULT_CROP_PCT)),
                   interpolation=pick(interpolation, "interpolation", DEFAULT_INTERPOLATION),
                   mean=tuple(stored.get("mean") or IMAGENET_MEAN), std=tuple(stored.get("std") or IMAGENET_STD),
                   exif_orientation=exif_orientation)

    def to_dict(self) -> dict:
        """The values that describe the weights' preprocessing (what checkpoints and exports store); whether
        EXIF orientation is applied is a choice of the caller, so it is not among them."""
        values = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        values.pop("exif_orientation")
        return values

    def pixels(self, source) -> Tensor:
        """uint8 (3, H, W) RGB pixels of a path, encoded bytes, or PIL image; UnreadableImageError if unreadable."""
        if isinstance(source, (str, os.PathLike)):
            return decode_file(source, exif_orientation=self.exif_orientation)
        if isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
            data = np.frombuffer(source, dtype=np.uint8).copy()  # writable: torch.from_numpy shares it
            if data.size == 0:
                raise UnreadableImageError("<bytes>", EMPTY_FILE)
            return decode_pixels(data, "<bytes>", exif_orientation=self.exif_orientation)
        if isinstance(source, Image.Image):
            if self.exif_orientation:
                source = ImageOps.exif_transpose(source)
            return torch.from_numpy(np.array(to_rgb(source))).permute(2, 0, 1)
        raise TypeError(f"expected a path, bytes or a PIL image, got {type(source).__name__}")

    def __call__(self, source) -> Tensor:
        crop = eval_resize_crop(self.pixels(source), self.image_size, self.crop_pct, self.interpolation)
        return self.normalize(crop.unsqueeze(0))[0]

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (N, 3, H, W) -> float32 normalized with this preprocessing's mean and std."""
        mean = torch.tensor(self.mean, device=images.device).mul(255).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).mul(255).view(1, 3, 1, 1)
        return images.float().sub_(mean).div_(std)


@dataclass
class Prediction:
    """The top-k classes of one image, best first; `error` says why a file could not be read (then no classes)."""

    path: str
    classes: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)  # softmax of the logits
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """A loaded model with its class names and preprocessing; turns images into logits or top-k classes."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], preprocessing: Preprocessing, *,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 memory_format: str | None = None) -> None:
        from .device import resolve_memory_format, resolve_precision

        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.memory_format = resolve_memory_format(memory_format, self.device)
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.class_names = list(class_names)
        self.preprocessing = preprocessing

    @classmethod
    def from_weights(cls, weights, *, use_ema: bool = False, arch: str | None = None,
                     device: str | torch.device | None = None, precision: str | None = None,
                     image_size: int | None = None, crop_pct: float | None = None,
                     interpolation: str | None = None, exif_orientation: bool = True,
                     class_names: str | os.PathLike | Sequence[str] | None = None) -> "Predictor":
        """Load `weights` (any layout resnext.load_model reads) with the preprocessing they were trained with.

        class_names: names for weights that carry none, or a check of those they carry (class_names_for).
        """
        from .data import resolve_device
        from .weights import load_model

        device = resolve_device(device)
        model, meta = load_model(weights, arch=arch, use_ema=use_ema, device=device)
        preprocessing = Preprocessing.for_weights(meta, image_size, crop_pct, interpolation, exif_orientation)
        return cls(model, class_names_for(meta.num_classes, meta.class_names, class_names), preprocessing,
                   device=device, precision=precision)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.inference_mode()
    def logits(self, images: Tensor) -> Tensor:
        """float32 logits (N, classes) on the CPU of preprocessed images (N, 3, S, S)."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.precision):
            return self.model(images).float().cpu()

    def top(self, logits: Tensor, topk: int) -> tuple[list[list[int]], list[list[float]]]:
        """Indices and softmax probabilities of the `topk` best classes of each row, best first."""
        probabilities, indices = logits.softmax(dim=1).topk(min(topk, self.num_classes), dim=1)
        return indices.tolist(), probabilities.tolist()

    def predict_files(self, paths: Sequence[str | os.PathLike], *, topk: int = 5, batch_size: int = 32,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Predictions for `paths` in order, `batch_size` images per forward pass; files decode on `workers` threads.

        An unreadable file yields a Prediction with `error` (and a warning on the "resnext" logger) and is left
        out of its batch; the other files are not affected.
        """
        if topk < 1 or batch_size < 1:
            raise UserError(f"topk and batch_size must be >= 1, got {topk} and {batch_size}.")
        workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = [os.fspath(path) for path in paths[start:start + batch_size]]
                loaded = list(pool.map(self._load, chunk))
                good = [tensor for tensor in loaded if isinstance(tensor, Tensor)]
                rows = iter(zip(*self.top(self.logits(torch.stack(good)), topk))) if good else iter(())
                for path, tensor in zip(chunk, loaded):
                    if isinstance(tensor, Tensor):
                        best, probabilities = next(rows)
                        yield Prediction(path, [self.class_names[i] for i in best], best, probabilities)
                    else:
                        log.warning("skipped %s: %s", path, tensor)
                        yield Prediction(path, error=tensor)

    def _load(self, path: str) -> Tensor | str:
        try:
            return self.preprocessing(path)
        except UnreadableImageError as err:
            return err.reason


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named by `inputs`: files as given, folders searched recursively for images, glob patterns expanded.

    Folders are searched with the loaders' rule (resnext.data.folder.walk_images: any depth, symbolic links
    followed, hidden names and non-image files left out). Order: the inputs' order, each folder's files in
    ImageFolder's order, each pattern's matches sorted; a file named twice is listed once.
    A UserError names an input that does not exist, a pattern that matches nothing, or a folder without images.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            images = _images_in(path)
            if not images:
                raise UserError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "pass image files or a folder that has some.")
        elif path.is_file():
            images = [path]
        elif glob.has_magic(text):
            matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(text), recursive=True))
            images = [match for match in matches if match.is_file()]
            for folder in (match for match in matches if match.is_dir()):
                images += _images_in(folder)
            if not images:
                raise UserError(f"no file matches '{text}'; check the pattern (quote it so the shell does not "
                                "expand it first).")
        else:
            raise UserError(f"'{text}' does not exist; pass image files, folders or glob patterns.")
        found.update(dict.fromkeys(images))
    return list(found)


def _images_in(folder: Path) -> list[Path]:
    return [folder / image for image in walk_images(folder)[0]]


def predict(inputs: str | os.PathLike | Iterable[str | os.PathLike], weights, *, topk: int = 5,
            batch_size: int = 32, use_ema: bool = False, device: str | torch.device | None = None,
            precision: str | None = None, image_size: int | None = None, crop_pct: float | None = None,
            interpolation: str | None = None, workers: int | None = None, exif_orientation: bool = True,
            class_names: str | os.PathLike | Sequence[str] | None = None) -> list[Prediction]:
    """Top-k classes of image files, folders (searched recursively) or glob patterns, with the model in `weights`.

    Class names come from the weights (our checkpoints and safetensors exports carry the dataset's names); a
    1,000-class model without names gets ImageNet's. Preprocessing is the weights' own unless overridden.
    Unreadable files come back with `error` set instead of classes. Photos are turned upright by their EXIF
    orientation tag unless exif_orientation=False. class_names: see class_names_for.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = find_images(inputs)
    predictor = Predictor.from_weights(weights, use_ema=use_ema, device=device, precision=precision,
                                       image_size=image_size, crop_pct=crop_pct, interpolation=interpolation,
                                       exif_orientation=exif_orientation, class_names=class_names)
    return list(predictor.predict_files(paths, topk=topk, batch_size=batch_size, workers=workers))
