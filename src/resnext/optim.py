"""Optimizer parameter groups and the learning-rate schedule of NVIDIA's recipe.

Differences from NVIDIA's code, on purpose: weight decay skips every BatchNorm parameter and every bias (NVIDIA
skips names containing "bn", which still decays the shortcut BN and the classifier bias), and warmup and decay are
applied per optimizer step instead of per epoch, so the LR has no jumps at epoch boundaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .recipe import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float, bn_weight_decay: bool = False) -> list[dict]:
    """Two groups: weights that decay, and BN parameters + biases that do not (unless bn_weight_decay)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = (is_norm or name == "bias") and not bn_weight_decay
            (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(config: TrainConfig, model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, config.bn_weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=config.rmsprop_alpha, eps=config.rmsprop_eps,
                                   momentum=config.momentum, foreach=True)
    # The fused CUDA kernel updates all parameters in one launch and takes the loss scaler's inf check on the
    # device, so a skipped fp16 step costs no host synchronisation.
    fused = device.type == "cuda"
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                           fused=fused, foreach=None if fused else True)


@dataclass(frozen=True)
class LRSchedule:
    """LR of each optimizer step: linear warmup, then cosine / linear decay to end_lr or NVIDIA's step decay."""

    kind: str
    peak: float
    end: float
    warmup_steps: int
    total_steps: int
    steps_per_epoch: int

    @classmethod
    def from_config(cls, config: TrainConfig, peak: float, steps_per_epoch: int) -> "LRSchedule":
        return cls(kind=config.lr_schedule, peak=peak, end=config.end_lr,
                   warmup_steps=config.warmup_epochs() * steps_per_epoch,
                   total_steps=config.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)

    def __call__(self, step: int) -> float:
        """LR for optimizer step `step` (0-based: the first update uses lr(0))."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.kind == "step":
            # NVIDIA's milestones at epochs 30, 60, 80 of 90, scaled to the run's length.
            epoch = step / self.steps_per_epoch
            epochs = self.total_steps / self.steps_per_epoch
            passed = sum(epoch >= epochs * m for m in (30 / 90, 60 / 90, 80 / 90))
            return self.peak * 0.1**passed
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "linear":
            return self.end + (self.peak - self.end) * (1.0 - progress)
        return self.end + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.peak - self.end)
