"""Training checkpoints: atomic writes, validation on read, retention, and discovery for `--resume auto`.

A checkpoint is a plain dict of tensors, numbers and strings (docs/ARCHITECTURE.md lists the keys), saved with
`torch.save` and read with `weights_only=True`, so reading one never runs code.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError, first_line

FORMAT = "resnext.checkpoint"
FORMAT_VERSION = 1
notices = logging.getLogger("resnext")
_NUMBERED = re.compile(r"^checkpoint-(\d+)-(\d+)\.pt$")  # checkpoint-<epoch>-<global step>.pt
_INTERRUPTED = re.compile(r"^\.checkpoint-\d+-\d+\.pt\..+\.tmp$")  # atomic_write's temporary file of one


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file so that `path` holds either its old content or the complete new one, never a torn mix.

    The data goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over `path`,
    and the folder is fsync'ed so the rename itself survives a power cut. A failure removes the temporary file
    and re-raises, leaving any previous `path` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); give it the mode any new file gets, so a checkpoint, export or
        # report can be shared the way the user's umask allows.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders; the rename is still atomic
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    # Linux reports it without changing it; setting and restoring it would race with threads creating files.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    workspace = Path(workspace)
    stale = [entry for entry in workspace.iterdir() if _INTERRUPTED.match(entry.name)] if workspace.is_dir() else []
    numbered = list_checkpoints(workspace)[keep:] if keep > 0 else []
    removed = []
    for path in stale + numbered:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
