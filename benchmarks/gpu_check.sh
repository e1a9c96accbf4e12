#!/usr/bin/env bash
# Issue 6's GPU check in one device call: `bash benchmarks/gpu_check.sh` (add --quick for the CPU dry run).
# Runs from the repository root with the machine's own python3 and packages; installs nothing. Everything it
# measures goes to $OUT (at most 5 files); the table of targets is printed last. See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# simplejpeg (the pytorch backend's scaled decode) is not on the GPU machine, which reaches no registry: carry
# wheels in benchmarks/wheels (git-ignored; `pip download simplejpeg --no-deps -d benchmarks/wheels`, one per
# Python version) and they are installed here, outside the machine's own packages.
if [ -d benchmarks/wheels ] && ! python3 -c "import simplejpeg" 2>/dev/null; then
    deps="${GPU_CHECK_WORK:-/tmp/gpu_check_work}-deps"
    if python3 -m pip install -q --no-index --find-links benchmarks/wheels --target "$deps" simplejpeg; then
        export PYTHONPATH="$PYTHONPATH:$deps"
    fi
fi
exec python3 benchmarks/gpu_check.py "$@"
