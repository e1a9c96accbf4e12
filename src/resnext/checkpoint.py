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
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist.")
    damaged = _failed_crc(path)
    if damaged is not None:
        raise UserError(f"checkpoint '{path}' is corrupt ({damaged}); use an older checkpoint or delete this one.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for torn zip files and refused pickles
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            raise UserError(f"'{path}' holds pickled Python objects besides tensors, which resnext refuses to load "
                            "because that can run code; resnext train never writes such a file.") from None
        raise UserError(f"checkpoint '{path}' cannot be read ({first_line(err)}); "
                        "it is truncated, corrupt or not a PyTorch file.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a resnext training checkpoint; "
                        "to load model weights from it use --weights / resnext.load_weights.")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"checkpoint '{path}' was written by a newer resnext (format "
                        f"{state['format_version']}); upgrade resnext to read it.")
    return state


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
        self.keep = -1 if keep < 0 else max(2, keep)  # NVIDIA's --gather-checkpoints: -1 all, else at least 2
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
            self.unsaved = f"could not write checkpoint {path} ({reason}); the previous checkpoint ({previous}) is intact"
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
