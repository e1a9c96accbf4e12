"""MixUp (Zhang et al., 2018) as NVIDIA's recipe applies it (`--mixup ALPHA`), with random draws that resume replays."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def step_rng(seed: int, global_step: int, micro: int, rank: int) -> random.Random:
    """The random stream of one micro-batch: a function of its position only, so resume replays it exactly."""
    return random.Random(f"resnext:{seed}:{global_step}:{micro}:{rank}")


def mixup(images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float,
          rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself: one weight lam ~ Beta(alpha, alpha) per batch (NVIDIA's DLE
    ConvNets, image_classification/mixup.py).

    images: float (N, C, H, W); labels: int64 (N,) class indices. Returns the mixed images (same shape, dtype and
    memory format) and soft targets, float32 (N, num_classes) rows summing to 1, for a cross-entropy with
    probabilities.
    """
    lam = rng.betavariate(alpha, alpha)
    # Drawn where the images are: a permutation made on the host would be a pageable copy every step.
    generator = torch.Generator(device=images.device).manual_seed(rng.getrandbits(63))
    perm = torch.randperm(images.shape[0], generator=generator, device=images.device)
    onehot = F.one_hot(labels, num_classes).float()
    mixed_images = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
    return mixed_images, onehot.mul(lam).add_(onehot[perm], alpha=1.0 - lam)
