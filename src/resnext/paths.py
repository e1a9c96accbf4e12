"""Where resnext keeps files it makes for itself (the embedded dataset, downloaded weights), and how it writes the
files that matter (checkpoints, exports, reports, downloads): atomically."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable


def cache_home() -> Path:
    """$RESNEXT_HOME, or ~/.cache/resnext."""
    return Path(os.environ.get("RESNEXT_HOME") or Path.home() / ".cache" / "resnext").expanduser()


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
