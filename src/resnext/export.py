"""Exports for deployment: ONNX, TorchScript, ExportedProgram, safetensors, and a Triton model repository.

    export_model("model_best.pth.tar", "onnx", "rx101.onnx")            verified in onnxruntime, then written
    export_model("model_best.pth.tar", "triton", "models/", precision="fp16", max_batch_size=128)
    export_model("checkpoint.pth.tar", "safetensors", "rx101.safetensors", use_ema=True)   bare weights

Every graph export has one input `images` (float32, or float16 with precision="fp16"; NCHW; dynamic batch, fixed
image size) and one output `logits` (float32 or float16, [batch, classes]). Before anything is written, the export
is loaded back (onnxruntime for ONNX) and run on random batches of 1 and 5 images, and its logits are compared
with the PyTorch model's; a mismatch writes nothing. Files are written atomically.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .deployment import EXPORT_FORMATS, REPOSITORY_MAX_BATCH, REPOSITORY_QUEUE_DELAY_US
from .errors import UserError
from .paths import atomic_write

EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2", "safetensors": ".safetensors",
              "nvidia": ".pth.tar"}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
VERIFY_BATCHES = (1, 5)
# Allowed difference between an export's logits and the fp32 PyTorch model's: atol + rtol * max |logit|.
TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 2e-2)}
TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a model name Triton accepts, and a safe folder name


class ExportMismatch(UserError):
    """The exported model does not reproduce the PyTorch model's logits; nothing was written."""

    exit_code = 3


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the file written, or the Triton model folder
    format: str
    precision: str
    max_abs_diff: float  # largest |export - PyTorch| over the verification batches
    tolerance: float


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every BatchNorm folded into the convolution registered just before it.

    In the resnext family every BatchNorm directly follows its convolution (conv1/bn1, convN/bnN, downsample.0/1),
    so the folded copy computes the same function with a bias per convolution and one fewer pass over memory per
    BatchNorm. Only for inference: the statistics are frozen into the weights.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        previous_name, previous = None, None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                if not (isinstance(previous, nn.Conv2d) and previous.out_channels == child.num_features):
                    raise ValueError(f"BatchNorm '{name}' does not follow a convolution of {child.num_features} "
                                     "channels; fold_batchnorm handles models where each BatchNorm comes right after "
                                     "its convolution.")
                setattr(parent, previous_name, fuse_conv_bn_eval(previous, child))
                setattr(parent, name, nn.Identity())
            previous_name, previous = name, child
    return folded


def export_model(weights, format: str, output: str | Path | None = None, *, use_ema: bool = False,
                 arch: str | None = None, precision: str = "fp32", fold_bn: bool = False,
                 image_size: int | None = None, max_batch_size: int = REPOSITORY_MAX_BATCH,
                 model_name: str = "resnext", queue_delay_us: int = REPOSITORY_QUEUE_DELAY_US,
                 module_prefix: bool = True, class_names=None) -> ExportResult:
    """Export the model in `weights` (any layout resnext.load_model reads) and verify it before writing.

    format: onnx | torchscript | exported-program | safetensors | triton.
    output: the file to write (default: the weights' name with the format's extension, in the current folder);
        for triton the model repository folder (required), which gets MODEL_NAME/config.pbtxt,
        MODEL_NAME/1/model.onnx and MODEL_NAME/labels.txt.
    precision: fp32 or fp16 (weights, input and output in half precision).
    fold_bn: fold BatchNorm into the convolutions (graph formats; safetensors keeps the trainable layout).
    image_size: the exported input's height and width (default: the weights' training size, else 224).
    max_batch_size, queue_delay_us, model_name: the Triton configuration (dynamic batching).
    nvidia: a training checkpoint of ours as NVIDIA's main.py --resume loads it (model, optimizer, EMA, epoch,
        best top-1); module_prefix=False for a single-GPU NVIDIA run (its DDP runs expect "module." keys).
    class_names: a labels file, dataset folder or list naming the classes of weights that carry no names (or
        checked against those they carry, by name); they go into labels.txt and the safetensors header.
    """
    from .prediction import Preprocessing, class_names_for
    from .weights import load_model

    format = _check_format(format)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose {' or '.join(PRECISIONS)}.")
    if fold_bn and format == "safetensors":
        raise UserError("--fold-bn changes the layer layout, which safetensors weights must keep to load into the "
                        "model; drop --fold-bn (fold when exporting onnx, torchscript, exported-program or triton).")
    if max_batch_size < 1:
        raise UserError(f"max batch size must be >= 1, got {max_batch_size}.")
    if format == "triton":
        if output is None:
            raise UserError("--format triton needs --output: the model repository folder to write into.")
        if not TRITON_NAME.match(model_name):
            raise UserError(f"model name '{model_name}' may only hold letters, digits, '_', '.' and '-' (and not "
                            "start with '.' or '-'); Triton names the model folder after it.")
    destination = Path(output) if output is not None else _default_output(weights, format)
    _check_output(destination, folder=format == "triton")
    if format == "nvidia":
        return _export_nvidia(weights, destination, module_prefix)
    if format in ("onnx", "triton"):
        _require_onnx_tools()  # before the export work, which takes a while for the large models

    model, meta = load_model(weights, arch=arch, use_ema=use_ema)
    preprocessing = Preprocessing.for_weights(meta, image_size)
    size = preprocessing.image_size
    class_names = class_names_for(meta.num_classes, meta.class_names, class_names)
    checks = _verification_batches(size, precision)
    reference = model.float().eval()
    with torch.inference_mode():
        expected = [reference(images.float()) for images in checks]
    exported = (fold_batchnorm(reference) if fold_bn else reference).to(PRECISIONS[precision])

    if format == "safetensors":
        payload = _safetensors_bytes(exported, meta, class_names, preprocessing)
        outputs = _run_safetensors(payload, checks)
    elif format == "torchscript":
        payload, outputs = _torchscript(exported, checks)
    elif format == "exported-program":
        payload, outputs = _exported_program(exported, checks)
    else:
        payload = _onnx_bytes(exported, checks[0])
        outputs = _run_onnx(payload, checks)
    difference, tolerance = _compare(outputs, expected, precision, format)

    if format == "triton":
        folder = destination / model_name
        atomic_write(folder / "1" / "model.onnx", lambda handle: handle.write(payload))
        labels = "".join(_one_line(name) + "\n" for name in class_names)
        atomic_write(folder / "labels.txt", lambda handle: handle.write(labels.encode("utf-8")))
        config = triton_config(model_name, size, meta.num_classes, precision, max_batch_size, queue_delay_us)
        atomic_write(folder / "config.pbtxt", lambda handle: handle.write(config.encode("utf-8")))
        written = folder
    else:
        written = atomic_write(destination, lambda handle: handle.write(payload))
    return ExportResult(written, format, precision, difference, tolerance)


def triton_config(model_name: str, image_size: int, num_classes: int, precision: str = "fp32",
                  max_batch_size: int = REPOSITORY_MAX_BATCH, queue_delay_us: int = REPOSITORY_QUEUE_DELAY_US) -> str:
    """config.pbtxt of a Triton model served by the onnxruntime backend, with dynamic batching."""
    data_type = "TYPE_FP16" if precision == "fp16" else "TYPE_FP32"
    return f"""# Written by `resnext export --format triton`. For TensorRT, see docs/deployment.md.
name: "{model_name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: {data_type}
    format: FORMAT_NCHW
    dims: [ 3, {image_size}, {image_size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: {data_type}
    dims: [ {num_classes} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"""


# ---- formats ------------------------------------------------------------------------------------------------

def _dynamo_exporter() -> bool:
    """Whether torch has the torch.export-based ONNX exporter as used here (torch >= 2.5; the default from 2.9).

    torch 2.4 already takes `dynamo=True` but not `dynamic_shapes`, so both are looked for.
    """
    return {"dynamo", "dynamic_shapes", "external_data"} <= set(inspect.signature(torch.onnx.export).parameters)


def _require_onnx_tools() -> None:
    """onnx (both exporters), onnxscript (the torch.export-based one) and onnxruntime (the verification)."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if _dynamo_exporter() else [])
    missing = [name for name in needed if not _importable(name)]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)} (onnxruntime verifies the export): "
                        'pip install "resnext[export]".')


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def _onnx_bytes(model: nn.Module, example: Tensor) -> bytes:
    example = example.repeat(2, 1, 1, 1)  # a batch of 2: batch 1 would be taken for a constant
    if _dynamo_exporter():
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir"):  # their INFO notes on every pass
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
                                        verbose=False)
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()  # torch 2.4: the TorchScript-based exporter
    torch.onnx.export(model, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17)
    return buffer.getvalue()


def _run_onnx(payload: bytes, batches: list[Tensor]) -> list[Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]) for images in batches]


def _torchscript(model: nn.Module, batches: list[Tensor]) -> tuple[bytes, list[Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; users who pick this format know
        traced = torch.jit.trace(model, batches[-1], check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    with torch.inference_mode():
        return buffer.getvalue(), [loaded(images) for images in batches]


def _exported_program(model: nn.Module, batches: list[Tensor]) -> tuple[bytes, list[Tensor]]:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (batches[-1],), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    loaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
    with torch.inference_mode():
        return buffer.getvalue(), [loaded(images) for images in batches]


def _safetensors_bytes(model: nn.Module, meta, class_names: list[str], preprocessing) -> bytes:
    from safetensors.torch import save

    # Whether training turned images upright by EXIF travels on, so evaluate keeps doing what training did.
    trained = {key: value for key, value in (meta.preprocessing or {}).items() if key == "exif_orientation"}
    header = {"arch": meta.arch, "num_classes": meta.num_classes, "class_names": class_names,
              "preprocessing": {**preprocessing.to_dict(), **trained}}
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    return save(tensors, metadata={"resnext": json.dumps(header)})


def _run_safetensors(payload: bytes, batches: list[Tensor]) -> list[Tensor]:
    # Read back through the loader users will use (header included), into a fresh fp32 model.
    from safetensors.torch import load

    from .weights import load_model

    model, _ = load_model(load(payload))
    with torch.inference_mode():
        return [model(images.float()) for images in batches]


# ---- checks -------------------------------------------------------------------------------------------------

def _verification_batches(image_size: int, precision: str) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(size, 3, image_size, image_size, generator=generator).to(PRECISIONS[precision])
            for size in VERIFY_BATCHES]


def _compare(outputs: list[Tensor], expected: list[Tensor], precision: str, format: str) -> tuple[float, float]:
    atol, rtol = TOLERANCE[precision]
    difference, tolerance = 0.0, float("inf")
    for got, want in zip(outputs, expected):
        if tuple(got.shape) != tuple(want.shape):
            raise ExportMismatch(f"the {format} export returns logits of shape {list(got.shape)} for a batch of "
                                 f"{want.shape[0]}, expected {list(want.shape)}; nothing was written.")
        difference = max(difference, float((got.float() - want).abs().max()))
        tolerance = min(tolerance, atol + rtol * float(want.abs().max()))
    if not difference <= tolerance:  # also catches NaN
        raise ExportMismatch(f"the {format} export's logits differ from PyTorch's by up to {difference:.3g} "
                             f"(allowed {tolerance:.3g} in {precision}); nothing was written. Try --precision fp32 "
                             "or another torch / onnxruntime version.")
    return difference, tolerance


def _export_nvidia(weights, destination: Path, module_prefix: bool) -> ExportResult:
    """Write our training checkpoint in NVIDIA's layout, then read it back and check that the weights survived."""
    from .checkpoint import read_checkpoint, read_resume_checkpoint, to_nvidia_checkpoint

    if not Path(str(weights)).is_file():
        raise UserError(f"--format nvidia converts a resnext training checkpoint; '{weights}' is not a file.")
    converted = to_nvidia_checkpoint(read_checkpoint(weights), module_prefix=module_prefix)
    atomic_write(destination, lambda handle: torch.save(converted, handle))
    original, back = read_checkpoint(weights)["model"], read_resume_checkpoint(destination)["model"]
    if original.keys() != back.keys() or not all(torch.equal(original[k], back[k]) for k in original):
        destination.unlink()
        raise ExportMismatch(f"the NVIDIA-layout file of '{weights}' does not read back to the same weights; "
                             "nothing was written.")
    return ExportResult(path=destination, format="nvidia", precision="fp32", max_abs_diff=0.0, tolerance=0.0)


def _check_format(format: str) -> str:
    if format in EXPORT_FORMATS:
        return format
    close = difflib.get_close_matches(str(format), EXPORT_FORMATS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(f"unknown export format '{format}'.{hint} Choose one of {', '.join(EXPORT_FORMATS)}.")


def _default_output(weights, format: str) -> Path:
    """WEIGHTS_NAME.EXT in the current folder: the weights' file name without its extensions, made safe."""
    name = Path(str(weights)).name.split(":")[-1]  # 'pretrained:timm-gluon' -> 'timm-gluon'
    for suffix in (".tar", ".pth", ".pt", ".safetensors", ".bin"):
        name = name.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".-") or "model"
    return Path(name + EXTENSIONS[format])


def _check_output(path: Path, folder: bool) -> None:
    """A UserError when the output cannot be written: a folder above it is a file, or it has the wrong kind."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write '{path}': '{parent}' is a file, not a folder; choose another --output.")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"--output '{path}' is a file; give the Triton model repository folder.")
    if not folder and path.is_dir():
        raise UserError(f"--output '{path}' is a folder; give the file to write.")


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _one_line(name: str) -> str:
    # labels.txt holds one class per line: a name with a line break would shift every later label.
    return " ".join(str(name).split()) or "_"
