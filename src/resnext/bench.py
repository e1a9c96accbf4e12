"""Benchmarks: how fast our training loop, inference and data loaders run, and how that compares with the peers.

    benchmark_training(arch, ...)   img/s of `resnext.training.train` itself (median of its logged windows)
    benchmark_inference(arch, ...)  img/s and latency of the forward pass (eager, torch.compile, CUDA graph)
    benchmark_data(root, backends)  img/s each data backend delivers, timed in turns (with the torchvision pipeline)
    matmul_peak(device, precision)  the matrix-multiply rate measured here: the denominator of MFU

Every figure is the median of timed windows after a warm-up, with the device synchronized at each window's end.
`compare="timm"` or `"torchvision"` also times that library's build of the same architecture in the same process,
on the same synthetic input, with the same batch, precision and memory format, using the minimal loops of the
peers' baseline script (benchmarks/peer_baseline.py), and reports ours / theirs.

Random weights, made to behave like trained ones before inference is timed and checked (trained_like): the BN
statistics are calibrated (a few training-mode passes; uncalibrated, ResNeXt101's last stage reaches 1e7, past
fp16's range) and the last BN scale of every residual branch is set to RESIDUAL_SCALE. With the initial scale of
1, a random ResNet amplifies rounding errors chaotically (its fp32 logits differ from fp64 a hundred times more
than one layer's output does), so the fp16/bf16 error would measure the weights, not the arithmetic;
docs/performance.md has the numbers.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast, compute_dtype, synchronize
from .errors import UserError

PEER_LIBRARIES = ("timm", "torchvision")
# A training step costs about three forward passes (forward, and the two halves of backward).
TRAIN_FLOPS_PER_FORWARD = 3
CALIBRATION_BATCH = 16  # images whose statistics the BN layers of a random-weight model are calibrated on
RESIDUAL_SCALE = 0.2  # last-BN scale of each residual branch of a random-weight model (see the module docstring)

# The same network in the peers' libraries. torchvision: (blocks, groups, width_per_group) for its ResNet class.
TIMM_NAMES = {"resnet50": "resnet50", "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x4d": "resnext101_32x4d",
              "resnext101_32x8d": "resnext101_32x8d", "resnext101_64x4d": "resnext101_64x4d",
              "se_resnext101_32x4d": "seresnext101_32x4d"}
TORCHVISION_SPECS = {"resnet50": ([3, 4, 6, 3], 1, 64), "resnext50_32x4d": ([3, 4, 6, 3], 32, 4),
                     "resnext101_32x4d": ([3, 4, 23, 3], 32, 4), "resnext101_32x8d": ([3, 4, 23, 3], 32, 8),
                     "resnext101_64x4d": ([3, 4, 23, 3], 64, 4)}


# ---- measuring ----------------------------------------------------------------------------------------------

def time_calls(fn: Callable[[], object], *, images_per_call: int, device: torch.device, warmup: int, steps: int,
               window: int) -> dict:
    """Call `fn` `warmup` times, then `steps` times in windows of `window` calls; img/s per window and median.

    The device is synchronized before each window starts and when it ends, so a window's time is the time its
    calls took on the device, launch gaps included.
    """
    for _ in range(warmup):
        fn()
    rates = []
    for start in range(0, steps, window):
        calls = min(window, steps - start)
        synchronize(device)
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        rates.append(calls * images_per_call / (time.perf_counter() - began))
    return _rates_summary(rates, images_per_call)


def _rates_summary(rates: list[float], batch_size: int) -> dict:
    median = statistics.median(rates)
    return {"img_s": median, "step_ms": 1000.0 * batch_size / median, "window_img_s": rates,
            "spread": (max(rates) - min(rates)) / median if len(rates) > 1 else 0.0}


def matmul_peak(device: torch.device, precision: str) -> dict:
    """TFLOP/s of a square matrix product in the arithmetic `precision` uses, measured on `device` now.

    CUDA: 8192^3 in fp16 (amp), bf16 (amp-bf16), tf32 or strict fp32, random inputs, 3 warm-up and 10 timed
    products. CPU: a 1024^3 fp32 product. This is the ceiling MFU is measured against, not a datasheet figure.
    """
    dtype = compute_dtype(precision) if device.type == "cuda" else torch.float32
    size, repeats = (8192, 10) if device.type == "cuda" else (1024, 5)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        timing = time_calls(lambda: a @ b, images_per_call=1, device=device, warmup=3, steps=repeats,
                            window=repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    label = {"amp": "fp16", "amp-bf16": "bf16"}.get(precision, precision) if device.type == "cuda" else "fp32"
    return {"tflops": 2 * size**3 * timing["img_s"] / 1e12, "dtype": label, "size": size}


def device_facts(device: torch.device) -> dict:
    facts = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        facts.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version())
    else:
        import platform

        facts.update(device_name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return facts


def _reset_peak_memory(device: torch.device) -> int:
    """Start a peak-memory measurement; returns the bytes still allocated, which the measurement leaves out."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_memory_gb(device: torch.device, already_allocated: int) -> float | None:
    """Peak device memory (GB) allocated since _reset_peak_memory returned `already_allocated`; None on CPU."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - already_allocated) / 1e9


def _add_utilization(result: dict, forward_gflops: float, passes: int, peak: dict) -> dict:
    per_image = forward_gflops * passes
    achieved = per_image * result["img_s"] / 1e3
    result.update(gflops_per_image=per_image, achieved_tflops=achieved, matmul_peak=peak,
                  mfu=achieved / peak["tflops"])
    return result


def forward_gflops(arch: str, image_size: int, num_classes: int) -> float:
    """Model FLOPs of one image's forward pass (torch.utils.flop_counter's count, as `resnext info` prints)."""
    from .summary import model_summary

    return model_summary(arch, image_size=image_size, num_classes=num_classes)["gflops"]


# ---- the peers --------------------------------------------------------------------------------------------

def peer_model(library: str, arch: str, num_classes: int) -> nn.Module:
    """`arch` as built by timm or torchvision (freshly initialised); UserError when that library lacks it."""
    from .models import resolve_arch

    name = resolve_arch(arch)
    if library not in PEER_LIBRARIES:
        raise UserError(f"--compare must be one of {', '.join(PEER_LIBRARIES)}, got '{library}'.")
    if library == "timm":
        if importlib.util.find_spec("timm") is None:
            raise UserError("--compare timm needs timm; install it with `pip install 'resnext[compare]'`.")
        if name not in TIMM_NAMES:
            raise UserError(f"timm has no {name}; compare one of {', '.join(TIMM_NAMES)}.")
        import timm

        return timm.create_model(TIMM_NAMES[name], num_classes=num_classes)
    if name not in TORCHVISION_SPECS:
        raise UserError(f"torchvision has no {name}; compare one of {', '.join(TORCHVISION_SPECS)}.")
    from torchvision.models.resnet import Bottleneck, ResNet

    blocks, groups, width = TORCHVISION_SPECS[name]
    return ResNet(Bottleneck, blocks, groups=groups, width_per_group=width, num_classes=num_classes)


def _synthetic_batch(batch_size: int, image_size: int, num_classes: int, device: torch.device,
                     memory_format: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the synthetic backend feeds our training loop (same seed), so peers see the same input."""
    from .data import create_loader

    loader = create_loader("synthetic", batch_size=batch_size, image_size=image_size, num_classes=num_classes,
                           device=device, memory_format=memory_format, synthetic_batches_per_epoch=1)
    return next(iter(loader))


def time_peer_training(library: str, arch: str, *, batch_size: int, image_size: int, num_classes: int,
                       precision: str, memory_format: torch.memory_format, compile: bool, device: torch.device,
                       warmup: int, steps: int, window: int) -> dict:
    """The peer's training step, as the baseline script runs it: autocast, GradScaler for fp16, SGD 0.875."""
    torch.manual_seed(0)
    allocated = _reset_peak_memory(device)  # before the model, as ours is measured from before the loop builds it
    model = peer_model(library, arch, num_classes).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.256, momentum=0.875, weight_decay=6.1e-5)
    fp16 = compute_dtype(precision) == torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=fp16 and device.type == "cuda")
    forward = torch.compile(model) if compile else model
    images, labels = _synthetic_batch(batch_size, image_size, num_classes, device, memory_format)

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(forward(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    result = time_calls(step, images_per_call=batch_size, device=device, warmup=warmup, steps=steps, window=window)
    result["peak_memory_gb"] = _peak_memory_gb(device, allocated)
    return result


# ---- training -------------------------------------------------------------------------------------------

def _training_windows(log, warmup_steps: int) -> list[float]:
    """train.total_ips of the logged windows that start after `warmup_steps` optimizer steps."""
    from .report.log import number

    per_epoch = log.iterations_per_epoch or 0
    rates, window_start = [], 0
    for (epoch, step), data in log.iterations.items():
        window_end = epoch * per_epoch + step
        rate = number(data.get("train.total_ips"))
        if window_start >= warmup_steps and rate is not None and math.isfinite(rate):
            rates.append(rate)
        window_start = window_end
    return rates


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def benchmark_training(arch: str = "resnext101_32x4d", *, batch_size: int = 256, image_size: int = 224,
                       num_classes: int | None = None, precision: str | None = None, memory_format: str | None = None,
                       compile: bool = False, cuda_graphs: bool = False, device: str | None = None,
                       data: str | None = None, data_backend: str = "synthetic", workers: int = 5, warmup: int = 20,
                       steps: int = 50, window: int = 10, compare: str | None = None) -> dict:
    """img/s of our real training loop: `resnext.training.train` with `--prof`, read back from its DLLogger log.

    The loop runs warmup + steps optimizer steps (each rounded up to whole windows of `window` steps), logging
    every `window` steps; the windows after the warm-up give the median img/s (train.total_ips, data waits
    included). `data` (a folder with train/ and val/) and `data_backend` time it end to end on real files (whole
    epochs when the steps outnumber one epoch's); without `data` the synthetic backend feeds one device-resident
    batch. `compile` and `cuda_graphs` are training's --compile (the whole step compiled) and --cuda-graphs (the
    step replayed from a CUDA graph), see resnext.step. num_classes defaults to 1000 on synthetic data and to the
    folder's class count. Peak device memory is the process's max_memory_allocated; MFU is model FLOPs (3 x
    forward per image) over the matrix-multiply peak measured in the same process. `compare` (synthetic data
    only) adds the peer's figures, timed by time_peer_training, and ours / theirs.
    """
    from .device import resolve_device, resolve_memory_format, resolve_precision
    from .training import train
    from .recipe import TrainConfig
    from .report.log import read_log

    _check_counts(batch_size=batch_size, image_size=image_size, num_classes=num_classes or 1, steps=steps,
                  window=window)
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}.")
    if compare is not None and data is not None:
        raise UserError("--compare times the peer on synthetic data; drop --data (or --compare) to compare.")
    torch_device = resolve_device(device)
    if compare is not None:
        peer_model(compare, arch, num_classes or 1000)  # refuse an impossible comparison before the long part
    warmup_steps, timed_steps = _round_up(warmup, window), _round_up(steps, window)
    total = warmup_steps + timed_steps
    config = dict(arch=arch, batch_size=batch_size, image_size=image_size, num_classes=num_classes,
                  precision=precision or "auto", memory_format=memory_format or "auto", compile=compile,
                  cuda_graphs=cuda_graphs, device=str(torch_device), data_backend=data_backend, workers=workers,
                  print_freq=window, training_only=True, save_checkpoints=False, tensorboard=False, progress=False)
    if data is None:
        if data_backend != "synthetic":
            raise UserError(f"--data-backend {data_backend} reads files; give the dataset folder with --data DIR.")
        num_classes = num_classes or 1000
        config.update(synthetic_batches=total, epochs=1, prof=total)
    else:
        if data_backend == "synthetic":
            raise UserError("--data DIR needs a file backend: --data-backend pytorch, gpu, dali-cpu or dali-gpu.")
        per_epoch, dataset_classes = _dataset_geometry(data, batch_size)
        num_classes = num_classes or dataset_classes  # training checks that a given count matches the folder
        epochs = -(-total // per_epoch)
        # --prof N trains only the first N batches of each epoch; past one epoch, whole epochs run (more windows).
        timed_steps = timed_steps if epochs == 1 else epochs * per_epoch - warmup_steps
        config.update(data=str(data), epochs=epochs, prof=total if epochs == 1 else -1)
    with tempfile.TemporaryDirectory(prefix="resnext-benchmark-") as workspace:
        train_config = TrainConfig(workspace=workspace, **config)
        allocated = _reset_peak_memory(torch_device)
        # The loop's progress lines go to stderr, so stdout holds only the result (and --json stays parseable).
        with contextlib.redirect_stdout(sys.stderr):
            train(train_config)
        peak_memory = _peak_memory_gb(torch_device, allocated)
        rates = _training_windows(read_log(Path(workspace)), warmup_steps)
    if not rates:
        raise UserError("the training log holds no timed window; raise --steps.")
    resolved_precision = resolve_precision(precision, torch_device)
    chosen_format = resolve_memory_format(memory_format, torch_device)
    result = {"mode": "train", "arch": arch, "batch_size": batch_size, "image_size": image_size,
              "precision": resolved_precision, "memory_format": _format_name(chosen_format), "compile": compile,
              "cuda_graphs": cuda_graphs, "data_backend": data_backend, "data": data, "warmup_steps": warmup_steps,
              "timed_steps": timed_steps, "window": window, **_rates_summary(rates, batch_size),
              "peak_memory_gb": peak_memory, **device_facts(torch_device)}
    peak = matmul_peak(torch_device, resolved_precision)
    gflops = forward_gflops(arch, image_size, num_classes)
    _add_utilization(result, gflops, TRAIN_FLOPS_PER_FORWARD, peak)
    if compare is not None:
        peer = time_peer_training(compare, arch, batch_size=batch_size, image_size=image_size,
                                  num_classes=num_classes, precision=resolved_precision, memory_format=chosen_format,
                                  compile=compile, device=torch_device, warmup=warmup_steps, steps=timed_steps,
                                  window=window)
        result["compare"] = _comparison(compare, result, _add_utilization(peer, gflops, TRAIN_FLOPS_PER_FORWARD,
                                                                          peak))
    return result


def _dataset_geometry(data: str, batch_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, classes) of a dataset folder's training split."""
    from .data.folder import ImageFolder, find_dataset

    train_dir, _, class_names = find_dataset(data)
    steps = len(ImageFolder(train_dir, class_names)) // batch_size
    if steps < 1:
        raise UserError(f"'{train_dir}' holds fewer images than one batch of {batch_size}; lower --batch-size.")
    return steps, len(class_names)


def _comparison(library: str, ours: dict, peer: dict) -> dict:
    return {"library": library, **peer, "ratio": ours["img_s"] / peer["img_s"]}


def _format_name(memory_format: torch.memory_format) -> str:
    return "nhwc" if memory_format == torch.channels_last else "nchw"


def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


# ---- inference ------------------------------------------------------------------------------------------

@torch.no_grad()
def trained_like(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """Scale each residual branch's last BN to RESIDUAL_SCALE, then calibrate the BN statistics on `calibration`.

    Works on our models and the peers' alike: their bottlenecks all name the last BN of the branch `bn3`.
    """
    for module in model.modules():
        last_norm = getattr(module, "bn3", None)
        if isinstance(last_norm, nn.BatchNorm2d):
            last_norm.weight.fill_(RESIDUAL_SCALE)
    calibrate_batchnorm(model, calibration)
    return model.eval()


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, passes: int = 2) -> None:
    """Set every BatchNorm's running statistics to the average over `passes` training-mode forwards of `images`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for _ in range(passes):
        model(images)
    model.train(was_training)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def inference_call(model: nn.Module, images: torch.Tensor, *, compile: bool, cuda_graphs: bool,
                   memory_format: torch.memory_format = torch.contiguous_format,
                   autocast_dtype: torch.dtype | None = None) -> Callable[[], torch.Tensor]:
    """A zero-argument call that runs `model(images)` for inference, prepared as `resnext evaluate` prepares it.

    resnext.inference.prepare_model does the work: torch.compile (inductor; with cuda_graphs its
    "reduce-overhead" mode, which records CUDA graphs), or cuda_graphs alone: the eager forward recorded once
    per input shape and replayed, the input copied in and the output copied out as a server needs.
    autocast_dtype: run under autocast (how the peers' script runs eager and compiled inference); None when the
    model and input already have the dtype to compute in.
    """
    from .inference import prepare_model

    prepared = prepare_model(model, images.device, memory_format=memory_format, compile=compile,
                             cuda_graphs=cuda_graphs)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(images.device.type, dtype=autocast_dtype or torch.float32,
                                                    enabled=autocast_dtype is not None):
            return prepared(images)

    return forward


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """||output - reference|| / ||reference||, in float64; inf when the output is not finite."""
    output, reference = output.double(), reference.double()
    if not torch.isfinite(output).all():
        return math.inf
    return float(torch.linalg.vector_norm(output - reference) / torch.linalg.vector_norm(reference))


def time_inference(model: nn.Module, images: torch.Tensor, *, compile: bool = False, cuda_graphs: bool = False,
                   memory_format: torch.memory_format = torch.contiguous_format,
                   autocast_dtype: torch.dtype | None = None, reference: torch.Tensor | None = None, warmup: int = 20,
                   steps: int = 50, window: int = 10) -> dict:
    """img/s and per-batch latency of `model(images)`: an eval-mode model on the images' device, in `memory_format`.

    The median over windows after `warmup` calls (which include compilation and graph capture). With
    `reference` (fp32 logits of the same images), `logits_rel_err` is the relative error of this variant's
    logits against it.
    """
    call = inference_call(model, images, compile=compile, cuda_graphs=cuda_graphs, memory_format=memory_format,
                          autocast_dtype=autocast_dtype)
    result = time_calls(call, images_per_call=len(images), device=images.device, warmup=warmup, steps=steps,
                        window=window)
    result["latency_ms"] = result["step_ms"]
    if reference is not None:
        result["logits_rel_err"] = relative_error(call().float(), reference)
    return result


def benchmark_inference(arch: str = "resnext101_32x4d", *, batch_size: int = 256, image_size: int = 224,
                        num_classes: int | None = None, precision: str | None = None, memory_format: str | None = None,
                        compile: bool = False, cuda_graphs: bool = False, fold_bn: bool = False,
                        device: str | None = None, warmup: int = 20, steps: int = 50, window: int = 10,
                        compare: str | None = None) -> dict:
    """Forward-pass img/s and latency of `arch` at `batch_size`, and its logits' error against fp32.

    The model runs in the precision's dtype (amp: fp16 weights and inputs, amp-bf16: bf16; tf32/fp32: fp32),
    as an exported or served model does, in the memory format chosen (default nhwc on CUDA). Before timing,
    the random weights are made trained_like and fp32 reference logits are taken with TF32 off;
    `logits_rel_err` is this configuration's relative error against them. fold_bn folds every BatchNorm into its
    convolution first (resnext.export.fold_batchnorm, as export --fold-bn does). `compare` times the peer's model
    the way the peers' script does (autocast for eager and compiled runs; fp16 weights for CUDA graphs).
    """
    from .device import configure_backends, resolve_device, resolve_memory_format, resolve_precision
    from .models import create_model

    num_classes = num_classes or 1000
    _check_counts(batch_size=batch_size, image_size=image_size, num_classes=num_classes, steps=steps,
                  window=window)
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}.")
    torch_device = resolve_device(device)
    if cuda_graphs and torch_device.type != "cuda":
        raise UserError("--cuda-graphs needs a CUDA device.")
    if compare is not None:
        peer_model(compare, arch, num_classes)
    resolved_precision = resolve_precision(precision, torch_device)
    chosen_format = resolve_memory_format(memory_format, torch_device)
    dtype = compute_dtype(resolved_precision)
    torch.manual_seed(0)
    images = _synthetic_batch(batch_size, image_size, num_classes, torch_device, chosen_format)[0]
    calibration = _synthetic_batch(CALIBRATION_BATCH, image_size, num_classes, torch_device, chosen_format)[0]

    model = create_model(arch, num_classes).to(torch_device, memory_format=chosen_format)
    configure_backends("fp32", deterministic=False)
    trained_like(model, calibration)
    with torch.inference_mode():
        reference = model(images).float()
    if fold_bn:
        from .export import fold_batchnorm

        model = fold_batchnorm(model)
    configure_backends(resolved_precision, deterministic=False)
    model.to(dtype)
    allocated = _reset_peak_memory(torch_device)
    result = time_inference(model, images.to(dtype), compile=compile, cuda_graphs=cuda_graphs,
                            memory_format=chosen_format, reference=reference, warmup=warmup, steps=steps,
                            window=window)
    result["peak_memory_gb"] = _peak_memory_gb(torch_device, allocated)
    result = {"mode": "infer", "arch": arch, "batch_size": batch_size, "image_size": image_size,
              "precision": resolved_precision, "memory_format": _format_name(chosen_format), "compile": compile,
              "cuda_graphs": cuda_graphs, "fold_bn": fold_bn, "data_backend": "synthetic", "data": None,
              "warmup_steps": warmup,
              "timed_steps": steps, "window": window, **result, **device_facts(torch_device)}
    del model
    peak = matmul_peak(torch_device, resolved_precision)
    gflops = forward_gflops(arch, image_size, num_classes)
    _add_utilization(result, gflops, 1, peak)
    if compare is not None:
        peer = _time_peer_inference(compare, arch, images, calibration, num_classes=num_classes,
                                    precision=resolved_precision, memory_format=chosen_format, compile=compile,
                                    cuda_graphs=cuda_graphs, warmup=warmup, steps=steps, window=window)
        result["compare"] = _comparison(compare, result, _add_utilization(peer, gflops, 1, peak))
    return result


def _time_peer_inference(library: str, arch: str, images: torch.Tensor, calibration: torch.Tensor, *,
                         num_classes: int, precision: str, memory_format: torch.memory_format, compile: bool,
                         cuda_graphs: bool, warmup: int, steps: int, window: int) -> dict:
    """The peer's forward as the baseline script runs it, on the same images; its logits checked against ours.

    The peer has its own random weights, so its error is measured against its own fp32 logits.
    """
    from .device import configure_backends

    device, dtype = images.device, compute_dtype(precision)
    model = peer_model(library, arch, num_classes).to(device, memory_format=memory_format)
    configure_backends("fp32", deterministic=False)
    trained_like(model, calibration)
    with torch.inference_mode():
        peer_reference = model(images).float()
    configure_backends(precision, deterministic=False)
    mixed = dtype != torch.float32
    # The baseline casts the model for CUDA graphs and uses autocast otherwise.
    if cuda_graphs and not compile:
        model.to(dtype)
        inputs, autocast_dtype = images.to(dtype), None
    else:
        inputs, autocast_dtype = images, dtype if mixed else None
    allocated = _reset_peak_memory(device)
    result = time_inference(model, inputs, compile=compile, cuda_graphs=cuda_graphs, memory_format=memory_format,
                            autocast_dtype=autocast_dtype, reference=peer_reference, warmup=warmup, steps=steps,
                            window=window)
    result["peak_memory_gb"] = _peak_memory_gb(device, allocated)
    return result


# ---- data -----------------------------------------------------------------------------------------------

# Loader variants `--data-only` can also time: the plain paths the fast ones replace.
DATA_VARIANTS = {"pytorch-full": ("pytorch", {"jpeg_decode": "full"}),
                 "gpu-per-sample": ("gpu", {"gpu_batched": False})}
DATA_PEERS = ("torchvision",)


def benchmark_data(root: str, backends: tuple[str, ...] = ("pytorch",), *, batch_size: int = 256,
                   image_size: int = 224, workers: int = 5, train: bool = True, device: str | None = None,
                   warmup: int = 10, steps: int = 50, window: int = 10, compare: str | None = None) -> dict:
    """Images per second each backend delivers from `root` (resnext.data.bench.measure_alternately).

    Training batches (random crops, flips) by default; `train=False` times the eval preprocessing. backends:
    create_loader's backends, or a variant of DATA_VARIANTS (pytorch-full: JPEGs decoded at full size;
    gpu-per-sample: the gpu backend's per-sample crop/resize). All loaders, and with compare="torchvision" the
    plain torchvision pipeline (data.bench.TorchvisionLoader, same files, workers, batch size and device
    step), are timed in turns, a window of each per round, so they share the machine's conditions; each
    backend's `ratio` is its img/s over the peer's.
    """
    from .data import create_loader, resolve_device
    from .data.bench import TorchvisionLoader, measure_alternately

    _check_counts(batch_size=batch_size, image_size=image_size, steps=steps, window=window)
    if not backends:
        raise UserError("give at least one data backend.")
    if compare is not None and compare not in DATA_PEERS:
        raise UserError(f"--compare for the data loaders must be {' or '.join(DATA_PEERS)}, got '{compare}'.")
    if compare is not None and not train:
        raise UserError("--compare torchvision times the training pipeline; it needs training batches.")
    torch_device = resolve_device(device)
    memory_format = torch.channels_last if torch_device.type == "cuda" else torch.contiguous_format
    loaders = {}
    for name in backends:
        backend, options = DATA_VARIANTS.get(name, (name, {}))
        loaders[name] = create_loader(backend, root, train=train, batch_size=batch_size, image_size=image_size,
                                      workers=workers, device=torch_device, memory_format=memory_format, **options)
    if compare is not None:
        loaders[compare] = TorchvisionLoader(root, batch_size=batch_size, image_size=image_size, workers=workers,
                                             device=torch_device, memory_format=memory_format)
    measured = measure_alternately(loaders, warmup_batches=warmup, timed_batches=steps, window=window,
                                   drain_batches=2 * workers)  # 2: the loaders' prefetch per worker
    results = {name: measured[name] for name in backends}
    if compare is not None:
        peer = measured[compare]
        for figures in results.values():
            figures["ratio"] = figures["images_per_second"] / peer["images_per_second"]
            figures["window_ratios"] = [ours / theirs for ours, theirs in zip(figures["window_images_per_second"],
                                                                            peer["window_images_per_second"])]
    del loaders
    best = max(results, key=lambda name: results[name]["images_per_second"])
    result = {"mode": "data", "data": str(root), "batch_size": batch_size, "image_size": image_size,
              "workers": workers, "train": train, "backends": results, "best": best, **device_facts(torch_device)}
    if compare is not None:
        result["compare"] = {"library": compare, **measured[compare]}
    return result


# ---- text output ----------------------------------------------------------------------------------------

def _memory_text(value: float | None) -> str:
    return f"{value:.2f} GB" if value is not None else "n/a (CPU)"


def format_result(result: dict) -> str:
    """The human-readable report `resnext benchmark` prints."""
    if result["mode"] == "data":
        lines = [f"data loaders on {result['device_name']} ({result['device']}), batch {result['batch_size']}, "
                 f"{result['image_size']} px, {result['workers']} workers, "
                 f"{'training' if result['train'] else 'eval'} preprocessing, {result['data']}"]
        peer = result.get("compare")
        for name, measured in [*result["backends"].items(), *([(peer["library"], peer)] if peer else [])]:
            ratio = measured.get("ratio")
            lines.append(f"  {name:<14} {measured['images_per_second']:>10,.0f} img/s   "
                         f"batch {measured['batch_time_ms']['median']:.1f} ms (median), "
                         f"{measured['batch_time_ms']['max']:.1f} ms (max)"
                         + (f"   {name} / {peer['library']} = {ratio:.2f}x (windows "
                            f"{min(measured['window_ratios']):.2f}-{max(measured['window_ratios']):.2f})"
                            if ratio is not None else ""))
        lines.append(f"  fastest: {result['best']}" + ("   (timed in turns, a window of each per round)"
                                                        if len(result["backends"]) > 1 or peer else ""))
        return "\n".join(lines)
    options = (("compile", result["compile"]), ("cuda-graphs", result["cuda_graphs"]),
               ("fold-bn", result.get("fold_bn")))
    variant = "+".join(name for name, on in options if on) or "eager"
    source = f"{result['data_backend']} data" + (f" from {result['data']}" if result["data"] else "")
    peak = result["matmul_peak"]
    lines = [
        f"{result['arch']} {result['mode']}, batch {result['batch_size']}, {result['image_size']} px, "
        f"{result['precision']}, {result['memory_format']}, {variant}, {source}",
        f"on {result['device_name']} ({result['device']}), torch {result['torch']}"
        + (f", cuDNN {result['cudnn']}" if result.get("cudnn") else ""),
        f"  throughput   {result['img_s']:>10,.1f} img/s  (median of {len(result['window_img_s'])} windows of "
        f"{result['window']} steps after {result['warmup_steps']} warm-up steps; spread {100 * result['spread']:.1f}%)",
        f"  step time    {result['step_ms']:>10.2f} ms",
        f"  peak memory  {_memory_text(result['peak_memory_gb']):>13}",
        f"  MFU          {100 * result['mfu']:>10.1f} %   ({result['gflops_per_image']:.2f} GFLOP/img -> "
        f"{result['achieved_tflops']:.2f} TFLOP/s of {peak['tflops']:.2f} measured {peak['dtype']} matmul)",
    ]
    if "logits_rel_err" in result:
        lines.append(f"  logits error {result['logits_rel_err']:>10.2e}   (relative, against fp32 eager)")
    if "compare" in result:
        peer = result["compare"]
        lines.append(f"  {peer['library']:<12} {peer['img_s']:>10,.1f} img/s, {peer['step_ms']:.2f} ms/step, "
                     f"peak {_memory_text(peer['peak_memory_gb'])}, MFU {100 * peer['mfu']:.1f} %  ->  "
                     f"resnext / {peer['library']} = {peer['ratio']:.2f}x")
    return "\n".join(lines)
