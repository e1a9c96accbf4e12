"""Model weights from every layout users have, loaded without ever running pickled code.

What loads (docs/weights.md says where each layout comes from):

  ours          `resnext.checkpoint` dicts ("model", "ema"), safetensors files, bare state_dicts
  torchvision   ResNet(Bottleneck, ...) state_dicts; reference-script checkpoints ("model", "model_ema")
  timm          resnext / seresnext state_dicts; train.py checkpoints ("state_dict", "state_dict_ema", "args")
  NVIDIA        the NGC file (`layer{1..4}`, SE as Linear `squeeze.squeeze` / `squeeze.expand`), the current
                code's `layers.{0..3}` names, training checkpoints ("state_dict", "state_dict_ema") with the
                `module.` prefix of DistributedDataParallel
  wrappers      `module.` (DDP, DataParallel, AveragedModel) and `_orig_mod.` (torch.compile) prefixes

Files are read with `torch.load(weights_only=True)` or safetensors; a file that needs more than tensors and
plain containers is refused with a UserError, never unpickled. Public pretrained weights are named
`pretrained:NAME` (see PRETRAINED) and downloaded only when a caller names one.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import http.client
import json
import logging
import os
import pickle
import re
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor, nn

from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .errors import UserError, first_line
from .paths import atomic_write, cache_home
from .models import ARCHS, ArchSpec, create_model, resolve_arch

log = logging.getLogger("resnext.weights")

WeightsSource = Union[str, "os.PathLike[str]", Mapping[str, Tensor]]

HEAD_KEYS = ("fc.weight", "fc.bias")
PRETRAINED_PREFIX = "pretrained:"

# Where training scripts keep the weights inside a checkpoint dict: weights key, EMA keys, who writes it.
# Our own checkpoints are recognised by their "format" tag before this table is consulted.
_CONTAINERS = (
    ("state_dict", ("state_dict_ema",), "NVIDIA / timm training checkpoint"),
    ("model", ("model_ema",), "torchvision reference-script checkpoint"),
)
_OUR_META_KEYS = ("arch", "num_classes", "class_names", "preprocessing")

# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel / AveragedModel and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")
# Entries of a state_dict that are bookkeeping, not weights (AveragedModel's update counter).
_BOOKKEEPING = frozenset({"n_averaged"})
# Buffers a file may lack without harm: BatchNorm's step counter is only read when momentum=None.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)

# NVIDIA's names -> ours, applied in order to every key (NVIDIA DeepLearningExamples,
# PyTorch/Classification/ConvNets/image_classification/models/resnet.py and models/common.py):
# the current code keeps its stages in `self.layers = nn.Sequential(...)` and a Bottleneck's SE block in
# `self.squeeze`, whose two Linear layers are `squeeze` and `expand`.
RENAMES: tuple[tuple[re.Pattern, Any, str], ...] = (
    (re.compile(r"^layers\.(\d+)\."), lambda m: f"layer{int(m.group(1)) + 1}.", "NVIDIA layers.N stage names"),
    (re.compile(r"\.squeeze\.squeeze\."), ".se.fc1.", "NVIDIA squeeze/expand SE names"),
    (re.compile(r"\.squeeze\.expand\."), ".se.fc2.", "NVIDIA squeeze/expand SE names"),
)
# Our SE layers are 1x1 convolutions; NVIDIA's (and some exports') are Linear: [out, in] -> [out, in, 1, 1].
_SE_WEIGHT = re.compile(r"\.se\.fc[12]\.weight$")


@dataclass(frozen=True)
class PretrainedSource:
    """Public ImageNet-1k weights for one architecture, fetched only when a caller names them."""

    name: str
    arch: str
    url: str
    filename: str  # the file's name in the cache folder
    preprocessing: dict  # image_size, crop_pct, interpolation, mean, std used to evaluate these weights
    licence: str
    top1: float | None  # published ImageNet-1k top-1 (%) of this file; None where we have no published figure
    num_classes: int = 1000
    sha256: str | None = None  # checked after download where the publisher states one


def _eval_preprocessing(interpolation: str) -> dict:
    return {"image_size": 224, "crop_pct": 0.875, "interpolation": interpolation,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _timm(name: str, arch: str, tag: str, interpolation: str, licence: str,
          top1: float | None) -> PretrainedSource:
    # timm's pretrained_cfgs (timm/models/resnet.py): hf_hub_id 'timm/', crop 0.875, ImageNet mean/std.
    return PretrainedSource(name, arch, f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors",
                            f"{tag}.safetensors", _eval_preprocessing(interpolation), licence, top1)


_NON_COMMERCIAL = "CC-BY-NC-4.0 (non-commercial use only)"
PRETRAINED: dict[str, PretrainedSource] = {source.name: source for source in (
    # NVIDIA's URL as written in models/resnet.py of DeepLearningExamples (checkpoint_url); layer{1..4} layout.
    PretrainedSource(
        "nvidia-ngc", "resnext101_32x4d",
        "https://api.ngc.nvidia.com/v2/models/nvidia/resnext101_32x4d_pyt_amp/versions/20.06.0/files/"
        "nvidia_resnext101-32x4d_200821.pth.tar",
        "nvidia_resnext101-32x4d_200821.pth.tar", _eval_preprocessing("bilinear"),
        licence="NVIDIA NGC terms of use (read the NGC model page before redistributing)", top1=None),
    # The other two models NVIDIA's --pretrained downloads (the same file of models/resnet.py).
    PretrainedSource(
        "nvidia-ngc-resnet50", "resnet50",
        "https://api.ngc.nvidia.com/v2/models/nvidia/resnet50_pyt_amp/versions/20.06.0/files/"
        "nvidia_resnet50_200821.pth.tar",
        "nvidia_resnet50_200821.pth.tar", _eval_preprocessing("bilinear"),
        licence="NVIDIA NGC terms of use (read the NGC model page before redistributing)", top1=None),
    PretrainedSource(
        "nvidia-ngc-se-resnext101", "se_resnext101_32x4d_nvidia",
        "https://api.ngc.nvidia.com/v2/models/nvidia/seresnext101_32x4d_pyt_amp/versions/20.06.0/files/"
        "nvidia_se-resnext101-32x4d_200821.pth.tar",
        "nvidia_se-resnext101-32x4d_200821.pth.tar", _eval_preprocessing("bilinear"),
        licence="NVIDIA NGC terms of use (read the NGC model page before redistributing)", top1=None),
    _timm("timm-gluon", "resnext101_32x4d", "resnext101_32x4d.gluon_in1k", "bicubic", "Apache-2.0", 80.336),
    _timm("timm-ssl", "resnext101_32x4d", "resnext101_32x4d.fb_ssl_yfcc100m_ft_in1k", "bilinear",
          _NON_COMMERCIAL, 80.936),
    _timm("timm-swsl", "resnext101_32x4d", "resnext101_32x4d.fb_swsl_ig1b_ft_in1k", "bilinear",
          _NON_COMMERCIAL, 83.268),
    # timm's seresnext101_32x4d uses our SE names and reduction 16; NVIDIA's SE-ResNeXt does not (docs/weights.md).
    _timm("timm-gluon-se", "se_resnext101_32x4d", "seresnext101_32x4d.gluon_in1k", "bicubic", "Apache-2.0", None),
)}


@dataclass(frozen=True)
class LoadReport:
    """What load_weights did. Key names are in our layout (torchvision's names)."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # in the model, not in the file (left as they were)
    unexpected: tuple[str, ...]  # in the file, not in the model (ignored)
    mismatched: tuple[str, ...]  # in both with different shapes (left as they were)
    skipped_head: tuple[str, ...]  # classifier entries not loaded because ignore_head=True
    layout: str  # how the file was read, e.g. "NVIDIA / timm training checkpoint ['state_dict'], 'module.' prefix"


@dataclass(frozen=True)
class ModelMeta:
    """What load_model knows about the weights besides the tensors; None where nothing says."""

    arch: str
    num_classes: int
    class_names: list[str] | None
    preprocessing: dict | None  # image_size, crop_pct, interpolation, mean, std
    path: Path | None  # the file read (None when a state_dict was passed)
    report: LoadReport


@dataclass
class Weights:
    state: dict[str, Tensor]
    layout: str
    meta: dict  # arch / num_classes / class_names / preprocessing where the file or its source says
    path: Path | None
    source: PretrainedSource | None  # the named public source it came from

    @property
    def name(self) -> str:
        return _where(self.path)


# --------------------------------------------------------------------------------------------------------------
# Public API


def read_weights(source: WeightsSource, use_ema: bool = False) -> Weights:
    """Read `source` once (as read_state_dict does) and keep what it says about itself: `.state` (our layout),
    `.meta` (arch, num_classes, class_names, preprocessing where the file says), `.path`. load_weights and
    load_model accept the result in place of the path, so a caller can look at the class names before loading.
    """
    return _read(source, use_ema)


def read_state_dict(source: WeightsSource, use_ema: bool = False) -> dict[str, Tensor]:
    """The weights in `source` as a state_dict in our layout (torchvision's names, SE as 1x1 convolutions).

    source: a path (.pth / .pt / .pth.tar / .bin via torch.load(weights_only=True), .safetensors), a
    `pretrained:NAME` source, or a state_dict / checkpoint dict already in memory.
    use_ema: take the EMA copy (our "ema", NVIDIA's and timm's "state_dict_ema", torchvision's "model_ema");
    a UserError when there is none.
    """
    return _read(source, use_ema).state


def load_weights(model: nn.Module, source: WeightsSource, strict: bool = True, *, use_ema: bool = False,
                 ignore_head: bool = False) -> LoadReport:
    """Copy the weights in `source` into `model` (any layout read_state_dict reads) and report what happened.

    strict: every model entry must come from the file with its shape, and the file may hold nothing else;
        otherwise a UserError names the missing, unexpected and wrongly shaped entries and the likely cause.
        With strict=False whatever fits is loaded, the rest is left as it was and listed in the report.
    ignore_head: fine-tuning: a classifier (fc) of another class count, or none at all, is left as initialised,
        with a notice on the "resnext" logger; a classifier that fits is loaded.
    """
    return _load_into(model, _read(source, use_ema), strict, ignore_head)


def infer_arch(state_dict: Mapping[str, Tensor]) -> str:
    """The family member whose shapes these weights have (block counts per stage, groups, width, SE ratio)."""
    state = _normalise_keys(state_dict)[0]
    if "conv1.weight" not in state or "layer1.0.conv2.weight" not in state:
        raise UserError("these weights are not a ResNet / ResNeXt (no conv1 and layer1.0.conv2 entries); "
                        f"resnext builds {', '.join(ARCHS)}.")
    blocks = tuple(len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")})
                   for stage in range(1, 5))
    base_width = state["conv1.weight"].shape[0]
    conv2 = state["layer1.0.conv2.weight"]
    groups = conv2.shape[0] // conv2.shape[1]
    width_per_group = conv2.shape[0] // groups * 64 // base_width
    squeeze = [state[key].shape for key in state if key.endswith(".se.fc1.weight")]
    reductions = {shape[1] // shape[0] for shape in squeeze}
    widths = {shape[0] for shape in squeeze}
    se = {}
    if len(reductions) == 1:
        se = {"se_reduction": reductions.pop()}  # timm's SE: hidden = channels / ratio
    elif len(widths) == 1:
        se = {"se_channels": widths.pop()}  # NVIDIA's SE: a fixed hidden width in every block
    elif squeeze:
        raise UserError("these weights' squeeze-excitation blocks share neither a reduction ratio nor a width, "
                        f"which no resnext architecture builds ({', '.join(ARCHS)}).")
    spec = ArchSpec(blocks, groups=groups, width_per_group=width_per_group, base_width=base_width, **se)
    for name, known in ARCHS.items():
        if replace(known, description="") == spec:
            return name
    raise UserError(f"these weights are a ResNet with blocks {list(blocks)}, {groups} groups x {width_per_group} "
                    f"channels, stem width {base_width} and SE {se or 'none'}, which no resnext "
                    f"architecture matches ({', '.join(ARCHS)}).")


def infer_num_classes(state_dict: Mapping[str, Tensor]) -> int:
    """Classifier outputs of these weights (rows of fc.weight)."""
    state = _normalise_keys(state_dict)[0]
    if "fc.weight" not in state:
        raise UserError("these weights have no classifier (fc.weight); pass num_classes and ignore_head=True "
                        "(--num-classes, --ignore-head) to build one.")
    return int(state["fc.weight"].shape[0])


def load_model(source: WeightsSource, arch: str | None = None, num_classes: int | None = None, *,
               use_ema: bool = False, ignore_head: bool = False,
               device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Build the model that `source` holds and load it, in eval mode on `device`.

    arch / num_classes: taken from the file when it says (our checkpoints, our safetensors), else inferred from
    the shapes; pass them to override (with ignore_head=True for another class count, to fine-tune).
    The meta carries class names and preprocessing from our checkpoints or from a named pretrained source.
    """
    weights = _read(source, use_ema)
    arch = resolve_arch(arch or weights.meta.get("arch") or infer_arch(weights.state))
    file_classes = weights.meta.get("num_classes") or (
        int(weights.state["fc.weight"].shape[0]) if "fc.weight" in weights.state else None)
    if num_classes is None:
        num_classes = file_classes or infer_num_classes(weights.state)
    model = create_model(arch, num_classes)
    report = _load_into(model, weights, strict=True, ignore_head=ignore_head)
    class_names = weights.meta.get("class_names")
    if weights.source and weights.source.num_classes == 1000:
        class_names = imagenet_class_names()
    if report.skipped_head or num_classes != file_classes:
        class_names = None  # the file's names belong to its own classifier
    meta = ModelMeta(arch=arch, num_classes=num_classes, class_names=class_names,
                     preprocessing=weights.meta.get("preprocessing"), path=weights.path, report=report)
    return model.to(device).eval(), meta


def get_source(name: str) -> PretrainedSource:
    """The named public weights ("nvidia-ngc" or "pretrained:nvidia-ngc"); a UserError lists the names."""
    key = name[len(PRETRAINED_PREFIX):] if name.startswith(PRETRAINED_PREFIX) else name
    if key in PRETRAINED:
        return PRETRAINED[key]
    close = difflib.get_close_matches(key, list(PRETRAINED), n=1)
    hint = f" Did you mean 'pretrained:{close[0]}'?" if close else ""
    raise UserError(f"unknown pretrained weights '{key}'.{hint} Available: "
                    f"{', '.join(PRETRAINED_PREFIX + known for known in PRETRAINED)}.")


def default_source(arch: str) -> PretrainedSource:
    """The first public source for `arch` (the order of PRETRAINED); a UserError when there is none."""
    arch = resolve_arch(arch)
    for source in PRETRAINED.values():
        if source.arch == arch:
            return source
    raise UserError(f"no public pretrained weights are known for {arch}; train it or pass a weights file. "
                    f"Pretrained: {', '.join(sorted({source.arch for source in PRETRAINED.values()}))}.")


def pretrained_weights(config) -> str:
    """What `resnext train` starts from: --pretrained-from-file, or for --pretrained NVIDIA's NGC weights of --arch
    (NVIDIA's --pretrained; downloaded once, offline a one-line UserError)."""
    if config.pretrained_from_file:
        return config.pretrained_from_file
    arch = resolve_arch(config.arch)
    for source in PRETRAINED.values():
        if source.arch == arch and source.name.startswith("nvidia-ngc"):
            return PRETRAINED_PREFIX + source.name
    raise UserError(f"--pretrained downloads NVIDIA's NGC weights, which exist for resnet50, resnext101-32x4d and "
                    f"se-resnext101-32x4d, not {arch}; pass --pretrained-from-file FILE.")


def weights_cache() -> Path:
    """Folder of downloaded weights: $RESNEXT_HOME/weights (default ~/.cache/resnext/weights)."""
    return cache_home() / "weights"


def resolve_weights(spec: str | os.PathLike) -> Path:
    """The local file for `spec`: a path, or `pretrained:NAME`, downloaded once into weights_cache()."""
    text = os.fspath(spec)
    if text.startswith(PRETRAINED_PREFIX):
        source = get_source(text)
        path = weights_cache() / source.filename
        if not path.is_file():
            _download(source, path)
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"'{path}' is a folder; pass a weights file (.pth, .pt, .pth.tar or .safetensors).")
    hint = f" (for the public weights of that name write 'pretrained:{text}')" if text in PRETRAINED else ""
    raise UserError(f"weights file '{path}' does not exist{hint}.")


# --------------------------------------------------------------------------------------------------------------
# Reading


def _read(source: WeightsSource, use_ema: bool) -> Weights:
    if isinstance(source, Weights):
        return source
    path, meta, named = None, {}, None
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(PRETRAINED_PREFIX):
            named = get_source(text)
            meta = {"arch": named.arch, "num_classes": named.num_classes, "preprocessing": dict(named.preprocessing)}
        path = resolve_weights(text)
        content, file_meta = _load_file(path)
        meta = {**meta, **file_meta}
    elif isinstance(source, Mapping):
        content = source
    else:
        raise UserError(f"weights must be a path or a state_dict, got a {type(source).__name__}.")
    name = _where(path)
    state, container, checkpoint_meta = _unwrap(content, use_ema, name)
    meta = {**meta, **checkpoint_meta}
    state, notes = _normalise_keys(state, name)
    return Weights(state=state, layout=", ".join([container, *notes]), meta=meta, path=path, source=named)


def _load_file(path: Path) -> tuple[Any, dict]:
    """(content, meta) of a weights file: safetensors (by its header, whatever its name) or a torch file."""
    if path.stat().st_size == 0:
        raise UserError(f"'{path}' is empty (an interrupted copy or download?); get the file again.")
    if _is_safetensors(path):
        return _load_safetensors(path)
    return _load_torch_file(path), {}


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with the 8-byte little-endian length of a JSON header, then "{".
    with open(path, "rb") as handle:
        head = handle.read(9)
    header_fits = len(head) == 9 and int.from_bytes(head[:8], "little") < path.stat().st_size
    return path.suffix == ".safetensors" or (header_fits and head[8:] == b"{")


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            header = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for torn headers and short files
        raise UserError(f"'{path}' cannot be read as safetensors ({first_line(err)}); it is truncated or "
                        "corrupt.") from None
    # Our exports may record what the weights are under the "resnext" key (a JSON object with _OUR_META_KEYS).
    try:
        meta = json.loads(header.get("resnext", "{}"))
    except json.JSONDecodeError:
        meta = {}
    return tensors, {key: meta[key] for key in _OUR_META_KEYS if isinstance(meta, dict) and meta.get(key)}


@contextlib.contextmanager
def _plain_data_globals():
    # timm's and torchvision's training scripts store their argparse Namespace beside the weights: plain data.
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4
        yield
    else:
        with allow([argparse.Namespace]):
            yield


def _load_torch_file(path: Path) -> Any:
    try:
        with warnings.catch_warnings(), _plain_data_globals():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's business
            return torch.load(path, map_location="cpu", weights_only=True)
    except (MemoryError, OSError):
        raise
    except pickle.UnpicklingError as err:
        if "invalid load key" in str(err):  # not a pickle at all: a text file, an image, HTML from a proxy...
            raise UserError(f"'{path}' is not a weights file (not PyTorch, not safetensors); pass a .pth/.pt "
                            "checkpoint or a .safetensors file.") from None
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise UserError(
            f"'{path}' holds pickled Python objects besides tensors{what}, which resnext refuses to unpickle "
            "because that can run code; if you trust the file, load it once in Python with unpickling allowed, "
            "save only its state_dict with torch.save, and pass that file.") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... for torn or foreign files
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
            if not any(member.endswith("data.pkl") for member in members):
                raise UserError(f"'{path}' is a zip archive, not a PyTorch file; unzip it and pass the weights "
                                f"file inside ({', '.join(members[:3])}).") from None
        raise UserError(f"'{path}' cannot be read as PyTorch or safetensors weights ({first_line(err)}); it is "
                        "truncated, corrupt or not a weights file.") from None


def _unwrap(content: Any, use_ema: bool, name: str) -> tuple[Mapping, str, dict]:
    """(state_dict, container description, meta) of a checkpoint dict or bare state_dict."""
    if not isinstance(content, Mapping):
        raise UserError(f"{name} holds a {type(content).__name__}, not model weights (a state_dict or checkpoint).")
    if content.get("format") == CHECKPOINT_FORMAT:
        key, ema_keys, what = "model", ("ema",), "resnext checkpoint"
        meta = {field: content[field] for field in _OUR_META_KEYS if content.get(field)}
    else:
        meta = {}
        for key, ema_keys, what in _CONTAINERS:
            if isinstance(content.get(key), Mapping):
                break
        else:
            if not content or not all(isinstance(value, Tensor) for value in content.values()):
                shown = ", ".join(map(str, list(content)[:6])) or "none"
                raise UserError(f"{name} holds no model weights in a layout resnext knows (top-level keys: "
                                f"{shown}); expected a state_dict or a checkpoint with 'model' or 'state_dict'.")
            if use_ema:
                raise UserError(f"{name} is a bare state_dict without EMA weights; drop --use-ema / use_ema=True.")
            return content, "state_dict", meta
    if not use_ema:
        return content[key], f"{what} ['{key}']", meta
    for ema_key in ema_keys:
        if isinstance(content.get(ema_key), Mapping):
            return content[ema_key], f"{what} ['{ema_key}']", meta
    raise UserError(f"{name} has no EMA weights (a {what} without '{ema_keys[0]}'); drop --use-ema / "
                    "use_ema=True to load its regular weights.")


def _normalise_keys(state: Mapping[str, Any], name: str = "the weights") -> tuple[dict[str, Tensor], list[str]]:
    """Our layout: wrapper prefixes stripped, NVIDIA's names renamed, Linear SE weights made 1x1 convolutions."""
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise UserError(f"{name} is not a state_dict: entry '{key}' is a {type(value).__name__}, not a tensor.")
        new = key
        while new.startswith(_PREFIXES):
            prefix = next(prefix for prefix in _PREFIXES if new.startswith(prefix))
            new = new[len(prefix):]
            _note(notes, f"'{prefix}' prefix")
        if new in _BOOKKEEPING:
            continue
        for pattern, replacement, note in RENAMES:
            new, count = pattern.subn(replacement, new)
            if count:
                _note(notes, note)
        if _SE_WEIGHT.search(new) and value.ndim == 2:
            value = value[:, :, None, None]
        if new in out:
            raise UserError(f"{name} holds '{new}' twice (under '{key}' and another name); keep one copy.")
        out[new] = value
    return out, notes


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _unwrap_module(model: nn.Module) -> nn.Module:
    """The module whose state_dict has our key names: DDP / DataParallel and torch.compile wrappers removed."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _load_into(model: nn.Module, weights: Weights, strict: bool, ignore_head: bool) -> LoadReport:
    target = _unwrap_module(model)
    expected = target.state_dict()
    state = weights.state
    skipped_head: tuple[str, ...] = ()
    if ignore_head:
        skipped_head = tuple(key for key in HEAD_KEYS if key in expected
                             and (key not in state or state[key].shape != expected[key].shape))
        state = {key: value for key, value in state.items() if key not in skipped_head}
    missing = tuple(key for key in expected if key not in state and key not in skipped_head
                    and not key.endswith(_OPTIONAL_SUFFIXES))
    unexpected = tuple(key for key in state if key not in expected)
    mismatched = tuple(key for key in expected if key in state and state[key].shape != expected[key].shape)
    if strict and (missing or unexpected or mismatched):
        arch = getattr(target, "arch", "") or type(target).__name__
        raise UserError(_mismatch_message(arch, weights, expected, missing, unexpected, mismatched))

    fitting = {key: value for key, value in state.items() if key in expected and key not in mismatched}
    target.load_state_dict(fitting, strict=False)
    where = weights.name
    if skipped_head:
        had = weights.meta.get("head_note") or (
            f"a {weights.state['fc.weight'].shape[0]}-class classifier" if "fc.weight" in weights.state
            else "no classifier")
        log.warning("%s has %s; the model's %d-class classifier is left as initialised for fine-tuning.",
                    where, had, expected["fc.weight"].shape[0])
    if missing or unexpected or mismatched:
        log.warning("loaded %d of %d entries from %s; left out: %d missing, %d unexpected, %d wrongly shaped.",
                    len(fitting), len(expected), where, len(missing), len(unexpected), len(mismatched))
    else:
        log.info("loaded %d entries from %s (%s).", len(fitting), where, weights.layout)
    return LoadReport(loaded=tuple(fitting), missing=missing, unexpected=unexpected, mismatched=mismatched,
                      skipped_head=skipped_head, layout=weights.layout)


def _mismatch_message(arch: str, weights: Weights, expected: dict[str, Tensor], missing, unexpected,
                      mismatched) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if mismatched:
        shapes = [f"{key} {list(weights.state[key].shape)} in the file vs {list(expected[key].shape)}"
                  for key in mismatched]
        parts.append(f"{len(mismatched)} wrongly shaped ({_first(shapes)})")
    cause = _probable_cause(arch, weights.state, missing, unexpected, mismatched)
    return f"{weights.name} does not fit {arch}: {'; '.join(parts)}; {cause}."


def _probable_cause(arch: str, state: dict[str, Tensor], missing, unexpected, mismatched) -> str:
    problems = set(missing) | set(unexpected) | set(mismatched)
    if problems <= set(HEAD_KEYS):
        if "fc.weight" in state:
            return (f"the file's classifier has {state['fc.weight'].shape[0]} classes: pass ignore_head=True "
                    "(--ignore-head) to fine-tune from it, or build the model with that class count")
        return "the file has no classifier: pass ignore_head=True (--ignore-head) to train a new one"
    try:
        file_arch = infer_arch(state)
    except UserError as err:
        return f"the file is not one of resnext's architectures: {str(err).rstrip('.')}"
    if file_arch != arch:
        return f"the file holds a {file_arch}: build that architecture (--arch {file_arch})"
    return "the file is incomplete or from a modified model; pass strict=False to load what fits"


def _where(path: Path | None) -> str:
    return f"'{path}'" if path else "the given dict"


def _first(names, count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", and {len(names) - count} more" if len(names) > count else "")


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (torchvision's list, installed with torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------------------------------------------
# Downloading


def _download(source: PretrainedSource, path: Path) -> None:
    """Fetch `source` to `path` atomically; verify its hash (where known) and that it loads as its architecture."""
    by_hand = (f"download {source.url} on a machine with internet and pass the file's path instead of "
               f"'{PRETRAINED_PREFIX}{source.name}' (or copy it to {path})")
    log.info("downloading %s (%s, licence: %s) to %s", source.name, source.arch, source.licence, path)

    def fetch(handle) -> None:
        digest = hashlib.sha256()
        try:
            response = urllib.request.urlopen(source.url, timeout=60)
        except (OSError, http.client.HTTPException) as err:  # URLError, refused, timeout, HTTP 404...
            raise UserError(f"cannot download {source.name} ({first_line(err)}); {by_hand}.") from None
        with response:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as err:
                    raise UserError(f"the download of {source.name} broke off ({first_line(err)}); "
                                    f"{by_hand}.") from None
                if not chunk:
                    break
                digest.update(chunk)
                handle.write(chunk)
        if source.sha256 and digest.hexdigest() != source.sha256:
            raise UserError(f"the download of {source.name} has SHA-256 {digest.hexdigest()}, expected "
                            f"{source.sha256}; {by_hand}.")

    atomic_write(path, fetch)
    # An HTML error page served with status 200 must not stay in the cache under the weights' name.
    try:
        if infer_arch(_read(path, use_ema=False).state) != source.arch:
            raise UserError(f"it does not hold {source.arch} weights")
    except UserError as err:
        path.unlink(missing_ok=True)
        raise UserError(f"the download of {source.name} is not usable ({str(err).rstrip('.')}); {by_hand}.") from None
