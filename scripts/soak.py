#!/usr/bin/env python3
"""Soak test: train on the embedded dataset for a fixed time and watch host and device memory for growth.

    python scripts/soak.py                                   # 60 minutes, resnext_tiny at 32 px, a sample a minute
    python scripts/soak.py --minutes 5 --interval 30         # a short run
    python scripts/soak.py --arch resnext101_32x4d --image-size 224 --batch-size 128 --device cuda --out soak.json

One `resnext.training.train` run with many epochs, validation after each, a checkpoint every --checkpoint-interval
steps and -j data workers, in a temporary workspace. A background thread samples, every --interval seconds, the
resident memory of this process and of its data workers (VmRSS in /proc/PID/status), and on CUDA the allocated
and reserved device memory. At the deadline it sends this process SIGTERM, so the run ends the way a preempted
job does: it saves and exits. The table and the least-squares slope of each series (MiB per hour, samples of the
first --warmup-minutes left out: allocators and caches fill up first) and the change from the first to the last of
those samples are printed, and written to --out as JSON. RSS counts pages a forked worker shares with its parent,
so the workers' absolute numbers overstate what they use; their trend is what matters.
Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

MIB = 2**20


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the DataLoader workers of the training process)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def sample(started: float, device: torch.device) -> dict:
    pid = os.getpid()
    row = {"minute": (time.time() - started) / 60, "host_main_mib": rss_bytes(pid) / MIB,
           "host_workers_mib": sum(rss_bytes(child) for child in children(pid)) / MIB}
    if device.type == "cuda":
        row["device_allocated_mib"] = torch.cuda.memory_allocated(device) / MIB
        row["device_reserved_mib"] = torch.cuda.memory_reserved(device) / MIB
    return row


def slope_per_hour(rows: list[dict], key: str) -> float:
    """Least-squares slope of rows[key] against time, in MiB per hour (0 with fewer than two samples)."""
    if len(rows) < 2:
        return 0.0
    times = torch.tensor([row["minute"] / 60 for row in rows], dtype=torch.float64)
    values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
    centered = times - times.mean()
    return float((centered * (values - values.mean())).sum() / (centered * centered).sum().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to train")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between memory samples")
    parser.add_argument("--warmup-minutes", type=float, default=2.0, help="samples left out of the slopes")
    parser.add_argument("--arch", default="resnext_tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoint-interval", type=int, default=20, help="optimizer steps between checkpoints")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workspace", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--out", type=Path, default=None, help="also write the samples and slopes as JSON")
    args = parser.parse_args(argv)

    from resnext.data import embedded
    from resnext.recipe import TrainConfig, preset
    from resnext.training import train

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = embedded.materialize()
    temporary = tempfile.TemporaryDirectory(prefix="resnext-soak-") if args.workspace is None else None
    workspace = args.workspace or Path(temporary.name)
    config = TrainConfig(**{**preset("resnext"), **dict(
        preset="resnext", data=str(data), arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
        workers=args.workers, epochs=100_000, warmup=0, lr=0.05, device=str(device), workspace=str(workspace),
        checkpoint_interval=args.checkpoint_interval, print_freq=1000, tensorboard=False, progress=False)})
    rows: list[dict] = []
    started = time.time()
    done = threading.Event()

    def sampler() -> None:
        deadline = started + args.minutes * 60
        while not done.wait(max(0.0, min(args.interval, deadline - time.time()))):
            rows.append(sample(started, device))
            print("soak: " + "  ".join(f"{k} {v:.1f}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)
            if time.time() >= deadline:
                os.kill(os.getpid(), signal.SIGTERM)  # the training loop saves and stops, as on preemption
                return

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        summary = train(config)
    finally:
        done.set()
        thread.join()
        if temporary is not None:
            temporary.cleanup()

    steady = [row for row in rows if row["minute"] >= args.warmup_minutes] or rows
    keys = [key for key in (rows[0] if rows else {}) if key != "minute"]
    slopes = {key: slope_per_hour(steady, key) for key in keys}
    changes = {key: steady[-1][key] - steady[0][key] for key in keys}
    print(f"\n{'minute':>7} " + " ".join(f"{key:>22}" for key in keys))
    for row in rows:
        print(f"{row['minute']:7.1f} " + " ".join(f"{row[key]:22.1f}" for key in keys))
    print(f"after minute {args.warmup_minutes:g}: slope MiB/hour "
          + "  ".join(f"{key} {value:+.1f}" for key, value in slopes.items())
          + "; change MiB " + "  ".join(f"{key} {value:+.1f}" for key, value in changes.items()))
    result = {"device": str(device), "torch": torch.__version__, "arch": args.arch, "image_size": args.image_size,
              "batch_size": args.batch_size, "workers": args.workers, "minutes": args.minutes,
              "images_trained": summary.get("train.images"), "exit_reason": summary.get("exit.reason"),
              "samples": rows, "slope_mib_per_hour": slopes, "change_mib": changes}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
