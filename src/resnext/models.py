"""The ResNet / ResNeXt family, "ResNet v1.5" style (stride on the 3x3 convolution), on one screen.

Parameter and buffer names follow torchvision and timm (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`,
`...downsample.{0,1}`, `fc`), so their state_dicts load without renaming. Squeeze-excitation blocks use
timm's `se.fc1` / `se.fc2` (1x1 convolutions with bias); NVIDIA's linear layout maps onto it in weights.py.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import UserError
from .recipe import CONV_INITS


@dataclass(frozen=True)
class ArchSpec:
    """Everything that tells one family member from another."""

    blocks: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    se_reduction: int | None = None  # squeeze-excitation ratio (timm); None means no SE, unless se_channels
    se_channels: int | None = None  # fixed squeeze width in every block (NVIDIA's SE-ResNeXt: 16)
    base_width: int = 64  # stem channels and the first stage's "planes"; the stages double it
    description: str = ""


ARCHS: dict[str, ArchSpec] = {
    "resnext101_32x4d": ArchSpec((3, 4, 23, 3), groups=32, width_per_group=4,
                                 description="the product's model: NVIDIA's ResNeXt101-32x4d"),
    "resnet50": ArchSpec((3, 4, 6, 3), description="ResNet-50 v1.5"),
    "se_resnext101_32x4d": ArchSpec((3, 4, 23, 3), groups=32, width_per_group=4, se_reduction=16,
                                    description="ResNeXt101-32x4d with squeeze-excitation, ratio 16 (timm's)"),
    "se_resnext101_32x4d_nvidia": ArchSpec((3, 4, 23, 3), groups=32, width_per_group=4, se_channels=16,
                                           description="NVIDIA's SE-ResNeXt101-32x4d: every SE squeezes to 16 "
                                                       "channels"),
    "resnext50_32x4d": ArchSpec((3, 4, 6, 3), groups=32, width_per_group=4, description="ResNeXt50-32x4d"),
    "resnext101_32x8d": ArchSpec((3, 4, 23, 3), groups=32, width_per_group=8, description="ResNeXt101-32x8d"),
    "resnext101_64x4d": ArchSpec((3, 4, 23, 3), groups=64, width_per_group=4, description="ResNeXt101-64x4d"),
    # Not a published model: the same code at a size a 2-core CPU trains in minutes (tests, `resnext demo`).
    "resnext_tiny": ArchSpec((1, 1, 1, 1), groups=8, width_per_group=8, base_width=32,
                             description="small member for CPU tests and the demo (not a published model)"),
}

# NVIDIA's spellings (Deep Learning Examples `--arch` values) and other names users type.
ALIASES: dict[str, str] = {
    "resnext101-32x4d": "resnext101_32x4d",
    # NVIDIA's own spelling means NVIDIA's network (fixed 16-channel squeeze), so its NGC weights load.
    "se-resnext101-32x4d": "se_resnext101_32x4d_nvidia",
    "seresnext101_32x4d": "se_resnext101_32x4d",
    "resnet-50": "resnet50",
    "resnext50-32x4d": "resnext50_32x4d",
    "resnext101-32x8d": "resnext101_32x8d",
    "resnext101-64x4d": "resnext101_64x4d",
    "resnext-tiny": "resnext_tiny",
}



class SqueezeExcite(nn.Module):
    """Channel attention: global pool, bottleneck of 1x1 convolutions, sigmoid gate.

    `linear=True` computes the two 1x1 convolutions as linear layers on the pooled (N, C) vector, as NVIDIA's
    default SqueezeAndExcitation does (its `--trt` form is the convolution); the weights and the function are the
    same either way.
    """

    def __init__(self, channels: int, hidden: int, linear: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.linear = linear

    def gate(self, x: Tensor) -> Tensor:
        """The (N, C, 1, 1) sigmoid gate of x."""
        if self.linear:
            pooled = x.mean((2, 3))
            hidden = self.act(F.linear(pooled, self.fc1.weight.flatten(1), self.fc1.bias))
            return F.linear(hidden, self.fc2.weight.flatten(1), self.fc2.bias).sigmoid()[:, :, None, None]
        return self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 groups: int, width_per_group: int, se_hidden: int | None, se_linear: bool = False,
                 fused_se: bool = False) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # v1.5: the grouped 3x3 carries the stride, not the first 1x1.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se = SqueezeExcite(out, se_hidden, se_linear) if se_hidden else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.fused_se = fused_se  # NVIDIA's --fused_se: residual + y * gate as one addcmul

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.se is None:
            return self.relu(y + shortcut)
        if self.fused_se:
            return self.relu(torch.addcmul(shortcut, y, self.se.gate(y)))
        return self.relu(self.se(y) + shortcut)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of bottlenecks, average pool, linear head."""

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, conv_init: str = "fan_in",
                 last_bn_0_init: bool = False, arch: str = "", se_linear: bool = False, fused_se: bool = False) -> None:
        super().__init__()
        self.se_linear, self.fused_se = se_linear, fused_se
        self.arch = arch
        self.spec = spec
        self.num_classes = num_classes
        stem = spec.base_width
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem
        for index, depth in enumerate(spec.blocks):
            planes = spec.base_width * 2**index
            stage, inplanes = self._make_stage(inplanes, planes, depth, stride=1 if index == 0 else 2)
            self.add_module(f"layer{index + 1}", stage)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(conv_init, last_bn_0_init)

    def _make_stage(self, inplanes: int, planes: int, depth: int, stride: int) -> tuple[nn.Sequential, int]:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        spec = self.spec
        se_hidden = spec.se_channels or (out // spec.se_reduction if spec.se_reduction else None)
        se = dict(se_linear=self.se_linear, fused_se=self.fused_se)
        blocks = [Bottleneck(inplanes, planes, stride, downsample, spec.groups, spec.width_per_group, se_hidden, **se)]
        blocks += [Bottleneck(out, planes, 1, None, spec.groups, spec.width_per_group, se_hidden, **se)
                   for _ in range(depth - 1)]
        return nn.Sequential(*blocks), out

    def _init_weights(self, conv_init: str, last_bn_0_init: bool) -> None:
        # NVIDIA's init: kaiming normal for convolutions (fan_in by default), BN gamma 1 / beta 0,
        # PyTorch's default for the linear head.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode=conv_init, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if last_bn_0_init:
            # Each residual branch starts as identity (Goyal et al.); NVIDIA's --last_bn_0_init.
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The network as named pieces in order: stem, layer1..layer4, head (used by `info` and features)."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        head = nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)
        return [("stem", stem), ("layer1", self.layer1), ("layer2", self.layer2),
                ("layer3", self.layer3), ("layer4", self.layer4), ("head", head)]

    def forward_features(self, x: Tensor, pool: bool = True) -> Tensor:
        """Backbone output: pooled (N, num_features) by default, or the (N, C, H, W) map with pool=False."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1) if pool else x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x, pool=True))


def list_models() -> list[str]:
    """Canonical names of every architecture `create_model` builds."""
    return list(ARCHS)


def resolve_arch(name: str) -> str:
    """Canonical name for `name` (NVIDIA spellings accepted); a UserError with suggestions otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in ARCHS:
        return key
    close = difflib.get_close_matches(key, list(ARCHS) + list(ALIASES), n=1)
    hint = f" Did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
    raise UserError(f"unknown architecture '{name}'.{hint} Available: {', '.join(ARCHS)}.")


def create_model(arch: str, num_classes: int = 1000, *, conv_init: str = "fan_in",
                 last_bn_0_init: bool = False, se_linear: bool = False, fused_se: bool = False) -> ResNet:
    """Build a family member with freshly initialised weights.

    conv_init: "fan_in" (NVIDIA's default) or "fan_out" for the kaiming-normal init of convolutions.
    last_bn_0_init: start every residual branch at zero (NVIDIA's --last_bn_0_init; timm's default).
    se_linear, fused_se: how squeeze-excitation is computed (NVIDIA's `--trt False` and `--fused_se True`: linear
    layers on the pooled vector, and the gate product fused into the residual add); the same function and the same
    weights as the default (1x1 convolutions, product then add), which is timm's way.
    """
    name = resolve_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if conv_init not in CONV_INITS:
        raise UserError(f"conv_init must be one of {', '.join(CONV_INITS)}, got '{conv_init}'.")
    return ResNet(ARCHS[name], num_classes=num_classes, conv_init=conv_init, last_bn_0_init=last_bn_0_init,
                  arch=name, se_linear=se_linear, fused_se=fused_se)


def script_model(model: nn.Module) -> nn.Module:
    """torch.jit.script(model), NVIDIA's `--jit script`: the scripted module shares the model's parameters.

    Raises UserError when this torch cannot script it (TorchScript is deprecated in recent releases).
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.10 announces TorchScript's deprecation
            return torch.jit.script(model)
    except Exception as err:  # TorchScript raises its own frontend errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--jit script: this torch cannot script the model ({first}); use --compile or drop "
                        "--jit.") from None
