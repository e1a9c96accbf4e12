"""NVIDIA's ConvNets command surface: configs.yml expansion (launch.py), command lines, and docs/nvidia.md.

`expand(model, precision, mode, platform)` merges, as NVIDIA's launch.py does, the precision section, the platform
section, the model's section for that platform and precision, and the mode section (later ones win) of a configs
file: ours (assets/nvidia_configs.json, the values of NVIDIA's configs.yml for the three ResNet-family models) or a
YAML/JSON file the user passes. `train_argv(values)` renders such values as `resnext train` flags.

NVIDIA's multiproc.py starts one process per GPU (`--nproc_per_node`); `resnext launch` does that through torchrun.
This module never imports torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError

CONFIGS = Path(__file__).parent / "assets" / "nvidia_configs.json"
MODES = ("convergence", "benchmark_training", "benchmark_training_short", "benchmark_inference", "evaluate")
SECTIONS = ("precision", "platform", "mode", "models")


def load_configs(path: str | os.PathLike | None = None) -> dict:
    """A configs file as a dict: ours by default, else the user's YAML (NVIDIA's configs.yml) or JSON file."""
    if path is None:
        return json.loads(CONFIGS.read_text(encoding="utf-8"))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--cfg_file '{path}' does not exist; pass NVIDIA's configs.yml or leave --cfg_file out to "
                        "use the values resnext ships.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            content = json.loads(text)
        except ValueError as err:
            raise UserError(f"--cfg_file '{path}' is not valid JSON ({err}).") from None
    else:
        try:
            import yaml
        except ImportError:
            raise UserError("reading a YAML --cfg_file needs PyYAML: pip install 'resnext[nvidia]'.") from None
        try:
            content = yaml.safe_load(text)  # anchors and `<<` merge keys, as NVIDIA's FullLoader reads them
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise UserError(f"--cfg_file '{path}' is not valid YAML ({first}).") from None
    if not isinstance(content, dict) or any(not isinstance(content.get(s), dict) for s in SECTIONS):
        raise UserError(f"--cfg_file '{path}' lacks the sections of NVIDIA's configs.yml "
                        f"({', '.join(SECTIONS)}).")
    return content


def _pick(section: dict, key: str, what: str, flag: str) -> dict:
    if key in section:
        return section[key]
    folded = {str(k).lower(): k for k in section}
    if key.lower() in folded:
        return section[folded[key.lower()]]
    raise UserError(f"{flag} {key}: {what} has no such entry; available: {', '.join(map(str, section))}.")


def expand(model: str, precision: str, mode: str, platform: str, cfg_file: str | os.PathLike | None = None) -> dict:
    """The option values launch.py sets for this model, precision, mode and platform (NVIDIA's option names)."""
    configs = load_configs(cfg_file)
    models = _pick(configs["models"], model, "the configs file", "--model")
    by_platform = _pick(models, platform, f"model {model}", "--platform")
    model_values = _pick(by_platform, precision, f"model {model} on {platform}", "--precision")
    return {**_pick(configs["precision"], precision, "the precision section", "--precision"),
            **_pick(configs["platform"], platform, "the platform section", "--platform"),
            **model_values,
            **_pick(configs["mode"], mode, "the mode section", "--mode")}


def train_argv(values: dict) -> list[str]:
    """`resnext train` flags that set `values` (NVIDIA option names, as in configs.yml)."""
    from .options import options_of
    from .recipe import TrainConfig

    declared = {field.name: opt for field, opt in options_of(TrainConfig)}
    argv: list[str] = []
    for key, value in values.items():
        opt = declared.get(key)
        if opt is None or opt.kind == "positional":
            raise UserError(f"the configs file sets '{key}', which is not a resnext train option.")
        flag = opt.name
        if opt.kind == "flag":
            argv += [flag] if value else []
        elif opt.kind == "negated":
            argv += [] if value else [flag]
        elif opt.kind == "toggle":
            argv += [flag if value else "--no-" + flag[2:]]
        elif opt.kind == "bool-value":
            argv += [flag, str(bool(value))]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


# ---- docs/nvidia.md -----------------------------------------------------------------------------------------

LAUNCH_ROWS = [
    ("`resnext launch --model M`", "launch.py: required; a model of the configs file",
     "same (resnet50, resnext101-32x4d, se-resnext101-32x4d in ours)", ""),
    ("`resnext launch --precision P`", "launch.py: required; AMP, TF32 or FP32",
     "same; AMP sets --amp and --static-loss-scale 128, TF32 and FP32 train without --amp", ""),
    ("`resnext launch --mode MODE`", "launch.py: required; " + ", ".join(MODES), "same", ""),
    ("`resnext launch --platform PL`", "launch.py: required; DGX1V, DGX1V-16G, DGX1V-32G, DGX2V, DGXA100, T4",
     "same", ""),
    ("`resnext launch --cfg_file F`", "launch.py: default configs.yml beside launch.py",
     "default: the values resnext ships (NVIDIA's, for the three models); a YAML or JSON file", ""),
    ("`resnext launch --nproc_per_node N`, `--nnodes`, `--node_rank`, `--master_addr`, `--master_port`",
     "multiproc.py: one process per GPU", "runs the expanded command under torchrun with the same values", ""),
    ("`resnext launch --dry-run`", "no such flag", "print the expanded command and stop", ""),
]


def nvidia_doc() -> str:
    """The text of docs/nvidia.md, generated from the option definitions (tests compare the committed file)."""
    from .options import nvidia_table
    from .recipe import TrainConfig

    return HEADER + nvidia_table(TrainConfig, LAUNCH_ROWS) + FOOTER


HEADER = """# NVIDIA's command lines in resnext

<!-- Generated by `python scripts/write_nvidia_doc.py` from the option definitions in
src/resnext/recipe.py; edit those, not this file (tests/test_nvidia.py fails when they differ). -->

`resnext train` takes the command line of NVIDIA Deep Learning Examples' `PyTorch/Classification/ConvNets/main.py`
and means the same run: NVIDIA's defaults, NVIDIA's LR policies, weight-decay groups, precision, evaluation resize,
DALI operators, AutoAugment policy, EMA and checkpoint semantics. `resnext launch` takes `launch.py`'s arguments
(`--model --precision --mode --platform [--cfg_file]`) and expands them from the same values as NVIDIA's
`configs.yml`; multiproc.py's `--nproc_per_node` runs the result under torchrun.

```bash
python ./multiproc.py --nproc_per_node 8 ./launch.py --model resnext101-32x4d --precision AMP --mode convergence \\
    --platform DGXA100 /imagenet --epochs 90 --mixup 0.0 --workspace runs --raport-file raport.json
resnext launch --nproc_per_node 8 --model resnext101-32x4d --precision AMP --mode convergence \\
    --platform DGXA100 /imagenet --epochs 90 --mixup 0.0 --workspace runs --raport-file raport.json

python ./main.py --arch resnext101-32x4d --evaluate --epochs 1 --resume checkpoint.pth.tar -b 128 /imagenet
resnext train --arch resnext101-32x4d --evaluate --epochs 1 --resume checkpoint.pth.tar -b 128 /imagenet
```

`--resume` continues a checkpoint written by NVIDIA's code (its model, SGD momentum or RMSprop state, EMA, best
top-1 and epoch; the run goes on at the epoch NVIDIA's would), and `resnext export --format nvidia` writes one of
ours in NVIDIA's layout, which their `--resume` loads. Abbreviations NVIDIA's parser accepts (`--mom 0.875`) keep
their meaning.

Where our behaviour is better, it is opt-in under names of our own (last column); `--preset resnext` turns all of
them on with the ResNeXt101-32x4d recipe (SGD 0.875, LR 0.256 per 256 images, cosine, label smoothing 0.1, WD
1/16384). The `nvidia-*` presets are NVIDIA's resnext101-32x4d convergence configs (90 epochs without MixUp, 250
with MixUp 0.2) with NVIDIA's semantics.

"""

FOOTER = """
`resnext train` also warns, in one line each, about options that have no effect in the run they are given to
(`--nesterov` with RMSprop, `--rmsprop-*` with SGD, `--ignore-head` without `--pretrained-from-file`,
`--static-loss-scale` without fp16 AMP, `--end-lr` outside the cosine schedule, ...).
"""
