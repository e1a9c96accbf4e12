"""Can a lost node rejoin a torchrun job with c10d rendezvous? A reproduction without resnext, for torch's authors.

Two torchrun agents on this machine (`--nnodes 2 --rdzv-backend c10d`, one gloo worker each that all-reduces once
per 0.2 s for --steps steps, `--max-restarts 1`). After step 8 node 1's agent and worker are SIGKILLed and node 1
is started again with the same command. Prints how each agent ended, after how long, and its last error line.

    python scripts/torchrun_c10d_rejoin.py                      # torch's default: the agents share their store
    python scripts/torchrun_c10d_rejoin.py --no-shared-store    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: rejoins

--rank0 chooses which node the rendezvous makes group rank 0 (through --local-addr; ranks follow the sorted node
addresses), --lost-node-hosts-store makes node 1 host the rendezvous store (--rdzv-conf is_host). Measured with
torch 2.14.1 in docs/reliability.md ("Distributed faults").
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import datetime, os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank, restart = dist.get_rank(), os.environ["TORCHELASTIC_RESTART_COUNT"]
for step in range(int(sys.argv[1])):
    dist.all_reduce(torch.ones(1))
    print(f"rank {rank} restart {restart} step {step}", flush=True)
    time.sleep(0.2)
dist.destroy_process_group()
"""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL an agent and its workers (torchrun starts each worker in a process group of its own)."""
    for pid in [*descendants(agent.pid), agent.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-shared-store", action="store_true", help="set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    parser.add_argument("--rank0", choices=["survivor", "relaunched"], default="survivor")
    parser.add_argument("--lost-node-hosts-store", action="store_true")
    parser.add_argument("--no-relaunch", action="store_true", help="node 1 never comes back")
    parser.add_argument("--join-timeout", type=int, default=600, help="--rdzv-conf join_timeout (seconds)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the agents after the kill")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="c10d-rejoin-"))
    (folder / "worker.py").write_text(WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.no_shared_store:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    survivor_first = args.rank0 == "survivor"
    addresses = ["127.0.0.1", "127.0.0.2"] if survivor_first else ["127.0.0.2", "127.0.0.1"]

    def agent(node: int, name: str) -> subprocess.Popen:
        hosts = (node == 1) == args.lost_node_hosts_store
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "rejoin",
                   "--rdzv-conf", f"is_host={int(hosts)},join_timeout={args.join_timeout}",
                   "--local-addr", addresses[node], "--max-restarts", "1", "--monitor-interval", "0.2",
                   str(folder / "worker.py"), str(args.steps)]
        with open(folder / f"{name}.log", "w") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    agents = {"node0": agent(0, "node0"), "node1": agent(1, "node1")}
    start = time.monotonic()
    while "step 8" not in (folder / "node0.log").read_text():
        if agents["node0"].poll() is not None or time.monotonic() - start > 300:
            print(f"node 0 did not reach step 8; see {folder}")
            return 1
        time.sleep(0.1)
    kill_node(agents.pop("node1"))
    killed = time.monotonic()
    print(f"node 1 killed after step 8 ({'rank 0' if not survivor_first else 'rank 1'}"
          f"{', the rendezvous store host' if args.lost_node_hosts_store else ''})")
    if not args.no_relaunch:
        time.sleep(2)
        agents["node1-relaunched"] = agent(1, "node1-relaunched")
    ended: dict[str, tuple[object, float]] = {}
    while len(ended) < len(agents):
        for name, process in agents.items():
            if name not in ended and process.poll() is not None:
                ended[name] = process.returncode, time.monotonic() - killed
        if time.monotonic() - killed > args.wait:
            for name, process in agents.items():
                if name not in ended:
                    kill_node(process)
                    ended[name] = f"none: still running after {args.wait:g} s, killed", args.wait
        time.sleep(0.2)
    for name, (code, after) in ended.items():
        log = (folder / f"{name}.log").read_text().splitlines()
        steps = [line for line in log if line.startswith("rank ")]
        errors = [line for line in log if "Error" in line and not line.startswith(("frame", "["))
                  and "ChildFailedError" not in line]  # the agent's summary of its worker's error
        print(f"{name}: exit {code}, {after:.0f} s after the kill; last step: {steps[-1] if steps else 'none'}; "
              f"last error: {errors[-1] if errors else 'none'}")
    status = int(any(code != 0 for code, _ in ended.values()))
    print(f"logs: {folder}")
    return status


if __name__ == "__main__":
    sys.exit(main())
