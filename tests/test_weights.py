"""Every weights layout loads into our models with identical outputs; bad files fail with one clear sentence.

The NVIDIA layouts are built by renaming a real state_dict the way NVIDIA's DeepLearningExamples code names
its modules (ConvNets/image_classification/models/resnet.py and common.py, see docs/weights.md): stages in
`layers.{0..3}` (current code) or `layer{1..4}` (the NGC 20.06.0 file), SE blocks as `squeeze.squeeze` /
`squeeze.expand` Linear layers, training checkpoints {"epoch", "best_prec1", "state_dict", "optimizer",
"state_dict_ema"} with the `module.` prefix of DistributedDataParallel.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import socket
import zipfile
from dataclasses import replace

import pytest
import torch
from optional import needs_timm
from safetensors.torch import save_file
from torch import nn

from resnext import UserError, create_model, load_model, load_weights
from resnext import weights as weights_module
from resnext.checkpoint import save_checkpoint
from resnext.models import ARCHS, ResNet
from resnext.weights import (PRETRAINED, PretrainedSource, get_source, infer_arch, infer_num_classes,
                             read_state_dict, resolve_weights)

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def randomized(model: nn.Module) -> nn.Module:
    """Every weight and BN statistic random, so a key mapped to the wrong place cannot go unnoticed."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if name.endswith("running_var")
                             else torch.randn_like(tensor) * 0.1)
    return model.eval()


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IMAGES)


def tiny(num_classes: int = 1000) -> nn.Module:
    return randomized(create_model("resnext_tiny", num_classes))


def tiny_se() -> ResNet:
    # resnext_tiny with squeeze-excitation: not a family member, but it exercises NVIDIA's SE names cheaply.
    return randomized(ResNet(replace(ARCHS["resnext_tiny"], se_reduction=16), arch="tiny_se"))


def to_nvidia(state: dict, stages: str) -> dict:
    """Our names -> NVIDIA's: `layers.N` (stages="layers") or `layerN` (stages="layer", the NGC file)."""
    out = {}
    for key, value in state.items():
        if stages == "layers" and key.startswith("layer"):
            number, rest = key[len("layer"):].split(".", 1)
            key = f"layers.{int(number) - 1}.{rest}"
        key = key.replace(".se.fc1.", ".squeeze.squeeze.").replace(".se.fc2.", ".squeeze.expand.")
        if key.endswith(("squeeze.squeeze.weight", "squeeze.expand.weight")):
            value = value.flatten(1)  # nn.Linear weights
        out[key] = value
    return out


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + key: value for key, value in state.items()}


# ---------------------------------------------------------------------------------------------------------------
# Public layouts


def test_torchvision_resnext101_file_builds_and_matches(tmp_path):
    from torchvision.models.resnet import Bottleneck
    from torchvision.models.resnet import ResNet as TorchvisionResNet

    source = randomized(TorchvisionResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4))
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    model, meta = load_model(tmp_path / "tv.pth")
    assert (meta.arch, meta.num_classes, meta.class_names, meta.preprocessing) == (
        "resnext101_32x4d", 1000, None, None)
    assert meta.report.layout == "state_dict" and len(meta.report.loaded) == 626
    assert torch.equal(logits(model), logits(source))


@pytest.mark.parametrize("timm_name, arch", [("resnext101_32x4d", "resnext101_32x4d"),
                                             ("seresnext101_32x4d", "se_resnext101_32x4d")])
@needs_timm
def test_timm_state_dicts_load_as_is(timm_name, arch):
    import timm

    source = randomized(timm.create_model(timm_name, pretrained=False))
    model, meta = load_model(source.state_dict())
    assert meta.arch == arch and meta.path is None
    torch.testing.assert_close(logits(model), logits(source))


@pytest.mark.parametrize("stages", ["layer", "layers"])
def test_nvidia_names_and_linear_se_load(tmp_path, stages):
    source = tiny_se()
    path = tmp_path / "nvidia_se.pth.tar"
    torch.save(to_nvidia(source.state_dict(), stages), path)
    model = ResNet(replace(ARCHS["resnext_tiny"], se_reduction=16))
    report = load_weights(model, path)
    assert torch.equal(logits(model), logits(source))
    assert "NVIDIA squeeze/expand SE names" in report.layout
    assert ("NVIDIA layers.N stage names" in report.layout) == (stages == "layers")


def test_nvidia_training_checkpoint_with_ddp_prefix_and_ema(tmp_path):
    trained, averaged = tiny(), tiny()
    path = tmp_path / "checkpoint_0089.pth.tar"
    torch.save({"epoch": 90, "best_prec1": 79.5, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}},
                "state_dict": prefixed(to_nvidia(trained.state_dict(), "layers"), "module."),
                "state_dict_ema": prefixed(to_nvidia(averaged.state_dict(), "layers"), "module.")}, path)
    model = create_model("resnext_tiny")
    report = load_weights(model, path)
    assert torch.equal(logits(model), logits(trained))
    assert report.layout == ("NVIDIA / timm training checkpoint ['state_dict'], 'module.' prefix, "
                             "NVIDIA layers.N stage names")
    load_weights(model, path, use_ema=True)
    assert torch.equal(logits(model), logits(averaged))


def test_nvidia_se_resnext_ngc_layout_loads_into_nvidias_arch():
    # NVIDIA's SE blocks squeeze every block to 16 channels (nn.Linear(channels, 16)), unlike timm's ratio of 16.
    source = randomized(create_model("se-resnext101-32x4d"))
    assert source.arch == "se_resnext101_32x4d_nvidia"
    assert source.layer3[0].se.fc1.weight.shape[0] == 16
    state = to_nvidia(source.state_dict(), "layer")
    assert infer_arch(state) == "se_resnext101_32x4d_nvidia"
    model, meta = load_model(state)
    assert meta.arch == "se_resnext101_32x4d_nvidia"
    assert torch.equal(logits(model), logits(source))


@pytest.mark.parametrize("wrap", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(wrap):
    source = tiny()
    model = create_model("resnext_tiny")
    report = load_weights(model, prefixed(source.state_dict(), wrap))
    assert torch.equal(logits(model), logits(source))
    assert report.layout.startswith("state_dict, ")


def test_loads_into_wrapped_models():
    source = tiny()
    parallel = nn.DataParallel(create_model("resnext_tiny"))
    load_weights(parallel, source.state_dict())
    assert torch.equal(logits(parallel.module), logits(source))
    compiled = torch.compile(create_model("resnext_tiny"))  # not run: only its key names matter
    load_weights(compiled, source.state_dict())
    assert torch.equal(logits(compiled._orig_mod), logits(source))


@pytest.mark.parametrize("layout", ["timm", "torchvision"])
def test_training_scripts_checkpoints_with_argparse_namespace(tmp_path, layout):
    trained, averaged = tiny(), tiny()
    args = argparse.Namespace(lr=0.1, model="resnext101_32x4d", aa=None, sched="cosine")
    if layout == "timm":  # timm train.py: weights under "state_dict", EMA under "state_dict_ema"
        content = {"epoch": 3, "arch": "resnext101_32x4d", "args": args, "state_dict": trained.state_dict(),
                   "state_dict_ema": averaged.state_dict(), "version": 2, "metric": 12.5}
    else:  # torchvision references/classification/train.py: EMA is an AveragedModel ("module." + n_averaged)
        ema = {"n_averaged": torch.tensor(7), **prefixed(averaged.state_dict(), "module.")}
        content = {"model": trained.state_dict(), "model_ema": ema, "args": args, "epoch": 3, "optimizer": {}}
    torch.save(content, tmp_path / "train.pth")
    model, _ = load_model(tmp_path / "train.pth")
    assert torch.equal(logits(model), logits(trained))
    model, _ = load_model(tmp_path / "train.pth", use_ema=True)
    assert torch.equal(logits(model), logits(averaged))


def test_our_checkpoint_carries_meta_and_ema(tmp_path):
    trained, averaged = tiny(10), tiny(10)
    names = [f"class_{index}" for index in range(10)]
    preprocessing = {"image_size": 64, "crop_pct": 0.875, "interpolation": "bilinear",
                     "mean": [0.5] * 3, "std": [0.25] * 3}
    path = save_checkpoint(tmp_path / "checkpoint-0001-00000010.pt", {
        "arch": "resnext_tiny", "num_classes": 10, "class_names": names, "preprocessing": preprocessing,
        "model": trained.state_dict(), "ema": averaged.state_dict(), "epoch": 1, "global_step": 10})
    model, meta = load_model(path)
    assert (meta.arch, meta.num_classes, meta.class_names, meta.preprocessing, meta.path) == (
        "resnext_tiny", 10, names, preprocessing, path)
    assert meta.report.layout == "resnext checkpoint ['model']" and not model.training
    assert torch.equal(logits(model), logits(trained))
    model, meta = load_model(path, use_ema=True)
    assert torch.equal(logits(model), logits(averaged)) and meta.report.layout == "resnext checkpoint ['ema']"

    save_checkpoint(path, {"arch": "resnext_tiny", "num_classes": 10, "model": trained.state_dict(), "ema": None})
    with pytest.raises(UserError, match=r"has no EMA weights \(a resnext checkpoint without 'ema'\)"):
        read_state_dict(path, use_ema=True)
    with pytest.raises(UserError, match="bare state_dict without EMA weights"):
        read_state_dict(trained.state_dict(), use_ema=True)


def test_safetensors_with_our_metadata(tmp_path):
    source = tiny(10)
    header = {"resnext": json.dumps({"arch": "resnext_tiny", "num_classes": 10, "class_names": list("abcdefghij")})}
    save_file(source.state_dict(), tmp_path / "model.safetensors", metadata=header)
    os.replace(tmp_path / "model.safetensors", tmp_path / "renamed.bin")  # found by its header, not its name
    model, meta = load_model(tmp_path / "renamed.bin")
    assert (meta.arch, meta.class_names, meta.preprocessing) == ("resnext_tiny", list("abcdefghij"), None)
    assert torch.equal(logits(model), logits(source))

    save_file(source.state_dict(), tmp_path / "other.safetensors", metadata={"resnext": "not json"})
    _, meta = load_model(tmp_path / "other.safetensors")  # a foreign header entry is ignored: shapes decide
    assert (meta.arch, meta.num_classes, meta.class_names) == ("resnext_tiny", 10, None)


# ---------------------------------------------------------------------------------------------------------------
# Mismatches and fine-tuning


def test_safetensors_with_another_class_count_needs_ignore_head(tmp_path, caplog):
    source = tiny(10)
    save_file(source.state_dict(), tmp_path / "ten.safetensors")
    model = create_model("resnext_tiny")  # 1000 classes
    with pytest.raises(UserError) as error:
        load_weights(model, tmp_path / "ten.safetensors")
    message = str(error.value)
    assert "2 wrongly shaped (fc.weight [10, 1024] in the file vs [1000, 1024], fc.bias" in message
    assert "classifier has 10 classes: pass ignore_head=True (--ignore-head)" in message
    assert "\n" not in message

    with caplog.at_level(logging.INFO, logger="resnext"):
        report = load_weights(model.eval(), tmp_path / "ten.safetensors", ignore_head=True)
    assert report.skipped_head == ("fc.weight", "fc.bias") and not report.mismatched
    assert "10-class classifier; the model's 1000-class classifier is left as initialised" in caplog.text
    with torch.no_grad():
        assert torch.equal(model.forward_features(IMAGES), source.forward_features(IMAGES))

    model, meta = load_model(tmp_path / "ten.safetensors", num_classes=3, ignore_head=True)
    assert meta.num_classes == 3 and meta.report.skipped_head == ("fc.weight", "fc.bias")


def test_headless_file_trains_a_new_classifier():
    state = {key: value for key, value in tiny().state_dict().items() if not key.startswith("fc.")}
    with pytest.raises(UserError, match="no classifier"):
        infer_num_classes(state)
    with pytest.raises(UserError, match="2 missing \\(fc.weight, fc.bias\\); the file has no classifier"):
        load_weights(create_model("resnext_tiny"), state)
    model, meta = load_model(state, num_classes=5, ignore_head=True)
    assert meta.report.skipped_head == ("fc.weight", "fc.bias") and meta.class_names is None


def test_another_architecture_is_named():
    with pytest.raises(UserError, match=r"does not fit resnext50_32x4d: 180 missing .*; 86 wrongly shaped .*; "
                                        r"the file holds a resnext_tiny: build that architecture"):
        load_weights(create_model("resnext50_32x4d"), tiny().state_dict())
    with pytest.raises(UserError, match=r"^the given dict does not fit resnext_tiny: .* unexpected \(layer1.0.se.fc1"
                                        r".*the file is not one of resnext's architectures: these weights are a "
                                        r"ResNet with blocks \[1, 1, 1, 1\], 8 groups x 8 channels"):
        load_weights(create_model("resnext_tiny"), tiny_se().state_dict())


def test_incomplete_or_duplicated_weights_are_named():
    state = tiny().state_dict()
    del state["layer2.0.conv2.weight"]
    with pytest.raises(UserError, match=r"1 missing \(layer2.0.conv2.weight\); the file is incomplete or from a "
                                        r"modified model; pass strict=False to load what fits"):
        load_weights(create_model("resnext_tiny"), state)
    twice = {**state, "module.conv1.weight": state["conv1.weight"]}
    with pytest.raises(UserError, match="holds 'conv1.weight' twice"):
        read_state_dict(twice)
    with pytest.raises(UserError, match="is not a state_dict: entry 'step' is a int, not a tensor"):
        read_state_dict({"state_dict": {**state, "step": 3}})


def test_non_strict_loads_what_fits(caplog):
    source = tiny()
    model = create_model("resnext_tiny", num_classes=10).eval()
    extra = {**source.state_dict(), "aux.weight": torch.ones(2)}
    with caplog.at_level(logging.WARNING, logger="resnext"):
        report = load_weights(model, extra, strict=False)
    assert report.mismatched == ("fc.weight", "fc.bias") and report.unexpected == ("aux.weight",)
    assert "left out: 0 missing, 1 unexpected, 2 wrongly shaped" in caplog.text
    with torch.no_grad():
        assert torch.equal(model.forward_features(IMAGES), source.forward_features(IMAGES))


def test_missing_batchnorm_counters_are_not_missing_weights():
    source = tiny()
    state = {key: value for key, value in source.state_dict().items() if not key.endswith("num_batches_tracked")}
    report = load_weights(create_model("resnext_tiny"), state)
    assert not report.missing


# ---------------------------------------------------------------------------------------------------------------
# Files that must not load


class RunsCode:
    """A pickle payload that creates a folder when unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"conv1.weight": torch.ones(1)}, "extra": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(UserError, match=r"holds pickled Python objects besides tensors.*, which resnext refuses "
                                        r"to unpickle because that can run code; if you trust the file") as error:
        load_weights(create_model("resnext_tiny"), path)
    if writer == "torch.save":  # torch names the refused callable when the pickle protocol lets it
        assert "mkdir)" in str(error.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the payload is real: plain unpickling runs it
    assert marker.is_dir()


def _broken_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(tiny().state_dict(), good)
    save_file(tiny().state_dict(), tmp_path / "good.safetensors")
    files = {
        "empty.pth": b"",
        "notes.pth": b"these are not weights\n",
        "torn.pth": good.read_bytes()[: good.stat().st_size // 2],
        "torn.safetensors": (tmp_path / "good.safetensors").read_bytes()[:5000],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "ngc_download.zip", "w") as archive:
        archive.writestr("nvidia_resnext101-32x4d_200821.pth.tar", b"...")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"net": tiny().state_dict(), "epoch": 3}, tmp_path / "foreign.pth")


@pytest.mark.parametrize("name, message", [
    ("empty.pth", "is empty (an interrupted copy or download?); get the file again"),
    ("notes.pth", "cannot be read as PyTorch or safetensors weights"),
    ("torn.pth", "cannot be read as PyTorch or safetensors weights (PytorchStreamReader"),
    ("torn.safetensors", "cannot be read as safetensors"),
    ("ngc_download.zip", "is a zip archive, not a PyTorch file; unzip it and pass the weights file inside "
                         "(nvidia_resnext101-32x4d_200821.pth.tar)"),
    ("list.pth", "holds a list, not model weights"),
    ("foreign.pth", "holds no model weights in a layout resnext knows (top-level keys: net, epoch)"),
    ("nowhere.pth", "weights file"),
    (".", "is a folder; pass a weights file"),
])
def test_broken_files_give_one_sentence(tmp_path, name, message):
    _broken_files(tmp_path)
    with pytest.raises(UserError) as error:
        load_model(tmp_path / name)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_names_are_explained(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(UserError, match="unknown architecture 'resnext102_32x4d'. Did you mean 'resnext101_32x4d'"):
        load_model(tmp_path / "tiny.pth", arch="resnext102_32x4d")
    with pytest.raises(UserError, match="unknown pretrained weights 'nvidia-ngx'. Did you mean 'pretrained:nvidia-n"):
        load_model("pretrained:nvidia-ngx")
    with pytest.raises(UserError, match="for the public weights of that name write 'pretrained:timm-swsl'"):
        resolve_weights("timm-swsl")
    with pytest.raises(UserError, match="weights must be a path or a state_dict, got a int"):
        read_state_dict(3)


# ---------------------------------------------------------------------------------------------------------------
# Named public sources (no test reaches the network)


def test_public_sources_are_complete():
    for name, source in PRETRAINED.items():
        assert source.name == name and source.arch in ARCHS and source.url.startswith("https://")
        assert set(source.preprocessing) == {"image_size", "crop_pct", "interpolation", "mean", "std"}
        assert source.filename and source.licence
    assert PRETRAINED["nvidia-ngc"].url.endswith("/versions/20.06.0/files/nvidia_resnext101-32x4d_200821.pth.tar")
    assert "CC-BY-NC" in PRETRAINED["timm-ssl"].licence and "CC-BY-NC" in PRETRAINED["timm-swsl"].licence
    assert weights_module.default_source("resnext101-32x4d").name == "nvidia-ngc"
    assert weights_module.default_source("resnet50").name == "nvidia-ngc-resnet50"  # NVIDIA's --pretrained files
    assert weights_module.default_source("se-resnext101-32x4d").name == "nvidia-ngc-se-resnext101"
    with pytest.raises(UserError, match="no public pretrained weights are known for resnext50_32x4d"):
        weights_module.default_source("resnext50_32x4d")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty $RESNEXT_HOME and a registered tiny source whose URL each test sets."""
    monkeypatch.setenv("RESNEXT_HOME", str(tmp_path / "home"))

    def register(url, sha256=None, num_classes=1000):
        source = PretrainedSource("test-tiny", "resnext_tiny", url, "tiny.pth", {
            "image_size": 64, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3},
            licence="test", top1=None, num_classes=num_classes, sha256=sha256)
        monkeypatch.setitem(PRETRAINED, source.name, source)
        return source

    return register


def no_network(*args, **kwargs):
    raise AssertionError("the network was used")


def test_cached_source_loads_without_network(cache, monkeypatch):
    source = cache("https://example.invalid/tiny.pth")
    weights_module.weights_cache().mkdir(parents=True)
    trained = tiny()
    torch.save(trained.state_dict(), weights_module.weights_cache() / "tiny.pth")
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", no_network)
    model, meta = load_model("pretrained:test-tiny")
    assert torch.equal(logits(model), logits(trained))
    assert meta.preprocessing == source.preprocessing and meta.path.parent == weights_module.weights_cache()
    assert len(meta.class_names) == 1000 and meta.class_names[0] == "tench"  # ImageNet-1k order


def test_offline_download_says_how_to_pass_a_file(cache):
    with socket.socket() as probe:  # a port nothing listens on: connecting is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache(f"http://127.0.0.1:{port}/tiny.pth")
    with pytest.raises(UserError) as error:
        load_model("pretrained:test-tiny")
    message = str(error.value)
    assert message.startswith("cannot download test-tiny (")
    assert f"download http://127.0.0.1:{port}/tiny.pth on a machine with internet and pass the file's path " \
           "instead of 'pretrained:test-tiny'" in message
    assert not any(weights_module.weights_cache().iterdir())  # no partial file left behind


def test_download_checks_hash_and_content_then_caches(cache, tmp_path, monkeypatch):
    trained = tiny()
    served = tmp_path / "served.pth"
    torch.save(trained.state_dict(), served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()

    cache(served.as_uri(), sha256="0" * 64)
    with pytest.raises(UserError, match=f"has SHA-256 {digest}, expected 0000"):
        resolve_weights("pretrained:test-tiny")
    assert not any(weights_module.weights_cache().iterdir())

    (tmp_path / "error.html").write_text("<html>rate limited</html>")
    cache((tmp_path / "error.html").as_uri())
    with pytest.raises(UserError, match="the download of test-tiny is not usable"):
        resolve_weights("pretrained:test-tiny")
    assert not any(weights_module.weights_cache().iterdir())

    cache(served.as_uri(), sha256=digest)
    path = resolve_weights("pretrained:test-tiny")
    assert path == weights_module.weights_cache() / "tiny.pth" and path.read_bytes() == served.read_bytes()
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", no_network)  # the second use is a cache hit
    assert get_source("pretrained:test-tiny").name == "test-tiny"
    model, _ = load_model("pretrained:test-tiny")
    assert torch.equal(logits(model), logits(trained))
