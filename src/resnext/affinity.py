"""`--gpu-affinity`: pin each training process to the CPU cores nearest its GPU, with NVIDIA's mode names.

The modes are those of NVIDIA's image_classification/gpu_affinity.py. Each GPU has a set of "local" cores (its CPU
socket or NUMA node, from NVML or from sysfs' `local_cpulist` of the GPU's PCI device), restricted to the cores this
process may use; hyper-thread siblings are kept together as one physical core:

    socket                      all physical cores local to the GPU
    socket_single               the first of them (GPUs on one socket share it)
    socket_single_unique        one physical core per GPU, none shared
    socket_unique_interleaved   a share of the local cores per GPU, none shared, taken every n-th
    socket_unique_contiguous    a share of the local cores per GPU, none shared, in consecutive runs (NVIDIA's
                                configs.yml value for DGX machines)

With balanced shares (NVIDIA's default) every GPU gets as many physical cores as the most crowded socket allows.
`core_sets` is the pure computation (tests feed it made-up topologies); `set_gpu_affinity` reads the machine.
"""
from __future__ import annotations

import glob
import itertools
import logging
import os

from .errors import UserError

notices = logging.getLogger("resnext")
MODES = ("none", "socket", "socket_single", "socket_single_unique", "socket_unique_interleaved",
         "socket_unique_contiguous")


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def core_sets(mode: str, gpu_cpus: list[list[int]], available: set[int], siblings: list[list[int]] = (),
              logical: str = "all", balanced: bool = True) -> list[list[int]]:
    """The logical CPUs each GPU's process is pinned to under `mode`, one sorted list per GPU.

    gpu_cpus: the cores local to each GPU (all GPUs of the node, in device order). available: the cores this
    process may run on. siblings: groups of hyper-threads of one physical core (a core in no group is its own).
    logical: "all" keeps every hyper-thread of a chosen physical core, "single" only its first.
    Raises UserError when two GPUs' local core sets overlap without being equal (no socket structure).
    """
    if mode not in MODES:
        raise UserError(f"unknown --gpu-affinity mode '{mode}'; choose one of {', '.join(MODES)}.")
    local = [sorted(set(cpus) & set(available)) for cpus in gpu_cpus]
    for a, b in itertools.combinations(local, 2):
        if set(a) != set(b) and set(a) & set(b):
            raise UserError(f"--gpu-affinity {mode}: the GPUs' local cores {a} and {b} overlap without being the "
                            "same socket; use --gpu-affinity none.")
    if mode == "none":
        return [sorted(available) for _ in gpu_cpus]
    sibling_of = {cpu: tuple(sorted(group)) for group in siblings for cpu in group}
    # Each GPU's local cores as physical cores: tuples of hyper-threads, ordered by their first thread.
    physical = [_group(cpus, sibling_of) for cpus in local]
    if mode == "socket":
        chosen = physical
    elif mode == "socket_single":
        chosen = [cores[:1] for cores in physical]
    elif mode == "socket_single_unique":
        taken: set[tuple[int, ...]] = set()
        chosen = []
        for cores in physical:
            free = next((core for core in cores if core not in taken), None)
            chosen.append([free] if free is not None else [])
            if free is not None:
                taken.add(free)
    else:
        chosen = _unique_shares(physical, interleaved=mode == "socket_unique_interleaved", balanced=balanced)
    pick = (lambda core: core) if logical == "all" else (lambda core: core[:1])
    return [sorted(cpu for core in cores for cpu in pick(core)) for cores in chosen]


def _group(cpus: list[int], sibling_of: dict[int, tuple[int, ...]]) -> list[tuple[int, ...]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in sorted(cpus, key=lambda c: sibling_of.get(c, (c,))):
        groups.setdefault(sibling_of.get(cpu, (cpu,)), []).append(cpu)
    return [tuple(members) for members in groups.values()]


def _unique_shares(physical: list[list[tuple[int, ...]]], interleaved: bool, balanced: bool) -> list[list]:
    """Split each socket's physical cores among the GPUs on it, without sharing."""
    sockets: dict[tuple, list[int]] = {}
    for gpu, cores in enumerate(physical):
        sockets.setdefault(tuple(cores), []).append(gpu)
    fewest = min(len(cores) // len(gpus) for cores, gpus in sockets.items())
    chosen: list[list] = [[] for _ in physical]
    for cores, gpus in sockets.items():
        per_gpu = fewest if balanced else len(cores) // len(gpus)
        cores = list(cores[:len(gpus) * fewest]) if balanced else list(cores)
        for position, gpu in enumerate(gpus):
            if interleaved:
                chosen[gpu] = cores[position::len(gpus)]
            else:
                chosen[gpu] = cores[position * per_gpu:(position + 1) * per_gpu]
    return chosen


# ---- reading the machine ------------------------------------------------------------------------------------

def gpu_local_cpus() -> list[list[int]]:
    """The CPUs local to each visible CUDA GPU: NVML (nvidia-ml-py) when installed, else sysfs."""
    import torch

    pci_ids = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        domain, bus, device = (getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id",
                                                                      "pci_device_id"))
        pci_ids.append(None if bus is None else f"{domain or 0:04x}:{bus:02x}:{device:02x}.0")
    return [_nvml_cpus(pci, index) or _sysfs_cpus(pci) for index, pci in enumerate(pci_ids)]


def _nvml_cpus(pci: str | None, index: int) -> list[int]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByPciBusId(pci.encode()) if pci
                  else pynvml.nvmlDeviceGetHandleByIndex(index))
        words = pynvml.nvmlDeviceGetCpuAffinity(handle, (os.cpu_count() + 63) // 64)
    except Exception:  # NVML errors are its own exception classes; sysfs is the fallback
        return []
    return [64 * w + bit for w, word in enumerate(words) for bit in range(64) if (int(word) >> bit) & 1]


def _sysfs_cpus(pci: str | None) -> list[int]:
    if pci is None:
        return []
    try:
        with open(f"/sys/bus/pci/devices/{pci}/local_cpulist") as handle:
            return parse_cpulist(handle.read())
    except OSError:
        return []


def thread_siblings() -> list[list[int]]:
    """Hyper-thread groups of this machine, from sysfs."""
    groups = set()
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"):
        try:
            with open(path) as handle:
                groups.add(tuple(parse_cpulist(handle.read())))
        except OSError:
            continue
    return [list(group) for group in sorted(groups)]


def set_gpu_affinity(mode: str, env) -> list[int] | None:
    """Pin this process (and the data workers it starts later) to its GPU's cores under `mode`; returns the CPUs,
    or None when nothing was changed (mode "none", no GPU, or no topology found: one notice says which)."""
    if mode == "none":
        return None
    import torch

    if env.device.type != "cuda" or not torch.cuda.is_available():
        notices.info(f"--gpu-affinity {mode}: this process runs without a GPU, so its CPU affinity stays as it is.")
        return None
    local = gpu_local_cpus()
    if not all(local):
        notices.info(f"--gpu-affinity {mode}: the GPUs' CPU topology is unknown here (no NVML, no sysfs "
                     "local_cpulist); the CPU affinity stays as it is.")
        return None
    available = os.sched_getaffinity(0)
    cpus = core_sets(mode, local, available, thread_siblings())[env.device.index or 0]
    if not cpus:
        notices.info(f"--gpu-affinity {mode}: no free core is local to GPU {env.device.index}; the CPU affinity stays "
                     "as it is.")
        return None
    os.sched_setaffinity(0, cpus)
    notices.info(f"rank {env.rank} (GPU {env.device.index}): CPU affinity {cpus}")
    return cpus
