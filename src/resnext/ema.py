"""Exponential moving average of a model's weights (`--use-ema DECAY`), with NVIDIA's warm-up of the decay."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """An averaged copy of `model`: after each optimizer step t, ema <- decay_t * ema + (1 - decay_t) * model for
    floating-point parameters and buffers, with decay_t = min(decay, (1 + t) / (10 + t)) (NVIDIA's DLE ConvNets
    warm-up, image_classification/utils.py), and integer buffers (BatchNorm's num_batches_tracked) copied.

    `module` is the averaged model (eval mode, no gradients), on the same device and memory format as `model`.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self._pairs: tuple[list, list, list, list] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards `model`'s current weights; `step` is the 0-based optimizer step just taken."""
        if self._pairs is None:  # state_dict tensors keep their identity, so pair them once
            ours, live = self.module.state_dict(), model.state_dict()
            floats = [k for k in ours if ours[k].is_floating_point()]
            others = [k for k in ours if not ours[k].is_floating_point()]
            self._pairs = ([ours[k] for k in floats], [live[k] for k in floats],
                           [ours[k] for k in others], [live[k] for k in others])
        ema_f, live_f, ema_i, live_i = self._pairs
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(ema_f, live_f, 1.0 - decay)
        for target, source in zip(ema_i, live_i):
            target.copy_(source)
