"""Write docs/nvidia.md from the option definitions (src/resnext/recipe.py); tests fail when the two differ.

    python scripts/write_nvidia_doc.py            # rewrites docs/nvidia.md
    python scripts/write_nvidia_doc.py --check    # exit 1 when docs/nvidia.md is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnext.nvidia import nvidia_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "nvidia.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")
    args = parser.parse_args()
    text = nvidia_doc()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale; run python scripts/write_nvidia_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
