"""Size and cost of a model: parameters, multiply-accumulates, FLOPs and activations, per stage."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import ResNet, create_model

# Conventions, so the numbers compare with what other tools print:
#  - macs: multiply-accumulates of convolutions and linear layers (fvcore / timm's "GMACs").
#  - macs_with_elementwise: plus one op per output element of BatchNorm, ReLU and pooling (ptflops' count,
#    the 8.01 GMACs usually quoted for ResNeXt101-32x4d).
#  - flops: what torch.utils.flop_counter counts (2 per MAC of convolutions and matrix products).
#  - activations: output elements of convolutions and linear layers (fvcore's activation count).
_ELEMENTWISE = (nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


def _count(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    counts = {"macs": 0, "elementwise": 0, "activations": 0}

    def hook(mod: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            kernel = mod.kernel_size[0] * mod.kernel_size[1]
            counts["macs"] += output.numel() * (mod.in_channels // mod.groups) * kernel
            counts["activations"] += output.numel()
        elif isinstance(mod, nn.Linear):
            counts["macs"] += output.numel() * mod.in_features
            counts["activations"] += output.numel()
        elif isinstance(mod, _ELEMENTWISE):
            counts["elementwise"] += output.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with FlopCounterMode(display=False) as flop_counter:
            out = module(x)
    finally:
        for handle in handles:
            handle.remove()
    counts["flops"] = flop_counter.get_total_flops()
    return out, counts


@torch.no_grad()
def model_summary(model: ResNet | str, image_size: int = 224, num_classes: int = 1000) -> dict:
    """Parameters, GMACs, GFLOPs and activations of one image at `image_size`, in total and per stage."""
    if isinstance(model, str):
        model = create_model(model, num_classes=num_classes)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    stages = []
    totals = {"macs": 0, "elementwise": 0, "activations": 0, "flops": 0}
    for name, stage in model.stages():
        x, counts = _count(stage, x)
        for key in totals:
            totals[key] += counts[key]
        stages.append({
            "name": name,
            "output_shape": list(x.shape[1:]),
            "params": sum(p.numel() for p in stage.parameters()),
            "gmacs": counts["macs"] / 1e9,
            "activations_m": counts["activations"] / 1e6,
        })
    model.train(was_training)
    return {
        "arch": model.arch,
        "image_size": image_size,
        "num_classes": model.num_classes,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "buffers": sum(b.numel() for b in model.buffers()),
        "state_dict_entries": len(model.state_dict()),
        "gmacs": totals["macs"] / 1e9,
        "gmacs_with_elementwise": (totals["macs"] + totals["elementwise"]) / 1e9,
        "gflops": totals["flops"] / 1e9,
        "activations_m": totals["activations"] / 1e6,
        "stages": stages,
    }


def format_summary(summary: dict) -> str:
    """The human-readable table `resnext info` prints."""
    lines = [
        f"{summary['arch']}  ({summary['num_classes']} classes, {summary['image_size']}x{summary['image_size']} input)",
        f"  parameters      {summary['params']:,}",
        f"  GMACs           {summary['gmacs']:.2f}  (conv + linear; {summary['gmacs_with_elementwise']:.2f} "
        "counting BN/ReLU/pool element ops as ptflops does)",
        f"  GFLOPs          {summary['gflops']:.2f}  (torch.utils.flop_counter)",
        f"  activations     {summary['activations_m']:.1f} M",
        f"  state_dict      {summary['state_dict_entries']} entries",
        "",
        f"  {'stage':<8} {'output':>16} {'params':>13} {'GMACs':>8} {'act. (M)':>9}",
    ]
    for stage in summary["stages"]:
        shape = "x".join(str(d) for d in stage["output_shape"])
        lines.append(f"  {stage['name']:<8} {shape:>16} {stage['params']:>13,} {stage['gmacs']:>8.3f} "
                     f"{stage['activations_m']:>9.2f}")
    return "\n".join(lines)
