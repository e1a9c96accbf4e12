"""What every backend promises (the `Loader` protocol), and what the folder backends share: the epoch plan, torch's
DataLoader workers, skip reports, device prefetch.

A folder backend subclasses FolderLoader with three pieces: `_make_dataset()` (what a worker does with one sample),
`collate(samples)` (a plain function: how a worker packs a batch) and `_to_device(batch)` (what the main
process does to turn the packed batch into normalized device tensors). Nothing else differs between `pytorch`
and `gpu`.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, get_worker_info

from ..errors import UserError
from ..preemption import ignore_stop_signals
from .folder import MAX_REPLACEMENTS, ImageFolder
from .sampling import ShardBatchSampler

log = logging.getLogger("resnext.data")

Batch = tuple[Tensor, Tensor]


@runtime_checkable
class Loader(Protocol):
    """The data contract of docs/ARCHITECTURE.md, which every backend of `resnext.data.create_loader` satisfies.

    Iterating yields (images, labels): images float32 (N, 3, H, W) on the loader's device, normalized with ImageNet's
    mean/std, in the requested memory format; labels int64 (N,) on the same device.
    """

    backend: str  # the backend's name: pytorch, gpu, dali-cpu, dali-gpu or synthetic
    class_names: list[str]  # label i is class_names[i]
    dataset_size: int  # images in this split, all ranks together
    skipped: list[tuple[str, str]]  # (path, reason) of files that could not be read so far

    def __len__(self) -> int:
        """Batches this process yields in a whole epoch (also after set_epoch(e, k))."""
        ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle for `epoch` and skip its first `start_batch` batches without reading them."""
        ...

    def __iter__(self) -> Iterator[Batch]:
        ...


class SkipRecorder:
    """`skipped`: the (path, reason) pairs of files a loader could not read, each logged once."""

    folder: ImageFolder
    train: bool

    def _start_skip_log(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self._skipped_paths: set[str] = set()
        self.record_skips(self.folder.ignored, "not used")

    def record_skips(self, skips: Iterable[tuple[str, str]], action: str | None = None) -> None:
        """Add (path, reason) pairs to `skipped`; each file is logged once per loader."""
        action = action or ("replaced by the next readable image" if self.train else "left out of validation")
        for path, reason in skips:
            if path not in self._skipped_paths:
                self._skipped_paths.add(path)
                self.skipped.append((path, reason))
                log.warning("skipped %s (%s): %s", path, reason, action)

    def raise_damaged(self, last_path: str) -> None:
        raise UserError(f"{MAX_REPLACEMENTS} image files in a row up to '{last_path}' cannot be read; the dataset "
                        f"looks damaged: run `resnext data check {self.folder.root}`.")


class FolderLoader(SkipRecorder):
    """An iterable of (images, labels) device batches from an ImageFolder (see resnext.data.create_loader)."""

    backend = ""
    pin_memory = True  # whether the packed CPU batches go through pinned memory on CUDA

    def __init__(self, folder: ImageFolder, *, train: bool, batch_size: int, preprocess: Callable, workers: int,
                 device: torch.device, memory_format: torch.memory_format, rank: int, world_size: int, seed: int,
                 drop_last: bool, prefetch: int, max_pixels: int, exif_orientation: bool = False):
        self.folder = folder
        self.exif_orientation = exif_orientation
        self.train = train
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.device = device
        self.memory_format = memory_format
        self.max_pixels = max_pixels
        self.class_names = list(folder.class_names)
        self.class_to_idx = dict(folder.class_to_idx)
        self.dataset_size = len(folder)
        self.batch_sampler = ShardBatchSampler(len(folder), batch_size, train=train, drop_last=drop_last, seed=seed,
                                               rank=rank, world_size=world_size)
        self._start_skip_log()
        self._dataloader = DataLoader(
            self._make_dataset(), batch_sampler=self.batch_sampler, num_workers=workers, collate_fn=self.collate,
            pin_memory=self.pin_memory and device.type == "cuda",
            # Workers hold no state between epochs (the plan comes from the sampler), so keeping them alive
            # only saves the fork and the imports at every epoch.
            persistent_workers=workers > 0, prefetch_factor=prefetch if workers > 0 else None,
            # A stop signal sent to the whole process group is for the training loop to act on, not the workers.
            worker_init_fn=ignore_stop_signals)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Reshuffle for `epoch` (training) and skip its first `start_batch` batches without reading them."""
        self.batch_sampler.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[Batch]:
        return prefetch_to_device(self._packed_batches(), self._to_device, self.device)

    def _packed_batches(self) -> Iterator:
        skipped_before = len(self.skipped)
        for batch in self._dataloader:
            self.record_skips(batch.skips)
            if self.train and batch.missing:
                self.raise_damaged(batch.skips[-1][0])
            yield batch
        if len(self.skipped) > skipped_before:
            log.warning("%d unreadable files skipped so far in %s", len(self.skipped), self.folder.root)

    # The three pieces a backend provides.
    def _make_dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    collate: Callable[[list], object]

    def _to_device(self, batch) -> Batch:
        raise NotImplementedError


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An empty tensor, in shared memory inside a DataLoader worker so sending it to the parent costs no copy."""
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if get_worker_info() is not None else out


def prefetch_to_device(batches: Iterator, to_device: Callable[..., Batch], device: torch.device) -> Iterator[Batch]:
    """Yield to_device(batch) for each batch (empty ones left out); on CUDA, prepare the next one meanwhile.

    The side stream copies (from pinned memory) and preprocesses batch i+1 while the model works on batch i,
    as NVIDIA's loader does. The consumer's stream waits for the side stream before using a batch, and
    `record_stream` tells the caching allocator that the consumer's stream uses that memory, so it is not
    handed out again while the model still reads it.
    """
    if device.type != "cuda":
        yield from (batch for batch in map(to_device, batches) if len(batch[1]))
        return
    side = torch.cuda.Stream(device)

    def prepared() -> Iterator[Batch]:
        for batch in batches:
            with torch.cuda.stream(side):
                ready = to_device(batch)
            if len(ready[1]):  # a validation batch whose files were all unreadable has nothing to yield
                yield ready

    upcoming = prepared()
    pending = next(upcoming, None)
    while pending is not None:
        consumer = torch.cuda.current_stream(device)
        consumer.wait_stream(side)
        for tensor in pending:
            tensor.record_stream(consumer)
        ready, pending = pending, next(upcoming, None)
        yield ready
