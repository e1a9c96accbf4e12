"""The one way tests that need an optional dependency say so: a mark that skips them, with the reason and the install
command, where the dependency is not installed (DALI and PyTriton, for instance, install on x86_64 only)."""
from __future__ import annotations

import importlib.util

import pytest
import torch


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package ("nvidia" for nvidia.dali)
        return False


def needs(extra: str, *modules: str) -> pytest.MarkDecorator:
    """Skip unless every module is importable; the reason names the missing ones and resnext's extra for them."""
    missing = [module for module in modules if not installed(module)]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: pip install 'resnext[{extra}]'")


needs_dali = needs("dali", "nvidia.dali")
needs_onnx = needs("export", "onnx", "onnxruntime", "onnxscript")
needs_triton_client = needs("serve", "tritonclient")
needs_pytriton = needs("serve", "pytriton", "tritonclient")
needs_timm = needs("compare", "timm")
needs_matplotlib = needs("report", "matplotlib")
needs_tensorboard = needs("tensorboard", "tensorboard")
needs_skimage = needs("bench", "skimage")
needs_yaml = needs("nvidia", "yaml")

# Not a package: a device. Tests of CUDA-only paths (CUDA graphs) run wherever one is visible.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these tests on one)")
