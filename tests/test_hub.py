"""torch.hub.load works from a checkout: every architecture, pretrained from a named source, clear errors."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext import UserError, create_model
from resnext.models import ResNet, list_models
from resnext.weights import PRETRAINED, PretrainedSource, weights_cache

ROOT = Path(__file__).resolve().parents[1]


def test_every_architecture_is_an_entry_point():
    # What torch.hub.list() shows: the public callables of hubconf.
    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry_points = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entry_points) == sorted(list_models())
    assert hubconf.dependencies == ["torch", "torchvision"]


def test_resnext101_32x4d_from_a_checkout():
    model = torch.hub.load(str(ROOT), "resnext101_32x4d", source="local", pretrained=False)
    assert isinstance(model, ResNet) and model.arch == "resnext101_32x4d"
    assert sum(parameter.numel() for parameter in model.parameters()) == 44_177_704


def test_pretrained_from_a_named_source_fine_tunes_another_head(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_HOME", str(tmp_path))
    monkeypatch.setitem(PRETRAINED, "test-tiny", PretrainedSource(
        "test-tiny", "resnext_tiny", "https://example.invalid/tiny.pth", "tiny.pth", {}, licence="test", top1=None))
    trained = create_model("resnext_tiny").eval()
    weights_cache().mkdir(parents=True)
    torch.save(trained.state_dict(), weights_cache() / "tiny.pth")  # a cache hit: nothing is downloaded

    model = torch.hub.load(str(ROOT), "resnext_tiny", source="local", pretrained="test-tiny", num_classes=3).eval()
    assert model.fc.out_features == 3
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), trained.forward_features(images))


def test_pretrained_without_a_public_source_is_a_clear_error():
    with pytest.raises(UserError, match="no public pretrained weights are known for resnext_tiny"):
        torch.hub.load(str(ROOT), "resnext_tiny", source="local", pretrained=True)


def test_hubconf_imports_the_package_beside_it(tmp_path):
    # A checkout where resnext is not installed: hubconf must build from its own src/.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "src" / "resnext", checkout / "src" / "resnext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "hubconf.py", checkout)
    script = ("import sys, torch; "
              f"model = torch.hub.load({str(checkout)!r}, 'resnext_tiny', source='local'); "
              "print(type(model).__module__, sys.modules['resnext.models'].__file__)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["resnext.models", str(checkout / "src" / "resnext" / "models.py")]
