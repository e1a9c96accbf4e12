"""resnext export: every format reloads in its runtime and matches PyTorch; the Triton repository is a valid one."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from inference_support import CLASSES, assert_user_error, single_thread, trained  # noqa: F401  (fixtures)
from optional import needs_onnx, needs_triton_client
from torch import nn

from resnext import export_model
from resnext.cli import main
from resnext.export import ExportMismatch, fold_batchnorm
from resnext.weights import load_model, read_state_dict


def pytorch_logits(weights, images: torch.Tensor, use_ema: bool = False) -> torch.Tensor:
    model, _ = load_model(weights, use_ema=use_ema)
    with torch.no_grad():
        return model(images)


def random_batches(*sizes: int, image_size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, image_size, image_size, generator=generator) for size in sizes]


@needs_onnx
def test_onnx_runs_in_onnxruntime_at_batch_1_and_5(trained, tmp_path, capsys):
    import onnxruntime

    output = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(trained.best), "--format", "onnx", "--output", str(output)]) == 0
    assert f"wrote {output} (onnx, fp32" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("images", "tensor(float)", [3, 32, 32])
    assert isinstance(given.shape[0], str) and returned.name == "logits"  # a symbolic (dynamic) batch size
    for images in random_batches(1, 5):
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        assert logits.shape == (len(images), 3)
        assert np.abs(logits - pytorch_logits(trained.best, images).numpy()).max() < 1e-4


@pytest.mark.parametrize("format, fold, size", [("torchscript", False, 48), ("exported-program", True, 32)])
def test_torchscript_and_exported_program_reload_and_match(trained, tmp_path, format, fold, size):
    output = tmp_path / f"model.{format}"
    result = export_model(trained.best, format, output, fold_bn=fold, image_size=size)
    assert result.path == output and result.max_abs_diff < 1e-4
    if format == "torchscript":
        model = torch.jit.load(str(output))
    else:
        model = torch.export.load(str(output)).module()
    for images in random_batches(1, 5, image_size=size):
        with torch.no_grad():
            assert (model(images) - pytorch_logits(trained.best, images)).abs().max() < 1e-4


def test_fold_batchnorm_matches_the_model(trained):
    model, _ = load_model(trained.best)
    norms = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    folded = fold_batchnorm(model)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in model.modules()) == norms > 0  # original untouched
    images = random_batches(4)[0]
    with torch.no_grad():
        assert (folded(images) - model(images)).abs().max() < 1e-5


def test_safetensors_from_a_training_checkpoint_keeps_its_metadata(trained, tmp_path, monkeypatch):
    # NVIDIA's checkpoint2model: bare weights out of a training checkpoint, here the EMA copy, with what the
    # model needs to be used again. Without --output the file lands in the current folder, named after the weights.
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--weights", str(trained.checkpoints[0]), "--format", "safetensors", "--ema"]) == 0
    output = tmp_path / (trained.checkpoints[0].name.removesuffix(".pt") + ".safetensors")
    model, meta = load_model(output)
    assert (meta.arch, meta.num_classes, meta.class_names) == ("resnext_tiny", 3, list(CLASSES))
    assert meta.preprocessing["image_size"] == 32 and meta.preprocessing["interpolation"] == "bilinear"
    saved, ema = read_state_dict(output), read_state_dict(trained.checkpoints[0], use_ema=True)
    assert saved.keys() == ema.keys() and all(torch.equal(saved[key], ema[key]) for key in saved)


@needs_onnx
@needs_triton_client
def test_triton_repository_config_parses_and_names_what_the_onnx_file_has(trained, tmp_path):
    import onnx
    import onnxruntime
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repository = tmp_path / "model_repository"
    assert main(["export", "--weights", str(trained.best), "--format", "triton", "--output", str(repository),
                 "--precision", "fp16", "--fold-bn", "--model-name", "fashion-v2", "--max-batch-size", "32",
                 "--queue-delay-us", "500"]) == 0
    folder = repository / "fashion-v2"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("fashion-v2", "onnxruntime", 32)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    for declared, actual in ((config.input[0], graph.input[0]), (config.output[0], graph.output[0])):
        assert declared.name == actual.name
        assert declared.data_type == model_config_pb2.TYPE_FP16
        assert actual.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        dims = actual.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # the batch: Triton's max_batch_size dimension
        assert list(declared.dims) == [dim.dim_value for dim in dims[1:]]
    assert (config.input[0].name, list(config.output[0].dims)) == ("images", [3])
    assert (folder / config.output[0].label_filename).read_text().splitlines() == list(CLASSES)
    # The fp16 model still classifies like the fp32 PyTorch model.
    session = onnxruntime.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = random_batches(5)[0]
    logits = session.run(None, {"images": images.half().numpy()})[0].astype(np.float32)
    reference = pytorch_logits(trained.best, images).numpy()
    assert np.abs(logits - reference).max() < 2e-2 * np.abs(reference).max() + 1e-2


def test_a_mismatching_export_writes_nothing(trained, tmp_path, monkeypatch):
    import resnext.export as export

    def scrambled(model, batches):  # a runtime that answers zeros
        return b"model", [torch.zeros(len(images), 3) for images in batches]

    monkeypatch.setattr(export, "_torchscript", scrambled)
    with pytest.raises(ExportMismatch, match="differ from PyTorch's"):
        export_model(trained.best, "torchscript", tmp_path / "bad.pt")
    assert not any(tmp_path.iterdir())


def test_default_output_names_stay_in_the_current_folder(trained, tmp_path, monkeypatch):
    odd = tmp_path / "weights" / "..evil name;rm -rf.pth.tar"
    odd.parent.mkdir()
    odd.write_bytes(trained.best.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = export_model(odd, "torchscript")
    assert result.path.resolve().parent == work and result.path.name == "evil_name_rm_-rf.pt"


# ---- errors a user can cause: (argv after "export", part of the one-line message) ------------------------------

def _a_file(tmp):
    (tmp / "taken").write_text("a file")
    return tmp / "taken"


USER_ERRORS = [
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "onxx"], "Did you mean 'onnx'",
                 id="unknown-format"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "onnx", "-o", _a_file(tmp) / "m.onnx"],
                 "is a file, not a folder", id="output-inside-a-file"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "triton", "-o", _a_file(tmp)],
                 "is a file", id="triton-repository-is-a-file"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "onnx", "-o", tmp], "is a folder",
                 id="output-is-a-folder"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "triton"], "needs --output",
                 id="triton-without-output"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "triton", "-o", tmp, "--model-name", "../up"],
                 "may only hold", id="triton-model-name-escapes"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "safetensors", "--fold-bn"],
                 "drop --fold-bn", id="fold-bn-safetensors"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "onnx", "--precision", "int8"],
                 "unknown precision", id="unknown-precision"),
    pytest.param(lambda run, tmp: ["--weights", tmp / "missing.pth", "--format", "onnx"], "does not exist",
                 id="missing-weights"),
    pytest.param(lambda run, tmp: ["--weights", run.best, "--format", "onnx", "--arch", "resnet50"],
                 "holds a resnext_tiny", id="weights-of-another-arch"),
]


@pytest.mark.parametrize("make_argv, message", USER_ERRORS)
def test_user_errors_are_one_line(trained, tmp_path, capsys, make_argv, message):
    assert_user_error(capsys, "export", make_argv(trained, tmp_path), message)
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "resnext").exists()


def test_onnxruntime_missing_is_one_line(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert_user_error(capsys, "export", ["--weights", trained.best, "--format", "onnx", "-o", tmp_path / "m.onnx"],
                      'pip install "resnext[export]"')
    assert not os.listdir(tmp_path)
