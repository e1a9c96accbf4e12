"""One GPU call for issue 6: the peers' baseline and our benchmarks on the same card, a table of the targets last.

    bash benchmarks/gpu_check.sh                       on the GPU machine (H100/H200): budget 480 s
    bash benchmarks/gpu_check.sh --quick               CPU dry run at tiny sizes: checks that every step runs
    bash benchmarks/gpu_check.sh --only data,train_jpeg   rerun some steps (names as in results.json)

Writes into $OUT (default /tmp/gpu_check): gpu_check.log (every step's output), results.json (per step: command,
seconds, exit status, its JSON result), peer_baseline.json (written by the peers' script), data_device.json (the
data backends' checks on the device) and summary.md (the table printed last). Steps run in order of importance; a step that would not fit in what is left of the budget
(BUDGET_S, seconds) is skipped rather than killed halfway, and a failing step does not stop the others.
Needs nothing installed: the package runs from src/ (PYTHONPATH), the peers' script from benchmarks/.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER_SCRIPT = REPO / "benchmarks" / "peer_baseline.py"
PEER_ORIGINAL = REPO.parent / "shared" / "gpu" / "peer_baseline.py"
PEER_HEADER_LINES = 4  # the "verbatim copy" note above the peers' script
QUICK = "--quick" in sys.argv
OUT = Path(os.environ.get("OUT") or "/tmp/gpu_check")
BUDGET_S = float(os.environ.get("BUDGET_S", 3600 if QUICK else 480))
ONLY = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else None
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_work"))

# Sizes: the on the GPU; on the CPU dry run, the same commands at sizes two cores finish.
if QUICK:
    ARCH, SIZE, BATCH, WORKERS = "resnet50", "32", "2", "2"
    TRAIN_STEPS = ["--warmup", "1", "--steps", "2", "--window", "1"]
    B1_STEPS = ["--warmup", "1", "--steps", "4", "--window", "2"]
    DATA_STEPS = ["--warmup", "1", "--steps", "4", "--window", "2"]
    FOLDER = dict(parts=2, classes=2, per_class=10, val_per_class=1)
    # The peers' timed sections run fp16 at 224 px even with --quick: minutes per step on a CPU. The dry run
    # checks that their script starts and writes its JSON (parameters, FLOPs), not their timings.
    PEER_ARGS = ["--quick", "--sections", "none"]
    DEVICE = ["--device", "cpu"]
    DATA_CHECK = ["--device", "cpu", "--classes", "2", "--per-class", "8", "--timed", "4", "--batch-size", "4"]
else:
    ARCH, SIZE, BATCH, WORKERS = "resnext101_32x4d", "224", "256", "14"
    TRAIN_STEPS = ["--warmup", "20", "--steps", "50", "--window", "10"]
    B1_STEPS = ["--warmup", "50", "--steps", "500", "--window", "50"]
    DATA_STEPS = ["--warmup", "10", "--steps", "40", "--window", "10"]
    # 8 x 8 classes x 160 = 10,240 training JPEGs (40 batches of 256), built by 8 processes in parallel
    FOLDER = dict(parts=8, classes=8, per_class=160, val_per_class=2)
    PEER_ARGS = ["--sections", "ceilings,train,infer"]
    DEVICE = []
    DATA_CHECK = ["--device", "cuda"]

DATASET = WORK / "imagenet-like"
RESNEXT = [sys.executable, "-m", "resnext"]
MODEL = ["-a", ARCH, "--image-size", SIZE, *DEVICE]


def bench(*args: str) -> list[str]:
    return [*RESNEXT, "benchmark", *MODEL, *args, "--json"]


def train_command(compile_: bool) -> list[str]:
    """`resnext train` itself on synthetic data (issue 3's check): its log is read back like the benchmark's."""
    steps = "6" if QUICK else "60"
    workspace = WORK / ("train-compile" if compile_ else "train-eager")
    return [*RESNEXT, "train", "--preset", "resnext", "--data-backend", "synthetic", *MODEL, "-b", BATCH,
            "--epochs", "1",
            "--synthetic-batches", steps, "--prof", steps, "-p", "2" if QUICK else "10", "--training-only",
            "--no-checkpoints", "--no-tensorboard", "--workspace", str(workspace)] + (["--compile"] if compile_ else [])


def steps() -> list[tuple[str, int, object]]:
    """(name, seconds it needs on an H200, command, a function of the results so far that returns one, or None for
    a CUDA-only step in the --quick dry run)."""
    def end_to_end(results: dict) -> list[str]:
        timed = results.get("data", {}).get("result", {}).get("backends", {})
        real = {name: figures for name, figures in timed.items() if name in ("pytorch", "gpu")}  # not the variants
        best = max(real, key=lambda name: real[name]["images_per_second"]) if real else "pytorch"
        return bench("--mode", "train", "--data", str(DATASET), "--data-backend", best, "-j", WORKERS, "-b", BATCH,
                     *TRAIN_STEPS)

    bf16_or_fp32 = "fp32" if QUICK else "amp-bf16"  # CPU bf16 convolutions take minutes at these sizes
    GRAPHS = [] if QUICK else ["--cuda-graphs"]  # CUDA only

    def cuda_only(command: list[str]) -> list[str] | None:  # None: skipped in the CPU dry run, with a line saying so
        return None if QUICK else command

    return [
        ("peer_baseline", 120, [sys.executable, str(PEER_SCRIPT), *PEER_ARGS]),
        ("train_eager", 40, bench("--mode", "train", "-b", BATCH, *TRAIN_STEPS, "--compare", "timm")),
        # The training step replayed from a CUDA graph, and its numbers against the eager step (tests/test_step.py;
        # on the CPU the CUDA tests are skipped, which still checks that the step starts).
        ("train_graphs", 40, cuda_only(bench("--mode", "train", "-b", BATCH, *TRAIN_STEPS, "--cuda-graphs"))),
        ("step_cuda_tests", 30, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_step.py",
                                 "-k", "cuda_graph"]),
        # The data backends' contract and pixels on the GPU (nvJPEG decode, device crops, broken files).
        ("data_contract", 90, [sys.executable, str(REPO / "scripts" / "data_device_check.py"), *DATA_CHECK,
                               "--out", str(OUT / "data_device.json")]),
        ("infer_b1_graph", 25, bench("--mode", "infer", "-b", "1", *B1_STEPS, *GRAPHS)),
        ("infer_b1_graph_fold", 25, bench("--mode", "infer", "-b", "1", *B1_STEPS, *GRAPHS, "--fold-bn")),
        ("infer_b256_eager", 30, bench("--mode", "infer", "-b", BATCH, *TRAIN_STEPS, "--compare", "timm")),
        # Both fast paths against the paths they replace (scaled vs full JPEG decode, batched vs per-sample GPU
        # crop/resize) and the plain torchvision pipeline, all timed in turns in one process.
        ("data", 90, bench("--data-only", str(DATASET), "--data-backend", "pytorch,pytorch-full,gpu,gpu-per-sample",
                           "--compare", "torchvision", "-j", WORKERS, "-b", "8" if QUICK else BATCH, *DATA_STEPS)),
        ("train_jpeg", 40, end_to_end),
        ("resnext_train", 30, train_command(compile_=False)),
        # --compile compiles the whole training step (forward, loss, backward, optimizer update).
        ("train_compile", 160, bench("--mode", "train", "-b", BATCH, *TRAIN_STEPS, "--compile")),
        # Inductor's caches from train_compile make this one's compilation short.
        ("train_compile_graphs", 90, cuda_only(bench("--mode", "train", "-b", BATCH, *TRAIN_STEPS, "--compile",
                                                     "--cuda-graphs"))),
        ("infer_b256_compile", 110, bench("--mode", "infer", "-b", BATCH, *TRAIN_STEPS, "--compile",
                                          "--compare", "timm")),
        ("infer_b1_compile_graph", 60, bench("--mode", "infer", "-b", "1", *B1_STEPS, "--compile", *GRAPHS)),
        ("numerics_bf16", 20, bench("--mode", "infer", "-b", BATCH, *TRAIN_STEPS, "--precision", bf16_or_fp32)),
        ("resnext_train_compile", 45, train_command(compile_=True)),
        ("infer_b256_fold", 25, bench("--mode", "infer", "-b", BATCH, *TRAIN_STEPS, "--fold-bn")),
    ]


# ---- running ----------------------------------------------------------------------------------------------

def start_folder_build() -> list[subprocess.Popen]:
    """Build the ImageNet-like JPEG folder in parallel processes while the first steps use the GPU."""
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    return [subprocess.Popen([*RESNEXT, "data", "make-imagenet-like", str(WORK / f"part{k}"), "--classes",
                              str(FOLDER["classes"]), "--per-class", str(FOLDER["per_class"]), "--val-per-class",
                              str(FOLDER["val_per_class"]), "--seed", str(k)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for k in range(FOLDER["parts"])]


def finish_folder_build(builders: list[subprocess.Popen]) -> None:
    """Wait for the parts, then merge them into one dataset (class folders renamed part by part)."""
    for k, builder in enumerate(builders):
        _, err = builder.communicate()
        if builder.returncode != 0:
            raise RuntimeError(f"building part {k} of the JPEG folder failed: {err.strip()}")
    for k in range(len(builders)):
        for split in ("train", "val"):
            (DATASET / split).mkdir(parents=True, exist_ok=True)
            for class_dir in sorted((WORK / f"part{k}" / split).iterdir()):
                class_dir.rename(DATASET / split / f"p{k}_{class_dir.name}")


def run_step(name: str, command: list[str], timeout: float, log) -> dict:
    began = time.time()
    log.write(f"\n===== {name}: {' '.join(command)}\n")
    log.flush()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        status, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        status, stdout, stderr = "timeout", _text(err.stdout), _text(err.stderr)
    log.write(stderr + stdout)
    log.flush()
    record = {"command": " ".join(command), "seconds": round(time.time() - began, 1), "status": status}
    try:
        record["result"] = json.loads(stdout)
    except json.JSONDecodeError:
        record["output_tail"] = (stderr + stdout)[-1500:]
    return record


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def log_throughput(workspace: Path, warmup_steps: int) -> float | None:
    """Median train.total_ips of `resnext train`'s log windows after the warm-up (as the benchmark reads it)."""
    import statistics

    from resnext.bench import _training_windows
    from resnext.report.log import read_log

    rates = _training_windows(read_log(workspace), warmup_steps)
    return statistics.median(rates) if rates else None


def check_peer_copy() -> str | None:
    """A warning when the committed copy of the peers' script differs from the original beside the checkout."""
    if not PEER_ORIGINAL.is_file():
        return None  # on the GPU machine only the repository travels
    body = PEER_SCRIPT.read_text().splitlines(keepends=True)[PEER_HEADER_LINES:]
    if "".join(body) != PEER_ORIGINAL.read_text():
        return f"warning: {PEER_SCRIPT} differs from {PEER_ORIGINAL}; refresh the copy (see its header)."
    return None


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(REPO / "src"))
    started = time.time()
    results: dict = {"env": environment(), "quick": QUICK, "budget_s": BUDGET_S}
    warning = check_peer_copy()
    if warning:
        print(warning, flush=True)
        results["env"]["peer_copy"] = warning
    builders = start_folder_build() if ONLY is None or ONLY & {"data", "train_jpeg"} else []
    folder_error = None
    with open(OUT / "gpu_check.log", "w") as log:
        for name, needs, command in steps():
            if ONLY is not None and name not in ONLY:
                continue
            if command is None:
                results[name] = {"status": "skipped", "reason": "CUDA only; the --quick dry run is on the CPU"}
                print(f"{name:<24} skipped (CUDA only; the --quick dry run is on the CPU)", flush=True)
                continue
            left = BUDGET_S - (time.time() - started)
            if left < needs:
                results[name] = {"status": "skipped", "reason": f"needs ~{needs} s, {left:.0f} s left"}
                print(f"{name:<24} skipped ({left:.0f} s left)", flush=True)
                continue
            if name in ("data", "train_jpeg"):
                if folder_error is None and not DATASET.exists():
                    try:
                        finish_folder_build(builders)
                    except (RuntimeError, OSError) as err:
                        folder_error = str(err)
                if folder_error is not None:
                    results[name] = {"status": "failed", "reason": folder_error}
                    print(f"{name:<24} failed: {folder_error}", flush=True)
                    continue
            command = command(results) if callable(command) else command
            results[name] = run_step(name, command, timeout=left, log=log)
            if name.startswith("resnext_train") and results[name]["status"] == 0:
                workspace = Path(command[command.index("--workspace") + 1])
                results[name]["result"] = {"img_s": log_throughput(workspace, 2 if QUICK else 20)}
            print(f"{name:<24} {results[name]['status']!s:>8}  {results[name]['seconds']:6.1f} s", flush=True)
            (OUT / "results.json").write_text(json.dumps(results, indent=1))
    for builder in builders:
        if builder.poll() is None:
            builder.kill()
    peer_file = OUT / "peer_baseline.json"
    peer = json.loads(peer_file.read_text()) if peer_file.is_file() else {}
    from summarize import summary_table

    table = summary_table(results, peer)
    (OUT / "summary.md").write_text(table + "\n")
    print(f"\ntotal {time.time() - started:.0f} s; files in {OUT}\n")
    print(table)
    return 0


def environment() -> dict:
    import torch

    import importlib.util

    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
           "cpus": os.cpu_count(),
           # Without simplejpeg the pytorch backend's scaled decode falls back to the full one (same figures).
           "simplejpeg": importlib.util.find_spec("simplejpeg") is not None}
    if torch.cuda.is_available():
        env.update(device=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(), cuda=torch.version.cuda)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True)
        env["nvidia_smi"] = smi.stdout.strip()
    else:
        env["device"] = "cpu (dry run)"
    return env


if __name__ == "__main__":
    sys.exit(main())
