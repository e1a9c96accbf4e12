"""Training checkpoints: what they hold (training_state, RNG states), atomic writes with the failure policy,
validation on read, restoring a run's objects and position, retention, and discovery for `--resume auto`.

A checkpoint is a plain dict of tensors, numbers and strings (docs/ARCHITECTURE.md lists the keys), saved with
`torch.save` and read with `weights_only=True`, so reading one never runs code.
"""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError, first_line
from .paths import atomic_write

FORMAT = "resnext.checkpoint"
FORMAT_VERSION = 1
BEST_FILENAME = "model_best.pth.tar"  # NVIDIA's name for the best epoch's checkpoint
notices = logging.getLogger("resnext")
_NUMBERED = re.compile(r"^checkpoint-(\d+)-(\d+)\.pt$")  # checkpoint-<epoch>-<global step>.pt
_INTERRUPTED = re.compile(r"^\.checkpoint-\d+-\d+\.pt\..+\.tmp$")  # atomic_write's temporary file of one


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomically write a checkpoint dict (format tags added)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our checkpoints safely; a UserError names the file when it is missing, torn or foreign."""
    path, state = Path(path), _load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a resnext training checkpoint; "
                        "to load model weights from it use --weights / resnext.load_weights.")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint '{path}' was written by a newer resnext (format "
                        f"{state['format_version']}); upgrade resnext to read it.")
    return state


def read_resume_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint to continue from: ours (read_checkpoint), or a training checkpoint of NVIDIA's ConvNets code
    converted to our names (see from_nvidia_checkpoint; `restore` finishes the conversion with adapt_nvidia_state)."""
    content = _load(path)
    if is_nvidia_checkpoint(content):
        return from_nvidia_checkpoint(content, path)
    return read_checkpoint(path)


def _load(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist.")
    damaged = _failed_crc(path)
    if damaged is not None:
        raise UserError(f"checkpoint '{path}' is corrupt ({damaged}); use an older checkpoint or delete this one.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for torn zip files and refused pickles
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            raise UserError(f"'{path}' holds pickled Python objects besides tensors, which resnext refuses to load "
                            "because that can run code; resnext train never writes such a file.") from None
        raise UserError(f"checkpoint '{path}' cannot be read ({first_line(err)}); "
                        "it is truncated, corrupt or not a PyTorch file.") from None


def _failed_crc(path: Path) -> str | None:
    """The first entry of a zip-format checkpoint whose bytes fail their CRC-32, else None.

    torch.load reads tensor data without checking the CRC-32 that torch.save records, so a flipped bit on disk
    would load as a silently different weight; reading every entry once through zipfile checks them all. Files
    that are not zip archives (torn ones included) are left for torch.load to refuse.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.CRC == 0 and entry.file_size:  # written with torch's CRC-32 computation switched off
                    continue
                with archive.open(entry) as member:  # zipfile raises BadZipFile at the end of a bad entry
                    while member.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        return first_line(err)
    return None


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"checkpoint-{epoch:04d}-{global_step:08d}.pt"


def list_checkpoints(workspace: str | os.PathLike) -> list[Path]:
    """Numbered checkpoints in `workspace`, newest (highest global step) first."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        return []
    found = []
    for entry in workspace.iterdir():
        match = _NUMBERED.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(2)), int(match.group(1)), entry))
    return [entry for *_, entry in sorted(found, reverse=True)]


def find_resume_checkpoint(workspace: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint in `workspace` that loads, with its state; broken ones are skipped with a warning."""
    for path in list_checkpoints(workspace):
        try:
            return path, read_checkpoint(path)
        except UserError as err:
            notices.warning(f"warning: skipping unreadable checkpoint: {err}")
    return None


def prune_checkpoints(workspace: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the `keep` newest numbered checkpoints (keep <= 0 keeps all), and the temporary files of
    checkpoint writes a crash interrupted (call it only while no checkpoint is being written); returns what was
    removed."""
    numbered = list_checkpoints(workspace)[keep:] if keep > 0 else []
    return remove_interrupted_writes(workspace) + _remove(numbered)


def remove_interrupted_writes(workspace: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a crash interrupted (only safe while nothing else writes
    checkpoints in `workspace`: the run holding its lock); returns what was removed."""
    workspace = Path(workspace)
    return _remove([entry for entry in workspace.iterdir() if _INTERRUPTED.match(entry.name)]
                   if workspace.is_dir() else [])


def _remove(paths: list[Path]) -> list[Path]:
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


# ---- what a checkpoint holds --------------------------------------------------------------------------------

def training_state(*, arch: str, class_names: list[str], model: nn.Module, ema_model: nn.Module | None,
                   optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, schedule: dict, progress: dict,
                   metrics: dict, config: dict, preprocessing: dict, rng: list[dict], world_size: int,
                   batch_size: int, accumulation: int) -> dict:
    """The dict a training checkpoint holds (docs/ARCHITECTURE.md, "Checkpoint format"): everything needed to
    continue bit-for-bit. `progress` is the loop's position (epoch, step_in_epoch, global_step, best_*, ...);
    `rng` one rng_state() per rank; batch_size per process, accumulation micro-batches per optimizer step."""
    return {
        "arch": arch, "num_classes": len(class_names), "class_names": list(class_names),
        "model": model.state_dict(), "ema": ema_model.state_dict() if ema_model is not None else None,
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "schedule": schedule,
        "epoch": progress["epoch"], "step_in_epoch": progress["step_in_epoch"],
        "global_step": progress["global_step"], "best_top1": progress["best_top1"],
        "progress": progress, "metrics": dict(metrics), "config": config, "preprocessing": preprocessing,
        "rng": rng, "world_size": world_size,
        "data_state": {"epoch": progress["epoch"], "start_batch": progress["step_in_epoch"] * accumulation,
                       "batch_size": batch_size, "accumulation": accumulation},
    }


def rng_state() -> dict:
    """This process's torch, Python, NumPy (and CUDA, once initialized) generator states, as weights_only-loadable
    values (tensors, ints, lists, dicts)."""
    state = {"torch": torch.get_rng_state(), "python": _python_rng_to_list(random.getstate()),
             "numpy": _numpy_rng_to_dict(np.random.get_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the generator states rng_state() captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _numpy_rng_to_dict(state) -> dict:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


# ---- restoring ----------------------------------------------------------------------------------------------

def restore_objects(state: dict, *, model: nn.Module, ema_model: nn.Module | None, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, rank: int, world_size: int) -> None:
    """Load a checkpoint into freshly built objects, and this rank's RNG states when the process count is the same.

    An EMA missing from the checkpoint starts from the model's weights. Raises UserError when the optimizer state
    does not fit the optimizer (another optimizer or parameter grouping)."""
    model.load_state_dict(state["model"])
    if ema_model is not None:
        ema_model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as err:
        raise UserError(f"the checkpoint's optimizer state does not fit this run's optimizer ({err}); resume with the "
                        "settings it was trained with.") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng_states = state.get("rng") or []
    if len(rng_states) == world_size:
        set_rng_state(rng_states[rank])


def resume_position(state: dict, fields: tuple[str, ...], *, batch_size: int, world_size: int, accumulation: int,
                    steps_per_epoch: int) -> dict:
    """The loop position (the `fields` of the saved "progress" dict) to continue from.

    With the same batch size, process count, accumulation and epoch length the position is the saved one (exact
    resume). Otherwise the run continues at the same fraction of the epoch, with steps counted in the new epoch
    length so the LR schedule, EMA warm-up and MixUp draws stay where they were, and a warning says it is not exact.
    """
    position = {k: v for k, v in state.get("progress", {}).items() if k in fields}
    saved = state.get("data_state", {})
    saved_steps = state["schedule"]["steps_per_epoch"]
    same_geometry = (saved.get("batch_size") == batch_size and state.get("world_size") == world_size
                     and saved.get("accumulation") == accumulation and saved_steps == steps_per_epoch)
    if not same_geometry:
        fraction = position.get("step_in_epoch", 0) / max(1, saved_steps)
        position["step_in_epoch"] = min(steps_per_epoch - 1, int(fraction * steps_per_epoch))
        position["global_step"] = position.get("epoch", 0) * steps_per_epoch + position["step_in_epoch"]
        notices.warning("warning: the batch size, process count or dataset changed since the checkpoint; resuming "
                        "at the same point of the epoch, but not bit-exactly.")
    return position


# ---- writing, with the failure policy -----------------------------------------------------------------------

class CheckpointWriter:
    """Rank 0's numbered checkpoints in a workspace, the always-newest and best links, and retention.

    A failed write (disk full, permissions) keeps every earlier checkpoint and returns None with a warning, so
    training goes on; `unsaved` says why until a later write succeeds (the run exits non-zero if its last write
    failed). `last` is the newest checkpoint this writer completed.
    """

    def __init__(self, workspace: str | os.PathLike, latest_name: str = "checkpoint.pth.tar",
                 keep: int = 0) -> None:
        self.workspace = Path(workspace)
        self.latest_name = latest_name
        self.keep = keep  # numbered checkpoints kept: -1 (or 0) all (TrainConfig.checkpoints_to_keep)
        self.last: Path | None = None
        self.unsaved: str | None = None

    def write(self, state: dict, epoch: int, global_step: int, is_best: bool = False) -> Path | None:
        path = self.workspace / checkpoint_name(epoch, global_step)
        try:
            save_checkpoint(path, state)
        except (OSError, RuntimeError) as err:
            reason = write_failure(err)
            if reason is None:  # not a failed write: a bug to see in full
                raise
            previous = self.last or next(iter(list_checkpoints(self.workspace)), "none yet")
            self.unsaved = (f"could not write checkpoint {path} ({reason}); the previous checkpoint ({previous}) "
                            "is intact")
            notices.warning(f"warning: {self.unsaved} and training continues.")
            return None
        self.unsaved = None
        self.last = path
        try:
            _replace_with_link(path, self.workspace / self.latest_name)
            if is_best:
                _replace_with_link(path, self.workspace / BEST_FILENAME)
            prune_checkpoints(self.workspace, self.keep)
        except OSError as err:  # the numbered checkpoint is complete: --resume auto finds it
            notices.warning(f"warning: wrote {path} but could not update {self.latest_name} or prune older "
                            f"checkpoints ({err.strerror or err}).")
        return path


def write_failure(err: BaseException) -> str | None:
    """Why a checkpoint write failed, when `err` is a failed write (else None: a bug, to be raised as it is).

    The file system's errors arrive as OSError (ENOSPC, EDQUOT, EACCES, EIO), from our own flush/fsync/rename or
    from Python's file object. Inside torch.save they may arrive as torch's zip writer's RuntimeError instead: with
    the disk full, its write callback's OSError becomes the context of "[enforce fail at inline_container.cc:...]
    unexpected pos" or "PytorchStreamWriter failed writing file ...". The OSError in the chain gives the reason.
    """
    chain, seen = [], err
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for link in chain:
        if isinstance(link, OSError):
            return link.strerror or first_line(link)
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITER_ERRORS):
        return first_line(err)
    return None


_TORCH_WRITER_ERRORS = ("PytorchStreamWriter", "inline_container.cc", "file write failed")


def _replace_with_link(source: Path, target: Path) -> None:
    """Point `target` at `source`'s bytes atomically: a hard link where the filesystem allows, else a copy."""
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


# ---- NVIDIA's training checkpoints ----------------------------------------------------------------------------
# NVIDIA's image_classification/training.py saves {"epoch": epochs done, "best_prec1", "state_dict" (the model,
# "module."-prefixed under DDP, stages as layers.N), "optimizer" (groups [names containing "bn", the rest] over the
# model's named_parameters, or one group with --bn-weight-decay and SGD), "state_dict_ema" with --use-ema}.

NVIDIA_KEYS = ("epoch", "state_dict", "optimizer")
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Our SE names -> NVIDIA's (models/common.py SqueezeAndExcitation: Linear `squeeze` and `expand`).
_TO_NVIDIA = ((re.compile(r"^layer(\d+)\."), lambda m: f"layers.{int(m.group(1)) - 1}."),
              (re.compile(r"\.se\.fc1\."), ".squeeze.squeeze."), (re.compile(r"\.se\.fc2\."), ".squeeze.expand."))
# Module order inside NVIDIA's Bottleneck (its registration order, hence its parameter order).
_NVIDIA_BLOCK_ORDER = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample", "squeeze")
NVIDIA_ARCHS = ("resnet50", "resnext101_32x4d", "se_resnext101_32x4d_nvidia")


def is_nvidia_checkpoint(content) -> bool:
    return (isinstance(content, dict) and content.get("format") is None
            and all(key in content for key in NVIDIA_KEYS) and isinstance(content["state_dict"], dict))


def _strip_wrappers(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def from_nvidia_checkpoint(content: dict, path) -> dict:
    """NVIDIA's training checkpoint in our names: {"format": "nvidia", arch and class count inferred from the
    shapes, "model", "ema", "epoch" (the next epoch, as NVIDIA's start_epoch), "best_top1", and NVIDIA's optimizer
    state with its parameter names in NVIDIA's order}."""
    from .weights import _normalise_keys, infer_arch, infer_num_classes

    where = f"NVIDIA checkpoint '{path}'"
    model, _ = _normalise_keys(content["state_dict"], where)
    ema = content.get("state_dict_ema")
    ema = _normalise_keys(ema, where)[0] if isinstance(ema, dict) else None
    nvidia_names = [_strip_wrappers(k) for k in content["state_dict"] if not k.endswith(_BUFFER_SUFFIXES)]
    ours = list(_normalise_keys({k: torch.zeros(0) for k in nvidia_names}, where)[0])
    optimizer = content["optimizer"]
    if not isinstance(optimizer, dict) or "param_groups" not in optimizer or "state" not in optimizer:
        raise UserError(f"{where} has no optimizer state_dict; resume needs one (or start from its weights with "
                        "--pretrained-from-file).")
    best = content.get("best_prec1", 0.0)
    return {"format": "nvidia", "arch": infer_arch(model), "num_classes": infer_num_classes(model), "model": model,
            "ema": ema, "nvidia_optimizer": optimizer, "nvidia_parameters": list(zip(nvidia_names, ours)),
            "epoch": int(content["epoch"]), "best_top1": float(best), "config": {}, "path": str(path)}


def adapt_nvidia_state(state: dict, model, optimizer, config, env, steps_per_epoch: int) -> dict:
    """Our checkpoint dict for a state read from NVIDIA's checkpoint (others pass through unchanged).

    The momentum (SGD) or square-average (RMSprop) buffers go to the same parameters by name, whatever our
    parameter groups; the run continues at the start of the epoch NVIDIA's start_epoch names, with its best top-1.
    """
    if state.get("format") != "nvidia":
        return state
    where = f"NVIDIA checkpoint '{state['path']}'"
    nv_opt, pairs = state["nvidia_optimizer"], state["nvidia_parameters"]
    groups = nv_opt["param_groups"]
    spared = [ours for nv, ours in pairs if "bn" in nv]
    rest = [ours for nv, ours in pairs if "bn" not in nv]
    layouts = {1: [[ours for _, ours in pairs]], 2: [spared, rest]}
    expected = layouts.get(len(groups))
    if expected is None or [len(g["params"]) for g in groups] != [len(names) for names in expected]:
        raise UserError(f"{where}: its optimizer groups ({[len(g['params']) for g in groups]} parameters) are not "
                        f"NVIDIA's for this model ({len(spared)} with 'bn' in their name, {len(rest)} others); it "
                        "was not written by NVIDIA's main.py for this architecture.")
    name_of_index = {index: name for group, names in zip(groups, expected)
                     for index, name in zip(group["params"], names)}
    kinds = {key for entry in nv_opt["state"].values() for key in entry}
    saved_optimizer = "rmsprop" if "square_avg" in kinds else "sgd" if kinds else config.optimizer
    if saved_optimizer != config.optimizer:
        raise UserError(f"{where} was trained with --optimizer {saved_optimizer}, this run asks for "
                        f"{config.optimizer}; resume with --optimizer {saved_optimizer}.")
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(name_of_index.values()))
    if missing:
        raise UserError(f"{where} has no optimizer entry for {len(missing)} parameter(s) of this model, e.g. "
                        f"{missing[0]}.")
    nv_index = {name: index for index, name in name_of_index.items()}
    ours = optimizer.state_dict()
    our_params = [p for group in optimizer.param_groups for p in group["params"]]
    name_of = {id(p): n for n, p in params.items()}
    moved = {}
    for index, param in enumerate(our_params):
        entry = nv_opt["state"].get(nv_index[name_of[id(param)]])
        if entry is not None:
            moved[index] = {k: v.reshape(param.shape) if torch.is_tensor(v) and v.numel() == param.numel() > 1 else v
                            for k, v in entry.items()}
    ours["state"] = moved
    epoch, best = state["epoch"], state["best_top1"]
    return {**state, "optimizer": ours, "scaler": None, "rng": [], "world_size": env.world_size,
            "progress": {"epoch": epoch, "step_in_epoch": 0, "global_step": epoch * steps_per_epoch,
                         "best_top1": best, "best_epoch": epoch - 1 if best > 0 else -1},
            "schedule": {"steps_per_epoch": steps_per_epoch},
            "data_state": {"batch_size": config.batch_size, "accumulation": config.accumulation_steps(env.world_size)}}


def _nvidia_name(name: str) -> str:
    for pattern, replacement in _TO_NVIDIA:
        name = pattern.sub(replacement, name)
    return name


def _nvidia_order(name: str) -> tuple:
    """Sort key giving NVIDIA's registration order: stem, stages block by block (conv1..bn3, downsample, SE), fc."""
    parts = name.split(".")
    if parts[0] == "layers":
        sub = parts[3]
        rank = _NVIDIA_BLOCK_ORDER.index(sub) if sub in _NVIDIA_BLOCK_ORDER else len(_NVIDIA_BLOCK_ORDER)
        return (1, int(parts[1]), int(parts[2]), rank)
    return (2,) if parts[0] == "fc" else (0,)


def to_nvidia_checkpoint(state: dict, module_prefix: bool = True) -> dict:
    """One of our training checkpoints in the layout NVIDIA's main.py --resume loads.

    module_prefix: keys start with "module." as NVIDIA's DDP runs (multiproc.py) expect; False for a single-GPU
    NVIDIA run. Their code resumes at epoch boundaries: a checkpoint taken inside an epoch restarts that epoch.
    """
    from .models import create_model
    from .optim import parameter_groups

    config = state.get("config", {})
    model = create_model(state["arch"], state["num_classes"])
    groups = parameter_groups(model, config.get("weight_decay", 1e-4), config.get("bn_weight_decay", False),
                              config.get("wd_exempt", "bn-in-name"), config.get("optimizer", "sgd"))
    name_of = {id(p): n for n, p in model.named_parameters()}
    our_names = [name_of[id(p)] for group in groups for p in group["params"]]
    prefix = "module." if module_prefix else ""

    def weights(sd: dict) -> dict:
        converted = {}
        for key in sorted(sd, key=lambda k: _nvidia_order(_nvidia_name(k))):
            value = sd[key]
            if re.search(r"\.se\.fc[12]\.weight$", key):
                value = value.flatten(1)  # NVIDIA's default SE layers are Linear
            converted[prefix + _nvidia_name(key)] = value
        return converted

    state_dict = weights(state["model"])
    nvidia_params = [k[len(prefix):] for k in state_dict if not k.endswith(_BUFFER_SUFFIXES)]
    ours_of = {_nvidia_name(n): n for n in our_names}
    single = config.get("optimizer", "sgd") == "sgd" and config.get("bn_weight_decay", False)
    nv_groups = [nvidia_params] if single else [[n for n in nvidia_params if "bn" in n],
                                                [n for n in nvidia_params if "bn" not in n]]
    saved = state["optimizer"]
    base = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    if "fused" in base:  # NVIDIA's optimizer is torch's default SGD / RMSprop
        base.update(foreach=None, fused=None)
    wd = config.get("weight_decay", base.get("weight_decay", 0.0))
    param_groups, nv_state, index = [], {}, 0
    our_index = {name: i for i, name in enumerate(our_names)}
    for position, names in enumerate(nv_groups):
        decay = wd if (single or position == 1 or config.get("bn_weight_decay", False)) else 0.0
        param_groups.append({**base, "weight_decay": decay, "params": list(range(index, index + len(names)))})
        for name in names:
            entry = saved["state"].get(our_index[ours_of[name]])
            if entry is not None:
                shape = state_dict[prefix + name].shape
                nv_state[index] = {k: v.reshape(shape) if torch.is_tensor(v) and v.numel() == shape.numel() > 1 else v
                                   for k, v in entry.items()}
            index += 1
    if state.get("step_in_epoch", 0):
        notices.warning(f"warning: the checkpoint is {state['step_in_epoch']} steps into epoch {state['epoch'] + 1}; "
                        "NVIDIA's code resumes at epoch boundaries and repeats that epoch from its start.")
    result = {"epoch": int(state["epoch"]), "best_prec1": float(state.get("best_top1", 0.0)),
              "state_dict": state_dict, "optimizer": {"state": nv_state, "param_groups": param_groups}}
    if state.get("ema") is not None:
        result["state_dict_ema"] = weights(state["ema"])
    return result


def resolve_seed(seed: int | None, state: dict | None, env) -> int:
    """--seed, else the seed of the checkpoint being resumed, else a random one (the same on every rank)."""
    if seed is not None:
        return seed
    saved = (state or {}).get("config", {}).get("seed")
    if saved is not None:
        return int(saved)
    drawn = torch.tensor(int.from_bytes(os.urandom(4), "little") >> 1, dtype=torch.int64, device=env.device)
    from . import distributed

    if env.distributed:
        drawn = distributed.all_reduce_max(drawn, env)
    return int(drawn)
