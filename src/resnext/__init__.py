"""resnext: ResNeXt101-32x4d and its ResNet/ResNeXt family, trained with NVIDIA's recipe.

The public API (stable):
    list_models()                                   names of the architectures
    create_model(arch, num_classes=1000, **options) a freshly initialised nn.Module
    load_weights(model, source, strict=True)        load any public checkpoint layout, safely
    load_model(source, arch=None, num_classes=None) build the model a weights file holds, with its metadata
    model_summary(arch_or_model, image_size=224)    parameters, GMACs, activations per stage
    read_log(run_dir_or_log) -> RunLog              a training log as one timeline (resumes, partial logs)
    write_report(run_dirs, output=None) -> Path     HTML page + PNG figures of one run or several overlaid
    predict(paths, weights, topk=5) -> [Prediction] top-k class names of image files, folders, glob patterns
    Predictor, Preprocessing                        a loaded model with its names; the eval preprocessing
    evaluate_weights(data, weights) -> dict         top-1/top-5/loss, img/s, latency percentiles, per class
    export_model(weights, format, output)           verified ONNX / TorchScript / ExportedProgram / safetensors
                                                    / Triton repository (resnext.serve.serve: a live server)

The names are imported on first use (PEP 562), so `import resnext` and the `resnext` command's argument parsing
do not pay for importing torch and torchvision.
"""
from __future__ import annotations

import importlib

from .errors import UserError

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "create_model": "models", "list_models": "models", "load_weights": "weights", "load_model": "weights",
    "model_summary": "summary", "read_log": "report", "write_report": "report", "predict": "prediction",
    "Predictor": "prediction", "Preprocessing": "prediction", "evaluate_weights": "inference", "export_model": "export",
}

__all__ = ["UserError", "__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resnext' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
