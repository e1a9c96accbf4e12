"""Where resnext keeps files it makes for itself (the embedded dataset, downloaded weights)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """$RESNEXT_HOME, or ~/.cache/resnext."""
    return Path(os.environ.get("RESNEXT_HOME") or Path.home() / ".cache" / "resnext").expanduser()
