"""`resnext benchmark` on the CPU: it times the real training loop, inference and loaders, and reports honestly."""
import json
import subprocess
import sys

import pytest
import torch
from optional import needs_timm
from torch import nn

from resnext import bench
from resnext.cli import main
from resnext.errors import UserError

# Small enough for two CPU cores; resnet50 because the peers build it too (resnext_tiny exists only here).
TINY = ["--device", "cpu", "-a", "resnext_tiny", "--num-classes", "10", "--image-size", "32", "-b", "4"]


def run_json(capsys, *args) -> dict:
    assert main(["benchmark", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_timm
def test_train_times_the_training_loop_windows_after_warmup_and_compares_with_timm(capsys):
    result = run_json(capsys, "--mode", "train", "--device", "cpu", "-a", "resnet50", "--num-classes", "10",
                      "--image-size", "32", "-b", "2", "--warmup", "1", "--steps", "3", "--window", "2",
                      "--compare", "timm")
    # warm-up and timed steps are rounded up to whole windows: 2 warm-up steps, 4 timed steps in 2 windows
    assert (result["warmup_steps"], result["timed_steps"], len(result["window_img_s"])) == (2, 4, 2)
    assert result["img_s"] == pytest.approx(sum(result["window_img_s"]) / 2)  # the median of two windows
    assert result["step_ms"] == pytest.approx(1000 * 2 / result["img_s"])
    assert (result["precision"], result["memory_format"], result["peak_memory_gb"]) == ("fp32", "nchw", None)
    # MFU: 3 forward passes of model FLOPs per image against the fp32 matmul rate measured in the process
    assert result["gflops_per_image"] == pytest.approx(3 * bench.forward_gflops("resnet50", 32, 10))
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / result["matmul_peak"]["tflops"])
    peer = result["compare"]
    assert peer["library"] == "timm" and len(peer["window_img_s"]) == 2
    assert peer["ratio"] == pytest.approx(result["img_s"] / peer["img_s"])
    text = bench.format_result(result)
    assert "resnet50 train, batch 2" in text and "resnext / timm" in text and "MFU" in text


def test_train_on_a_folder_crosses_epochs_and_keeps_only_timed_windows(small_data):
    # 160 training images at batch 16: 10 steps per epoch. 2 warm-up + 10 timed steps need a second epoch, which
    # runs whole: windows of 3 steps end at 3,6,9,10 (epoch end) | 13,16,19,20; the 7 starting at step 3 or later
    # are timed (warm-up rounds up to one window).
    result = bench.benchmark_training("resnext_tiny", batch_size=16, image_size=32, num_classes=10, device="cpu",
                                      data=str(small_data), data_backend="pytorch", workers=0, warmup=2, steps=8,
                                      window=3)
    assert (result["warmup_steps"], result["timed_steps"]) == (3, 17)
    assert len(result["window_img_s"]) == 7 and all(rate > 0 for rate in result["window_img_s"])
    assert result["data_backend"] == "pytorch" and result["data"] == str(small_data)


def test_window_selection_drops_warmup_windows():
    class Log:
        iterations_per_epoch = 5
        iterations = {(0, 2): {"train.total_ips": 1.0}, (0, 4): {"train.total_ips": 2.0},
                      (0, 5): {"train.total_ips": 3.0}, (1, 2): {"train.total_ips": "nan"},
                      (1, 4): {"train.total_ips": 5.0}}

    # windows start at global steps 0, 2, 4, 5, 7: the last three are timed; a non-finite rate is no measurement
    assert bench._training_windows(Log(), warmup_steps=4) == [3.0, 5.0]
    assert bench._training_windows(Log(), warmup_steps=0) == [1.0, 2.0, 3.0, 5.0]


def test_infer_reports_logits_error_against_fp32(capsys):
    fp32 = run_json(capsys, "--mode", "infer", *TINY, "--warmup", "1", "--steps", "2", "--window", "1")
    assert fp32["logits_rel_err"] < 1e-6 and fp32["latency_ms"] == fp32["step_ms"] and len(fp32["window_img_s"]) == 2
    folded = run_json(capsys, "--mode", "infer", *TINY, "--warmup", "0", "--steps", "1", "--window", "1", "--fold-bn")
    assert folded["fold_bn"] and 0 < folded["logits_rel_err"] < 1e-5  # same function, other rounding
    bf16 = bench.benchmark_inference("resnext_tiny", batch_size=4, image_size=32, num_classes=10, device="cpu",
                                     precision="amp-bf16", warmup=0, steps=1, window=1)
    assert 1e-4 < bf16["logits_rel_err"] < 5e-2  # bf16 arithmetic, really used
    assert bf16["matmul_peak"]["dtype"] == "fp32"  # the CPU ceiling is the fp32 product


def test_infer_compares_with_torchvision_on_the_same_images():
    result = bench.benchmark_inference("resnet50", batch_size=2, image_size=32, num_classes=10, device="cpu",
                                       warmup=0, steps=1, window=1, compare="torchvision")
    peer = result["compare"]
    assert peer["library"] == "torchvision" and peer["logits_rel_err"] < 1e-6
    assert peer["ratio"] == pytest.approx(result["img_s"] / peer["img_s"])


def test_compiled_inference_call_matches_eager():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))
    images = torch.randn(2, 3, 8, 8)
    bench.trained_like(model, torch.randn(8, 3, 8, 8))
    with torch.no_grad():
        reference = model(images)
    result = bench.time_inference(model, images, compile=True, reference=reference, warmup=1, steps=2, window=1)
    assert result["logits_rel_err"] < 1e-5 and len(result["window_img_s"]) == 2


def test_trained_like_scales_residual_branches_and_calibrates():
    model = bench.peer_model("torchvision", "resnet50", 10)
    bench.trained_like(model, torch.randn(4, 3, 32, 32))
    assert not model.training
    assert float(model.layer1[0].bn3.weight.detach().max()) == pytest.approx(bench.RESIDUAL_SCALE)
    assert int(model.bn1.num_batches_tracked) == 2 and float(model.bn1.running_var.mean()) != 1.0


def test_data_only_times_each_backend(small_data):
    result = subprocess.run([sys.executable, "-m", "resnext", "benchmark", "--data-only", str(small_data),
                             "--data-backend", "pytorch,gpu", "-j", "0", "-b", "8", "--image-size", "32",
                             "--warmup", "1", "--steps", "2", "--window", "1", "--device", "cpu", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["backends"]) == {"pytorch", "gpu"} and data["best"] in data["backends"]
    assert data["backends"]["pytorch"]["batch_shape"] == [8, 3, 32, 32]
    assert "fastest:" in bench.format_result(data)


@pytest.mark.parametrize("args, message", [
    (["--mode", "infer", "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["--mode", "train", "--cuda-graphs"], "--cuda-graphs captures the training step on a CUDA GPU"),
    (["--data-only", "x", "--cuda-graphs"], "--cuda-graphs apply to --mode train and infer"),
    (["--mode", "train", "--fold-bn"], "--fold-bn applies to --mode infer"),
    (["--mode", "train", "--data", "x", "--compare", "timm"], "--compare times the peer on synthetic data"),
    (["--mode", "train", "--compare", "timm"], "timm has no resnext_tiny"),
    (["--mode", "train", "--data-backend", "pytorch"], "give the dataset folder with --data DIR"),
    (["--mode", "train", "--data-backend", "pytorch,gpu", "--data", "x"], "one --data-backend"),
    (["--mode", "data"], "--mode data needs a folder"),
    (["--mode", "infer", "--data-backend", "gpu"], "--mode infer times the model on synthetic input"),
    (["--mode", "infer", "--data-only", "x"], "cannot be combined with --mode infer"),
])
def test_user_errors_are_one_line(capsys, args, message):
    assert main(["benchmark", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("resnext benchmark: error:")


@needs_timm
def test_peer_models_match_our_parameter_counts():
    from resnext import create_model

    for library in bench.PEER_LIBRARIES:
        peer = bench.peer_model(library, "resnext101_32x4d", 1000)
        assert sum(p.numel() for p in peer.parameters()) == 44_177_704
    assert sum(p.numel() for p in bench.peer_model("timm", "se_resnext101_32x4d", 10).parameters()) == \
        sum(p.numel() for p in create_model("se_resnext101_32x4d", 10).parameters())
    with pytest.raises(UserError, match="torchvision has no se_resnext101_32x4d"):
        bench.peer_model("torchvision", "se_resnext101_32x4d", 10)
