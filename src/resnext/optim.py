"""Optimizer parameter groups and the learning-rate policies of NVIDIA's ConvNets code, and our opt-in variants.

NVIDIA's semantics (image_classification/optimizers.py) by default:
- Weight decay: parameters whose name contains "bn" form a group without decay, listed first; the rest decay.
  That name filter misses the shortcut BatchNorm (`downsample.1`) and every bias. With --bn-weight-decay, SGD has
  one group of all parameters (RMSprop keeps two groups, both decayed).
- LR policies are functions of the epoch: warm-up LR x (epoch + 1) / warmup for epoch < warmup, then step (x0.1 at
  epochs 30, 60, 80), linear (to 0) or cosine (to --end-lr) over the remaining epochs; the LR is constant within an
  epoch.

Ours, opt-in: `--wd-exempt bn-and-bias` (no decay on any BatchNorm parameter nor any bias) and
`--lr-granularity step` (the same curves evaluated at the fractional epoch of every optimizer step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .recipe import TrainConfig

STEP_MILESTONES = (30, 60, 80)  # NVIDIA's lr_step_policy(base, [30, 60, 80], 0.1, warmup)
STEP_FACTOR = 0.1


def parameter_groups(model: nn.Module, weight_decay: float, bn_weight_decay: bool = False,
                     exempt: str = "bn-in-name", optimizer: str = "sgd") -> list[dict]:
    """NVIDIA's groups: [exempt parameters (no decay), the rest (decay)], parameters in named_parameters order.

    exempt: "bn-in-name" (NVIDIA's: "bn" in the parameter's name) or "bn-and-bias" (every BatchNorm parameter and
    every bias). bn_weight_decay: decay everything; SGD then has one group, RMSprop two decayed groups (NVIDIA's).
    """
    norms = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters(recurse=False)}
    spared, decayed, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if exempt == "bn-and-bias":
            is_exempt = id(param) in norms or name.endswith("bias")
        else:
            is_exempt = "bn" in name
        (spared if is_exempt else decayed).append(param)
    if bn_weight_decay and optimizer == "sgd":
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    return [{"params": spared, "weight_decay": weight_decay if bn_weight_decay else 0.0},
            {"params": decayed, "weight_decay": weight_decay}]


def build_optimizer(config: TrainConfig, model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, config.bn_weight_decay, config.wd_exempt, config.optimizer)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=config.rmsprop_alpha, eps=config.rmsprop_eps,
                                   momentum=config.momentum, weight_decay=config.weight_decay, foreach=True)
    # The fused CUDA kernel updates all parameters in one launch and takes the loss scaler's inf check on the
    # device, so a skipped fp16 step costs no host synchronisation.
    fused = device.type == "cuda"
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay, fused=fused, foreach=None if fused else True)


@dataclass(frozen=True)
class LRSchedule:
    """The LR of each optimizer step: NVIDIA's warm-up + step / linear / cosine policy of the epoch.

    granularity "epoch" (NVIDIA's): the policy at the integer epoch, constant within it. "step" (ours): the same
    policy at the fractional epoch epoch + step / steps_per_epoch, so warm-up and decay move every step.
    """

    kind: str
    peak: float
    end: float
    warmup_epochs: int
    epochs: int
    steps_per_epoch: int
    granularity: str = "epoch"

    @classmethod
    def from_config(cls, config: TrainConfig, peak: float, steps_per_epoch: int) -> "LRSchedule":
        return cls(kind=config.lr_schedule, peak=peak, end=config.end_lr, warmup_epochs=config.warmup_epochs(),
                   epochs=config.epochs, steps_per_epoch=steps_per_epoch, granularity=config.lr_granularity)

    def at(self, epoch: int, step_in_epoch: int = 0) -> float:
        """LR for the optimizer step `step_in_epoch` (0-based) of `epoch` (0-based)."""
        if self.granularity == "step":
            return self.policy(epoch * self.steps_per_epoch + step_in_epoch, self.steps_per_epoch)
        return self.policy(epoch, 1)

    def __call__(self, global_step: int) -> float:
        """LR for optimizer step `global_step` of a run whose every epoch has steps_per_epoch steps."""
        return self.at(*divmod(global_step, self.steps_per_epoch))

    def policy(self, position: int, per_epoch: int = 1) -> float:
        """NVIDIA's policy at `position`, counted in units of 1 / per_epoch epoch (1: whole epochs, NVIDIA's).

        Warm-up counts the unit in progress: peak x (position + 1) / (warmup x per_epoch). Integer arithmetic
        where it can be, so the per-step values are those of a per-step schedule written directly.
        """
        warmup = self.warmup_epochs * per_epoch
        if position < warmup:
            return self.peak * (position + 1) / warmup
        if self.kind == "step":
            return self.peak * STEP_FACTOR ** sum(position >= m * per_epoch for m in STEP_MILESTONES)
        progress = (position - warmup) / ((self.epochs - self.warmup_epochs) * per_epoch)
        if self.kind == "linear":
            return self.peak * (1.0 - progress)  # NVIDIA's linear policy ends at 0 (it has no end LR)
        return self.end + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.peak - self.end)
