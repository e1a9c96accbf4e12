"""Which samples a rank reads in an epoch, in which order, and each sample's augmentation seed.

Everything here is a pure function of (seed, epoch, rank, world size) and the dataset size: not of the
worker count, the worker RNG, or where an epoch was resumed. That is what makes resume exact.

- Training: one permutation of the dataset per (seed, epoch); rank r takes every world_size-th element of
  it from position r, after dropping the tail that would give ranks unequal shares (at most world_size - 1
  images an epoch, a different few each epoch). Shards are disjoint and every rank has the same batch count.
- Validation: dataset order, rank r takes images r, r + world_size, ...; no padding and no dropping, so every
  image is evaluated exactly once across ranks (ranks may differ by one image, and by one batch).
"""
from __future__ import annotations

import math

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (Steele et al.'s SplitMix64 finalizer), elementwise, wrapping arithmetic."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The augmentation seed of each dataset index in `indices` for this (seed, epoch): uint64, one per index."""
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(epoch))
        return _splitmix64(key ^ np.asarray(indices, dtype=np.uint64))


def shard_indices(num_samples: int, *, train: bool, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """The dataset indices rank `rank` reads in `epoch`, in reading order."""
    if train:
        order = np.random.default_rng([seed, epoch]).permutation(num_samples)
        per_rank = num_samples // world_size
        return order[rank:per_rank * world_size:world_size]
    return np.arange(rank, num_samples, world_size)


class ShardBatchSampler:
    """This rank's batches of (dataset index, sample seed) for the current epoch, from `start_batch` on.

    torch's DataLoader takes it as `batch_sampler`; it is re-read at every new iteration, so `set_epoch`
    takes effect even with persistent workers. len() is the batch count of a whole epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, *, train: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.train, self.drop_last, self.seed = train, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0
        shard = (num_samples // world_size if train
                 else len(range(rank, num_samples, world_size)))
        self.num_batches = shard // batch_size if drop_last else math.ceil(shard / batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}], got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_indices(self) -> np.ndarray:
        """Dataset indices this rank still reads this epoch: from start_batch to the last (kept) batch."""
        indices = shard_indices(self.num_samples, train=self.train, seed=self.seed, epoch=self.epoch,
                                rank=self.rank, world_size=self.world_size)
        return indices[self.start_batch * self.batch_size:self.num_batches * self.batch_size]

    def __iter__(self):
        indices = self.epoch_indices()
        seeds = sample_seeds(self.seed, self.epoch, indices) if self.train else np.zeros_like(indices)
        indices, seeds = indices.tolist(), seeds.tolist()
        for start in range(0, len(indices), self.batch_size):
            yield list(zip(indices[start:start + self.batch_size], seeds[start:start + self.batch_size]))
