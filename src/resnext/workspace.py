"""A training run's workspace: the folder of its checkpoints and logs, who owns it, and which checkpoint `--resume`
continues."""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from . import checkpoint as ckpt
from . import distributed
from .distributed import DistEnv
from .errors import UserError
from .models import resolve_arch
from .paths import atomic_write
from .recipe import TrainConfig

notices = logging.getLogger("resnext")


def _create_workspace(workspace: Path) -> None:
    """Create `workspace` and check it is writable; UserError when it is a file or cannot be written."""
    if workspace.exists() and not workspace.is_dir():
        raise UserError(f"--workspace '{workspace}' is a file; pass a folder for checkpoints and logs.")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        probe = workspace / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--workspace '{workspace}' is not writable ({err.strerror}); "
                        "choose a folder you can write to.") from None


LOCK_NAME = ".resnext.lock"  # flock()ed by the run that owns the workspace; deleted by it when it ends
HOLDER_NAME = ".resnext.lock.json"  # who owns it: host, pid, since, command


@contextlib.contextmanager
def claim_workspace(config: TrainConfig, env: DistEnv) -> Iterator[Path]:
    """Prepare `--workspace` and own it for the duration of the block: rank 0 holds its lock, so a second run on the
    same workspace is refused (UserError naming the owner) instead of mixing its log lines and checkpoints in.

    Taking over a workspace whose owner died (its lock is free, its holder file is still there) is a notice, and the
    temporary files of checkpoint writes the dead run left are removed: nothing else writes here now. Every rank
    leaves together when rank 0 is refused.
    """
    lock, error = WorkspaceLock(Path(config.workspace)), None
    if env.is_main:
        try:
            _create_workspace(Path(config.workspace))
            lock.acquire()
        except UserError as err:
            error = err
    if distributed.any_rank(error is not None, env):
        raise error or UserError(f"rank 0 could not use --workspace '{config.workspace}' (its message says why).")
    try:
        yield Path(config.workspace)
    finally:
        lock.release()


class WorkspaceLock:
    """An exclusive OS lock (flock) on WORKSPACE/.resnext.lock, with the owner's identity in .resnext.lock.json.

    The kernel drops the lock when its process ends, however it ends, so a dead run never blocks the next one. On
    NFS (v4, or v3 with lockd) flock is a byte-range lock that every client sees; on Lustre only with the `flock`
    mount option (`localflock` locks one node only); a filesystem without locks gets a warning and no protection.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.path = workspace / LOCK_NAME
        self.holder_path = workspace / HOLDER_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise UserError naming the run that holds it."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            notices.warning("warning: this system has no flock(); nothing stops a second run from using this "
                            "--workspace.")
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(f"--workspace '{self.workspace}' is in use by another run "
                                    f"({describe_holder(self._read_holder())}); wait for it to end, stop it, or "
                                    "choose another --workspace.") from None
                notices.warning(f"warning: the filesystem of --workspace '{self.workspace}' does not support file "
                                f"locks ({err.strerror}); nothing stops a second run from using it.")
                return
            if self._is_lock_file(fd):  # the owner deletes the file when it ends: a lock on a deleted file holds
                break                   # nothing, so try again on the new one
            os.close(fd)
        self._fd = fd
        previous = self._read_holder()
        if previous is not None:
            elsewhere = previous.get("host") != socket.gethostname()
            notices.warning(f"notice: taking over --workspace '{self.workspace}' from a run that ended without "
                            f"releasing it ({describe_holder(previous)})"
                            + ("; it ran on another host, whose lock is gone with it" if elsewhere else "") + ".")
        removed = ckpt.remove_interrupted_writes(self.workspace)  # no other run writes here now
        if removed:
            notices.warning(f"notice: removed {len(removed)} temporary file(s) of checkpoint writes that an earlier "
                            f"run left unfinished ({', '.join(path.name for path in removed)}).")
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:500]}
        atomic_write(self.holder_path, lambda handle: handle.write(json.dumps(holder).encode()))

    def _is_lock_file(self, fd: int) -> bool:
        """Whether `fd` is the file now at WORKSPACE/.resnext.lock (not one its owner deleted meanwhile)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        for path in (self.holder_path, self.path):  # while still locked: a waiting run then retries on a new file
            try:
                path.unlink()
            except OSError:
                pass
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None

    def _read_holder(self) -> dict | None:
        try:
            holder = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict | None) -> str:
    """"host H, pid P, since T" of a holder record (or a phrase saying it is not known)."""
    if not holder:
        return "its owner has not written its name yet"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"


def locate_resume(config: TrainConfig, workspace: Path) -> tuple[Path | None, dict | None]:
    """The checkpoint `--resume` names (path and state): `auto` takes the newest readable one in the workspace, or
    none (a fresh start); no --resume gives (None, None). Raises UserError for a named file that cannot be read."""
    if not config.resume:
        return None, None
    if config.resume == "auto":
        found = ckpt.find_resume_checkpoint(workspace)
        if found is None:
            notices.info(f"--resume auto: no checkpoint in {workspace}, starting from scratch.")
            return None, None
        return found
    return Path(config.resume), ckpt.read_resume_checkpoint(config.resume)


def check_resume_compatible(state: dict, config: TrainConfig, num_classes: int, path: Path) -> None:
    """Refuse (UserError) a checkpoint of another architecture or class count, or whose optimizer state this run's
    optimizer could not take."""
    if resolve_arch(config.arch) != state.get("arch") or num_classes != state.get("num_classes"):
        raise UserError(f"checkpoint '{path}' is a {state.get('arch')} with {state.get('num_classes')} classes, "
                        f"but this run is a {resolve_arch(config.arch)} with {num_classes}; use the same --arch and "
                        "dataset, or a new --workspace.")
    saved = state.get("config", {})
    for option in ("optimizer", "bn_weight_decay", "wd_exempt"):  # they shape the checkpoint's optimizer state
        if option in saved and saved[option] != getattr(config, option):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"checkpoint '{path}' was trained with {flag} {saved[option]}, this run asks for "
                            f"{getattr(config, option)}; resume with the same {flag}, or start from its weights "
                            "with --pretrained-from-file in a new --workspace.")


# Options whose change on resume alters the training maths; the command line wins (as in NVIDIA's main.py, which
# rebuilds the schedule from its flags), and one line says what changed. --optimizer and --bn-weight-decay are
# refused above; -b and the process count move the position (checkpoint.resume_position warns).
RESUME_OPTIONS = ("epochs", "lr", "lr_schedule", "end_lr", "warmup", "momentum", "weight_decay", "nesterov",
                  "label_smoothing", "mixup", "use_ema", "grad_clip", "precision", "seed", "image_size",
                  "augmentation", "optimizer_batch_size")


def report_resume_changes(state: dict, config: TrainConfig, schedule, global_step: int) -> str | None:
    """Warn in one line when this run's options differ from the checkpoint's, with the learning rate they give at
    the resumed step before and now; returns the line (None when nothing changed)."""
    saved, now = state.get("config", {}), config.to_dict()
    shown = lambda value: "default" if value is None else value  # noqa: E731
    changed = [f"--{name.replace('_', '-')} {shown(saved[name])} -> {shown(now[name])}" for name in RESUME_OPTIONS
               if name in saved and name in now and saved[name] != now[name]]
    before, after = _saved_lr(state), schedule(global_step)
    if not changed and (before is None or before == after):
        return None
    line = "warning: resuming with options that differ from the checkpoint's"
    line += f" ({', '.join(changed)}): the command line wins" if changed else ": the schedule follows this run"
    if before is not None and before != after:
        line += f"; the learning rate at global step {global_step} is {after:.6g} instead of {before:.6g}"
    notices.warning(line + ".")
    return line


def _saved_lr(state: dict) -> float | None:
    """The learning rate the checkpoint's own schedule gives at its global step (None if it cannot be rebuilt)."""
    from .optim import LRSchedule

    try:
        return LRSchedule(**state["schedule"])(state["global_step"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
