"""A training run's workspace: the folder of its checkpoints and logs, and which checkpoint `--resume` continues."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from . import checkpoint as ckpt
from . import distributed
from .distributed import DistEnv
from .errors import UserError
from .models import resolve_arch
from .recipe import TrainConfig

notices = logging.getLogger("resnext")


def prepare_workspace(config: TrainConfig, env: DistEnv) -> Path:
    """Create `--workspace` on rank 0 and check it is writable; every rank waits for it. Raises UserError when it is
    a file or cannot be written."""
    workspace = Path(config.workspace)
    if env.is_main:
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
    distributed.barrier(env)
    return workspace


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
    return Path(config.resume), ckpt.read_checkpoint(config.resume)


def check_resume_compatible(state: dict, config: TrainConfig, num_classes: int, path: Path) -> None:
    """Refuse (UserError) a checkpoint of another architecture or class count, or whose optimizer state this run's
    optimizer could not take."""
    if resolve_arch(config.arch) != state.get("arch") or num_classes != state.get("num_classes"):
        raise UserError(f"checkpoint '{path}' is a {state.get('arch')} with {state.get('num_classes')} classes, "
                        f"but this run is a {resolve_arch(config.arch)} with {num_classes}; use the same --arch and "
                        "dataset, or a new --workspace.")
    saved = state.get("config", {})
    for option in ("optimizer", "bn_weight_decay"):  # they shape the optimizer state the checkpoint holds
        if option in saved and saved[option] != getattr(config, option):
            flag = "--" + option.replace("_", "-")
            raise UserError(f"checkpoint '{path}' was trained with {flag} {saved[option]}, this run asks for "
                            f"{getattr(config, option)}; resume with the same {flag}, or start from its weights "
                            "with --pretrained-from-file in a new --workspace.")
