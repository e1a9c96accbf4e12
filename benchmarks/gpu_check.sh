#!/usr/bin/env bash
# Issue 6's GPU check in one device call: `bash benchmarks/gpu_check.sh` (add --quick for the CPU dry run).
# Runs from the repository root with the machine's own python3 and packages; installs nothing. Everything it
# measures goes to $OUT (at most 5 files); the table of targets is printed last. See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$@"
