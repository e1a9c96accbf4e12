"""The `dali-cpu` and `dali-gpu` backends: NVIDIA DALI pipelines (optional extra).

Install with `pip install 'resnext[dali]'`. Two pipelines (`ops`):

- "nvidia" (`resnext train`'s default, --dali-ops; NVIDIA's HybridTrainPipe / HybridValPipe in
  image_classification/dataloaders.py). Train: decode (`dali-cpu`: on the CPU; `dali-gpu`: nvJPEG "mixed"),
  `random_resized_crop` to image_size (area 0.08-1, aspect 3/4-4/3, 100 attempts, no antialiasing) where the decoder
  put the image, `crop_mirror_normalize` with a coin-flip mirror. Eval: the "mixed" decoder for both backends,
  `resize` of the shorter side to image size + 32 (image_size / crop_pct with --crop-pct) without antialiasing,
  DALI's center crop. On a machine without a GPU everything runs on the CPU.
- "resnext" (ours: create_loader's default, evaluate / data compare, `--dali-ops resnext`): the same pixels as the
  pytorch backend would crop. Train: `decoders.image_random_crop` (the same crop parameters), antialiased `resize`;
  eval: decode, antialiased resize of the shorter side to round(image_size / crop_pct) and a center crop with
  torchvision's rounding. `dali-gpu` decodes and resizes on the GPU, `dali-cpu` on the CPU.

Both normalize on the GPU when the device is CUDA (NVIDIA's arrangement); without a GPU, DALI runs with
device_id=None.

What differs from the `pytorch` and `gpu` backends, by DALI's design:
- The sample order and the shards are the same (DALI reads the file list this module gives it, per rank and
  epoch), but DALI draws crops and flips from its own generator: augmentation is reproducible for a fresh
  epoch with the same seed, not after resuming mid-epoch. The pipeline is rebuilt at each epoch for that.
- DALI stops at a file it cannot decode. This module then finds the unreadable files of the batches in
  flight with the Python decoders, records them like the other backends do (training: replaced by the next
  readable file; validation: left out), and restarts the pipeline at the first batch not yet delivered.
- Resize filters differ slightly from torchvision's (docs/data.md gives the measured difference: 0.14-0.18
  levels of 255 on average for eval crops).
- DALI has no decompression-bomb limit.
- AutoAugment is not offered (NVIDIA's code has it in the PyTorch loader only).
"""
from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from ..errors import UserError
from .base import Batch, SkipRecorder
from .decode import UnreadableImageError, decode_file
from .folder import ImageFolder, read_sample
from .sampling import ShardBatchSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

INSTALL_HINT = "pip install 'resnext[dali]'"
# After a DALI failure, how many batches past the last delivered one are checked for the file that caused it:
# more than DALI reads ahead (its reader, executor and iterator queues).
SCAN_BATCHES = 16
# DALI decodes images of any size, so the checks made on its behalf do too (Pillow's own 2x limit still applies).
NO_PIXEL_LIMIT = 2**62


def import_dali():
    try:
        return importlib.import_module("nvidia.dali")
    except ImportError:
        raise UserError(f"the DALI backends need NVIDIA DALI, which is not installed; install it with "
                        f"`{INSTALL_HINT}` or choose --data-backend pytorch or gpu.") from None


class DaliLoader(SkipRecorder):
    """An iterable of (images, labels) device batches from a DALI pipeline (see resnext.data.create_loader)."""

    def __init__(self, folder: ImageFolder, *, decode_on_gpu: bool, train: bool, batch_size: int, image_size: int,
                 crop_pct: float, interpolation: str, workers: int, device: torch.device,
                 memory_format: torch.memory_format, rank: int, world_size: int, seed: int, drop_last: bool,
                 prefetch: int, ops: str = "resnext", exif_orientation: bool = False):
        if ops not in ("nvidia", "resnext"):
            raise UserError(f"unknown DALI pipeline '{ops}'; choose nvidia or resnext.")
        self.ops = ops
        if decode_on_gpu and device.type != "cuda":
            raise UserError("dali-gpu decodes on the GPU and needs a CUDA device; use dali-cpu on a machine "
                            "without one.")
        import_dali()
        self.backend = "dali-gpu" if decode_on_gpu else "dali-cpu"
        self.folder, self.train, self.batch_size = folder, train, batch_size
        self.decode_on_gpu, self.device, self.memory_format = decode_on_gpu, device, memory_format
        self.image_size, self.resize_shorter = image_size, resize_size(image_size, crop_pct)
        self.interpolation = interpolation
        self.exif_orientation = exif_orientation
        self.threads, self.prefetch, self.seed, self.rank = max(1, workers), prefetch, seed, rank
        self.class_names = list(folder.class_names)
        self.dataset_size = len(folder)
        self.batch_sampler = ShardBatchSampler(len(folder), batch_size, train=train, drop_last=drop_last, seed=seed,
                                               rank=rank, world_size=world_size)
        self._replacements: dict[int, int] = {}  # unreadable index -> replacement index (-1: left out)
        self._start_skip_log()

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, start_batch)

    def _pipeline(self, files: list[str], labels: list[int], seed: int):
        dali = import_dali()
        fn, types = dali.fn, dali.types
        on_gpu = self.device.type == "cuda"
        device_id = None
        if on_gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        interp = {"bicubic": types.INTERP_CUBIC, "triangular": types.INTERP_TRIANGULAR}.get(self.interpolation,
                                                                                          types.INTERP_LINEAR)
        decoder = "mixed" if self.decode_on_gpu else "cpu"
        # NVIDIA's paddings: the nvJPEG buffers are sized once for ImageNet instead of growing batch by batch.
        padding = {"device_memory_padding": 211025920, "host_memory_padding": 140544512} if self.decode_on_gpu else {}
        # DALI turns images upright by their EXIF tag unless told otherwise; the other backends (and NVIDIA's and
        # torchvision's loaders) do not, so the choice is explicit: the same pixels whatever the backend.
        orientation = {"adjust_orientation": self.exif_orientation}
        layout = "HWC" if self.memory_format == torch.channels_last else "CHW"
        size = self.image_size

        @dali.pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=device_id, seed=seed,
                           prefetch_queue_depth=self.prefetch)
        def pipeline():
            jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, pad_last_batch=True,
                                           name="Reader")
            crop_window = None
            if self.ops == "nvidia":
                images, mirror, crop_window = self._nvidia_ops(fn, types, jpegs, interp, decoder, padding, on_gpu,
                                                                orientation)
            elif self.train:
                images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                                       random_aspect_ratio=[0.75, 4.0 / 3.0], random_area=[0.08, 1.0],
                                                       num_attempts=100, **padding, **orientation)
                images = fn.resize(images, resize_x=size, resize_y=size, interp_type=interp, antialias=True)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **padding, **orientation)
                shape = fn.peek_image_shape(jpegs, dtype=types.INT32, **orientation)
                images = self._eval_resize_crop(fn, types, images, shape, interp)
                mirror = 0
            if on_gpu:
                images, label = images.gpu(), label.gpu()
            crop = {"crop": crop_window} if crop_window else {}
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout=layout, mirror=mirror,
                                              mean=[m * 255 for m in IMAGENET_MEAN],
                                              std=[s * 255 for s in IMAGENET_STD], **crop)
            return images, label

        return pipeline()

    def _nvidia_ops(self, fn, types, jpegs, interp, decoder, padding, on_gpu, orientation):
        """NVIDIA's operators: decode, then random_resized_crop (train) or resize_shorter (eval), no antialiasing.

        The EXIF orientation follows --exif-orientation like every backend (NVIDIA's pipeline leaves it to DALI's
        default, which turns images upright in DALI releases that have the option)."""
        size = self.image_size
        if self.train:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **padding, **orientation)
            images = fn.random_resized_crop(images, size=[size, size], interp_type=interp,
                                            random_aspect_ratio=[0.75, 4.0 / 3.0], random_area=[0.08, 1.0],
                                            num_attempts=100, antialias=False)
            return images, fn.random.coin_flip(probability=0.5), None
        # NVIDIA decodes validation images with nvJPEG ("mixed") for dali-cpu too; without a GPU, on the CPU.
        images = fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu", output_type=types.RGB, **orientation)
        images = fn.resize(images, resize_shorter=self.resize_shorter, interp_type=interp, antialias=False)
        return images, 0, (size, size)

    def _eval_resize_crop(self, fn, types, images, shape, interp):
        """torchvision's eval geometry in DALI arithmetic, so that both backends crop the very same pixels.

        DALI's own resize_shorter rounds the longer side where torchvision truncates it, and its centered crop
        rounds a half-pixel margin up where torchvision rounds it to even: a one-pixel shift on about half of
        ImageNet's images (mean difference 6.6 levels instead of 0.17 on ~500x375 photos, measured).
        """
        shorter, crop = self.resize_shorter, self.image_size
        height, width = shape[0], shape[1]
        width_is_shorter = fn.cast(width <= height, dtype=types.INT32)
        new_width = width_is_shorter * shorter + (1 - width_is_shorter) * ((shorter * width) // height)
        new_height = (1 - width_is_shorter) * shorter + width_is_shorter * ((shorter * height) // width)
        images = fn.resize(images, resize_x=fn.cast(new_width, dtype=types.FLOAT),
                           resize_y=fn.cast(new_height, dtype=types.FLOAT), interp_type=interp, antialias=True)

        def centered_start(size):  # int(round(margin / 2)) with Python's round half to even
            margin = size - crop
            half = margin // 2
            return half + (margin & 1) * (half & 1)

        return fn.slice(images, start=fn.stack(centered_start(new_height), centered_start(new_width)),
                        shape=[crop, crop], axis_names="HW")

    def _epoch_files(self) -> tuple[list[str], list[int]]:
        files, labels = [], []
        for index in self.batch_sampler.epoch_indices().tolist():
            index = self._replacements.get(index, index)
            if index >= 0:
                files.append(self.folder.path(index))
                labels.append(self.folder.label(index))
        return files, labels

    def __iter__(self) -> Iterator[Batch]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        sampler = self.batch_sampler
        delivered = 0  # samples of this epoch's list already yielded
        restarts = 0
        while True:
            files, labels = self._epoch_files()
            files, labels = files[delivered:], labels[delivered:]
            if not files:
                return
            seed = np.random.SeedSequence([self.seed, sampler.epoch, self.rank, restarts]).generate_state(1)[0]
            pipeline = iterator = None
            try:
                pipeline = self._pipeline(files, labels, int(seed) % 2**31)
                # Building the iterator already runs the pipeline (it prefetches), so it can fail on a file too.
                iterator = DALIGenericIterator([pipeline], ["images", "labels"], reader_name="Reader",
                                               last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
                for (out,) in iterator:
                    images, batch_labels = out["images"], out["labels"]
                    if images.dim() == 4 and images.shape[-1] == 3 and self.memory_format == torch.channels_last:
                        images = images.permute(0, 3, 1, 2)  # NHWC data as an NCHW-shaped channels_last tensor
                    delivered += len(batch_labels)
                    yield (images.to(self.device, non_blocking=True),
                           batch_labels.reshape(-1).long().to(self.device, non_blocking=True))
                return
            except RuntimeError as err:
                if isinstance(err, torch.cuda.OutOfMemoryError):
                    raise  # the GPU is full: not a file's fault, so no hunt for an unreadable one
                if not self._skip_unreadable(files, err):
                    raise UserError(f"DALI stopped ({_dali_reason(err)}) on a file that resnext can read; use "
                                    "--data-backend pytorch or gpu.") from None
                restarts += 1
            finally:
                del iterator, pipeline

    def _skip_unreadable(self, pending: list[str], err: RuntimeError) -> bool:
        """After DALI failed: find the unreadable files among those it had read ahead, record them with their
        replacements (training) or removal (validation); False when none is found.

        A file DALI names in its error counts as unreadable (for this backend) even if Pillow could read it.
        Otherwise the next SCAN_BATCHES batches are decoded with the Python decoders, in `workers` threads.
        """
        message = str(err)
        window = list(dict.fromkeys(pending[:SCAN_BATCHES * self.batch_size]))
        reasons = {path: f"DALI could not read it: {_dali_reason(err)}" for path in window if path in message}
        to_check = list(reasons) or window
        with ThreadPoolExecutor(self.threads) as pool:
            for path, reason in zip(to_check, pool.map(self._python_reason, to_check)):
                if reason is not None:
                    reasons[path] = reason
        index_of = {self.folder.path(self._replacements.get(i, i)): i
                    for i in self.batch_sampler.epoch_indices().tolist()}
        for path, reason in reasons.items():
            index, skips, replacement = index_of[path], [(path, reason)], -1
            if self.train:
                replacement, image = read_sample(self.folder, index + 1, lambda p: decode_file(p, NO_PIXEL_LIMIT),
                                                 skips, replace=True)
                if image is None:
                    self.record_skips(skips)
                    self.raise_damaged(path)
            self.record_skips(skips)
            self._replacements[index] = replacement
        return bool(reasons)

    def _python_reason(self, path: str) -> str | None:
        try:
            decode_file(path, NO_PIXEL_LIMIT)
        except UnreadableImageError as err:
            return err.reason
        return None


def _dali_reason(err: RuntimeError) -> str:
    """The useful line of a DALI pipeline error: the one after 'encountered:' (else the last one)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if before == "encountered:":
            return line[:200]
    return lines[-1][:200] if lines else type(err).__name__
