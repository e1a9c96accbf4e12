"""NVIDIA's command line means NVIDIA's run: values computed by hand from the semantics of NVIDIA's ConvNets code
(main.py, launch.py, configs.yml, image_classification/{optimizers,training,utils,gpu_affinity,autoaugment}.py)."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from optional import needs_dali, needs_yaml
from PIL import Image, ImageEnhance, ImageOps

import resnext
from resnext.affinity import core_sets, parse_cpulist, set_gpu_affinity
from resnext.checkpoint import read_resume_checkpoint, to_nvidia_checkpoint
from resnext.cli import build_parser, main
from resnext.cli.train import config_from_args
from resnext.data.autoaugment import POLICIES, NvidiaAutoAugment, apply_op
from resnext.data.transforms import resize_size
from resnext.distributed import DistEnv
from resnext.ema import ModelEMA
from resnext.evaluation import evaluate
from resnext.errors import UserError
from resnext.nvidia import MODES, expand, load_configs, nvidia_doc, train_argv
from resnext.optim import LRSchedule, build_optimizer, parameter_groups
from resnext.recipe import TrainConfig, preset
from resnext.training import restore, train

from test_train import final_state, log_entries, tiny_config

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet50", "resnext101-32x4d", "se-resnext101-32x4d")
NVIDIA_CONFIGS = Path("/work/.mirror/NVIDIA+DeepLearningExamples")  # a local mirror, when there is one


def parse(*argv: str) -> TrainConfig:
    args = ["train", *argv]
    return config_from_args(build_parser(args).parse_args(args))


# ---- defaults and parsing ----------------------------------------------------------------------------------

def test_defaults_are_nvidias_main_py():
    config = TrainConfig()
    assert (config.arch, config.lr, config.lr_schedule, config.warmup, config.momentum) == ("resnet50", 0.1, "step", 0,
                                                                                              0.9)
    assert (config.weight_decay, config.label_smoothing, config.static_loss_scale) == (1e-4, 0.0, 1.0)
    assert (config.memory_format, config.seed, config.gather_checkpoints, config.batch_size) == ("nchw", None, 0, 256)
    assert (config.epochs, config.workers, config.prefetch, config.print_freq, config.topk) == (90, 5, 2, 10, 5)
    assert (config.gpu_affinity, config.jit, config.trt, config.fused_se) == ("none", "no", False, True)
    # Without --amp NVIDIA trains in fp32 math (TF32 convolutions on Ampere): not AMP.
    assert config.training_precision("cuda") == "tf32" and config.training_precision("cpu") == "fp32"
    assert TrainConfig(amp=True).training_precision("cuda") == "amp"
    assert TrainConfig(precision="auto").training_precision("cuda") is None  # ours: amp on GPUs, fp32 on CPUs
    # Evaluation resizes the shorter side to image size + 32: 256 for 224, 64 for 32 (not 32 / 0.875 = 37).
    assert resize_size(224, TrainConfig().eval_crop_pct()) == 256
    assert resize_size(32, TrainConfig(image_size=32).eval_crop_pct()) == 64
    assert resize_size(160, TrainConfig(image_size=160).eval_crop_pct()) == 192
    assert resize_size(32, TrainConfig(image_size=32, crop_pct=0.875).eval_crop_pct()) == 37  # ours, opt-in


def test_nvidia_flags_and_their_values_parse():
    config = parse("/d", "--gpu-affinity", "socket_unique_contiguous", "--jit", "script", "--trt", "True",
                   "--fused_se", "False", "--pretrained", "--last_bn_0_init", "True", "--interpolation", "triangular",
                   "--data-backend", "dali-cpu", "--epochs", "3", "--warmup", "8", "--run-epochs", "0",
                   "--early-stopping-patience", "0")
    assert (config.gpu_affinity, config.jit, config.trt, config.fused_se, config.pretrained) == (
        "socket_unique_contiguous", "script", True, False, True)
    assert config.last_bn_0_init and config.interpolation == "triangular"
    assert (config.epochs, config.warmup, config.run_epochs, config.early_stopping_patience) == (3, 8, 0, 0)
    config.validate()  # NVIDIA accepts a warm-up longer than training (benchmark modes: --epochs 3 --warmup 8)
    assert parse("/d", "--last_bn_0_init").last_bn_0_init is True  # our old spelling: a bare flag


def test_abbreviations_keep_nvidias_meaning():
    # --checkpoint is ambiguous among our flags (-filename, -interval) but not among NVIDIA's main.py flags.
    config = parse("/d", "--mom", "0.875", "--checkpoint", "c.pth.tar", "--num", "7", "--wd=0.5")
    assert (config.momentum, config.checkpoint_filename, config.num_classes, config.weight_decay) == (
        0.875, "c.pth.tar", 7, 0.5)


def test_bool_values_read_as_written_with_a_warning_where_nvidia_differs(caplog):
    with caplog.at_level(logging.WARNING, logger="resnext"):
        assert parse("/d", "--last_bn_0_init", "False").last_bn_0_init is False
    assert "NVIDIA's main.py reads any non-empty value (argparse type=bool) as True" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["--gpu-affinity", "sockets"], "must be one of none, socket, socket_single"),
    (["--trt", "maybe"], "expected True or False, got 'maybe'"),
    (["--jit", "trace"], "must be one of no, script"),
    (["--run-epochs", "-2"], "must be at least 0 or -1"),
    (["--lr-schedule", "exp"], "must be one of step, linear, cosine"),
])
def test_values_nvidia_rejects_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "/d", *argv])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("changes, message", [
    (dict(interpolation="triangular", data_backend="pytorch"), "triangular exists in DALI only"),
    (dict(pretrained=True, pretrained_from_file="w.pt"), "exclude each other"),
    (dict(jit="script", compile=True), "two compilers"),
    (dict(optimizer_batch_size=100, batch_size=256), "smaller than one batch"),
])
def test_impossible_combinations_are_one_sentence(changes, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(data="d", **changes).validate()


def test_ignored_options_warn_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="resnext"):
        TrainConfig(data="d", optimizer="rmsprop", nesterov=True).validate()
        TrainConfig(data="d", rmsprop_alpha=0.5, rmsprop_eps=0.1).validate()
        TrainConfig(data="d", ignore_head=True).validate()
        TrainConfig(data="d", static_loss_scale=128.0).validate()
        TrainConfig(data="d", end_lr=0.01).validate()
        TrainConfig(data="d", optimizer_batch_size=1000, batch_size=256).validate()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "warning: --nesterov is ignored with --optimizer rmsprop (RMSprop has no Nesterov momentum).",
        "warning: --rmsprop-alpha is ignored with --optimizer sgd.",
        "warning: --rmsprop-eps is ignored with --optimizer sgd.",
        "warning: --ignore-head is ignored without --pretrained-from-file.",
        "warning: --static-loss-scale is ignored without fp16 AMP (--amp or --precision amp).",
        "warning: --end-lr is ignored by --lr-schedule step (cosine only).",
        "warning: --optimizer-batch-size 1000 is not a multiple of --batch-size x processes (256); each step "
        "accumulates 3 batches (768 images), as NVIDIA's does."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="resnext"):
        TrainConfig(data="d", preset="nvidia-90ep-amp", **preset("nvidia-90ep-amp")).validate()
        TrainConfig(data="d", preset="resnext", **preset("resnext")).validate()
    assert not caplog.records  # a preset's own values are not "ignored options"


# ---- LR policies (NVIDIA's optimizers.py) ----------------------------------------------------------------

def schedule(kind, peak, warmup, epochs, end=0.0, granularity="epoch", steps=10):
    return LRSchedule(kind=kind, peak=peak, end=end, warmup_epochs=warmup, epochs=epochs, steps_per_epoch=steps,
                      granularity=granularity)


def test_lr_policies_hold_the_lr_within_an_epoch():
    cosine = schedule("cosine", 1.024, warmup=8, epochs=3)  # benchmark_training: warm-up longer than training
    assert [cosine.at(e, s) for e, s in ((0, 0), (0, 9), (1, 5), (2, 9))] == pytest.approx(
        [0.128, 0.128, 0.256, 0.384])
    step = schedule("step", 0.1, warmup=8, epochs=3)
    assert step.at(2, 7) == pytest.approx(0.1 * 3 / 8)
    linear = schedule("linear", 0.4, warmup=8, epochs=3)
    assert linear.at(1, 3) == pytest.approx(0.4 * 2 / 8)
    # After the warm-up: step x0.1 at epochs 30, 60, 80 (not scaled to --epochs); linear to 0 ignoring --end-lr;
    # cosine to --end-lr.
    step = schedule("step", 0.1, warmup=2, epochs=40)
    assert [step.at(e) for e in (0, 1, 29, 30, 39)] == pytest.approx([0.05, 0.1, 0.1, 0.01, 0.01])
    assert schedule("step", 1.0, 0, 90).at(60) == pytest.approx(0.01) and schedule("step", 1.0, 0, 90).at(85) == \
        pytest.approx(0.001)
    linear = schedule("linear", 1.0, warmup=1, epochs=5, end=0.3)
    assert [linear.at(e) for e in (0, 1, 3, 4)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    cosine = schedule("cosine", 1.0, warmup=0, epochs=4, end=0.1)
    assert cosine.at(2, 6) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 2)) * 0.9)


def test_per_step_lr_is_our_opt_in():
    nvidia = schedule("cosine", 1.024, warmup=8, epochs=90, steps=1251)
    ours = schedule("cosine", 1.024, warmup=8, epochs=90, steps=1251, granularity="step")
    assert ours.at(0, 0) == pytest.approx(1.024 / 8 / 1251)
    assert ours.at(0, 1250) == pytest.approx(1.024 / 8)
    assert nvidia.at(1, 1250) - ours.at(1, 1250) == pytest.approx(0.0, abs=1e-12)  # they meet at epoch ends
    gap = max(abs(nvidia.at(e, s) - ours.at(e, s)) for e in range(8) for s in (0, 625))
    assert gap == pytest.approx(0.128 * (1 - 1 / 1251), rel=1e-6)  # "up to 0.127 apart" at LR 1.024


def test_a_run_logs_one_lr_per_epoch(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path, epochs=2, warmup=4, lr=0.4, lr_granularity="epoch", print_freq=1,
                      training_only=True))
    rates = {}
    for entry in log_entries(tmp_path):
        if len(entry["step"]) == 2:
            rates.setdefault(entry["step"][0], set()).add(round(entry["data"]["train.lr"], 12))
    assert rates == {0: {0.1}, 1: {0.2}}


# ---- weight decay groups by name -----------------------------------------------------------------------

def test_weight_decay_groups_are_nvidias_name_filter():
    model = resnext.create_model("se_resnext101_32x4d_nvidia", num_classes=10)
    names = {id(p): n for n, p in model.named_parameters()}
    spared, decayed = parameter_groups(model, weight_decay=1 / 16384)
    assert (spared["weight_decay"], decayed["weight_decay"]) == (0.0, 1 / 16384)
    assert [names[id(p)] for p in spared["params"]] == [n for n, _ in model.named_parameters() if "bn" in n]
    decayed_names = {names[id(p)] for p in decayed["params"]}
    # NVIDIA's filter decays the shortcut BatchNorm, the classifier bias and the SE biases.
    assert {"layer1.0.downsample.1.weight", "layer1.0.downsample.1.bias", "fc.bias", "layer1.0.se.fc1.bias"} <= \
        decayed_names
    ours_spared, _ = parameter_groups(model, 1 / 16384, exempt="bn-and-bias")
    ours_names = {names[id(p)] for p in ours_spared["params"]}
    assert {"layer1.0.downsample.1.weight", "fc.bias", "layer1.0.se.fc1.bias"} <= ours_names
    assert "fc.weight" not in ours_names
    (everything,) = parameter_groups(model, 0.1, bn_weight_decay=True)  # NVIDIA's SGD: one group
    assert len(everything["params"]) == len(list(model.parameters())) and everything["weight_decay"] == 0.1
    rms = parameter_groups(model, 0.1, bn_weight_decay=True, optimizer="rmsprop")  # RMSprop: two decayed groups
    assert [g["weight_decay"] for g in rms] == [0.1, 0.1]


# ---- NVIDIA training checkpoints ---------------------------------------------------------------------------

NVIDIA_BLOCK = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample", "squeeze")


def nvidia_name(name: str) -> str:
    """Our name -> NVIDIA's (layers.N stages, squeeze.squeeze / squeeze.expand SE layers)."""
    if name.startswith("layer"):
        stage, rest = name[len("layer"):].split(".", 1)
        name = f"layers.{int(stage) - 1}.{rest}"
    return name.replace(".se.fc1.", ".squeeze.squeeze.").replace(".se.fc2.", ".squeeze.expand.")


def nvidia_checkpoint(model, epoch, best, momentum=0.875, wd=1 / 16384, lr=0.256, ema_decay=0.9):
    """The dict NVIDIA's train_loop saves after `epoch` epochs of DDP training: state_dict in its module order,
    "module." keys, SGD over [names with "bn", the rest] with momentum buffers, and an EMA."""
    def order(name):
        parts = name.split(".")
        if parts[0] == "layers":
            return (1, int(parts[1]), int(parts[2]), NVIDIA_BLOCK.index(parts[3]))
        return (2,) if parts[0] == "fc" else (0,)

    state = {nvidia_name(k): v.clone() for k, v in model.state_dict().items()}
    state = {k: (v.flatten(1) if ".squeeze." in k and k.endswith("weight") else v)
             for k, v in sorted(state.items(), key=lambda kv: order(kv[0]))}
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = [(k, torch.nn.Parameter(v.clone())) for k, v in state.items() if not k.endswith(buffers)]
    groups = [{"params": [p for n, p in params if "bn" in n], "weight_decay": 0},
              {"params": [p for n, p in params if "bn" not in n], "weight_decay": wd}]
    optimizer = torch.optim.SGD(groups, lr, momentum=momentum, weight_decay=wd, nesterov=False)
    generator = torch.Generator().manual_seed(0)
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step()
    ema = {k: v * ema_decay for k, v in state.items()}
    return {"epoch": epoch, "best_prec1": best, "state_dict": {"module." + k: v for k, v in state.items()},
            "optimizer": optimizer.state_dict(), "state_dict_ema": {"module." + k: v for k, v in ema.items()}}


def test_nvidia_checkpoint_resumes_and_exports_back(tmp_path):
    torch.manual_seed(0)
    source = resnext.create_model("se_resnext101_32x4d_nvidia", num_classes=10)
    saved = nvidia_checkpoint(source, epoch=2, best=37.5)
    path = tmp_path / "checkpoint_0001.pth.tar"
    torch.save(saved, path)

    config = TrainConfig(data="d", arch="se-resnext101-32x4d", momentum=0.875, weight_decay=1 / 16384, epochs=4,
                         use_ema=0.9, wd_exempt="bn-and-bias")  # our groups differ: buffers move by name
    state = read_resume_checkpoint(path)
    assert (state["arch"], state["num_classes"], state["epoch"]) == ("se_resnext101_32x4d_nvidia", 10, 2)
    model = resnext.create_model(config.arch, 10)
    ema = ModelEMA(model, 0.9)
    optimizer = build_optimizer(config, model, 0.1, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    progress = restore(state, model, ema, optimizer, scaler, config, DistEnv(), steps_per_epoch=5,
                       accumulation=config.accumulation_steps(1))
    assert (progress.epoch, progress.step_in_epoch, progress.global_step, progress.best_top1) == (2, 0, 10, 37.5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
    assert torch.equal(ema.module.state_dict()["fc.weight"], source.fc.weight.detach() * 0.9)
    nv_params = [k[len("module."):] for k in saved["state_dict"] if not k.endswith(("running_mean", "running_var",
                                                                                     "num_batches_tracked"))]
    nv_order = [n for n in nv_params if "bn" in n] + [n for n in nv_params if "bn" not in n]
    param = dict(model.named_parameters())
    for name in ("layer1.0.bn1.weight", "layer3.7.se.fc1.weight", "fc.bias", "layer2.0.downsample.1.bias"):
        buffer = saved["optimizer"]["state"][nv_order.index(nvidia_name(name))]["momentum_buffer"]
        assert torch.equal(optimizer.state[param[name]]["momentum_buffer"].flatten(), buffer.flatten()), name

    # The way back: our checkpoint in NVIDIA's layout is the checkpoint NVIDIA wrote.
    ours = {"arch": "se_resnext101_32x4d_nvidia", "num_classes": 10, "model": model.state_dict(),
            "ema": ema.module.state_dict(), "optimizer": optimizer.state_dict(),
            "config": dataclasses.asdict(config), "epoch": 2, "step_in_epoch": 0, "best_top1": 37.5}
    back = to_nvidia_checkpoint(ours)
    assert (back["epoch"], back["best_prec1"]) == (2, 37.5)
    assert list(back["state_dict"]) == list(saved["state_dict"])  # NVIDIA's order: its optimizer indices rely on it
    assert all(torch.equal(back["state_dict"][k], v) for k, v in saved["state_dict"].items())
    assert all(torch.equal(back["state_dict_ema"][k], v) for k, v in saved["state_dict_ema"].items())
    assert [len(g["params"]) for g in back["optimizer"]["param_groups"]] == \
        [len(g["params"]) for g in saved["optimizer"]["param_groups"]]
    assert [g["weight_decay"] for g in back["optimizer"]["param_groups"]] == [0.0, 1 / 16384]
    for index, entry in saved["optimizer"]["state"].items():
        assert torch.equal(back["optimizer"]["state"][index]["momentum_buffer"], entry["momentum_buffer"]), index
    # ... and loads into the optimizer NVIDIA's main.py builds.
    params = [torch.nn.Parameter(v.clone()) for k, v in back["state_dict"].items()
              if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    names = [k for k in back["state_dict"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    their = torch.optim.SGD([{"params": [p for n, p in zip(names, params) if "bn" in n], "weight_decay": 0},
                             {"params": [p for n, p in zip(names, params) if "bn" not in n]}], 0.1, momentum=0.875)
    their.load_state_dict(back["optimizer"])


def test_resnext_train_continues_an_nvidia_run(small_data, tmp_path, capsys):
    torch.manual_seed(1)
    path = tmp_path / "nvidia.pth.tar"
    torch.save(nvidia_checkpoint(resnext.create_model("resnext_tiny", num_classes=10), epoch=1, best=20.0), path)
    code = main(["train", str(small_data), "--arch", "resnext_tiny", "--image-size", "32", "-b", "16", "-j", "0",
                 "--data-backend", "pytorch", "--epochs", "2", "--lr", "0.01", "--momentum", "0.875", "--resume",
                 str(path), "--workspace", str(tmp_path / "ws"), "--no-tensorboard", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "ws" / "experiment_raport.json").read_text().splitlines()
    resume = [entry for entry in (json.loads(line[5:]) for line in lines) if "resume.epoch" in entry.get("data", {})]
    assert resume[0]["data"]["resume.epoch"] == 1  # NVIDIA's start_epoch: the second epoch is trained
    state = final_state(tmp_path / "ws")
    assert (state["epoch"], state["global_step"]) == (2, 20)
    # Another architecture or class count is refused in one line naming both.
    code = main(["train", str(small_data), "--arch", "resnet50", "--data-backend", "pytorch", "-b", "16",
                 "--resume", str(path), "--workspace", str(tmp_path / "other")])
    error = capsys.readouterr().err
    assert code == 2 and "is a resnext_tiny with 10 classes, but this run is a resnet50 with 10" in error


def test_export_nvidia_format_round_trip(small_data, tmp_path, capsys):
    train(tiny_config(small_data, tmp_path / "ws", epochs=1, run_steps=3, use_ema=0.9, training_only=True))
    output = tmp_path / "nvidia.pth.tar"
    assert main(["export", "--weights", str(tmp_path / "ws" / "checkpoint.pth.tar"), "--format", "nvidia",
                 "--output", str(output)]) == 0, capsys.readouterr().err
    exported = torch.load(output, weights_only=True)
    assert set(exported) == {"epoch", "best_prec1", "state_dict", "optimizer", "state_dict_ema"}
    assert all(k.startswith("module.layers.") or k.split(".")[1] in ("conv1", "bn1", "fc")
               for k in exported["state_dict"])
    back = read_resume_checkpoint(output)  # and it reads back as the same weights
    ours = final_state(tmp_path / "ws")
    assert all(torch.equal(back["model"][k], v) for k, v in ours["model"].items())


# ---- configs.yml and launch.py -----------------------------------------------------------------------------

def test_launch_expands_configs_as_launch_py():
    values = expand("resnext101-32x4d", "AMP", "convergence", "DGXA100")
    assert values == {"static_loss_scale": 128, "amp": True, "workers": 10, "prefetch": 4,
                      "gpu_affinity": "socket_unique_contiguous", "label_smoothing": 0.1, "mixup": 0.2,
                      "lr_schedule": "cosine", "momentum": 0.875, "warmup": 8, "epochs": 250,
                      "data_backend": "pytorch", "num_classes": 1000, "image_size": 224, "interpolation": "bilinear",
                      "optimizer_batch_size": 1024, "lr": 1.024, "weight_decay": 6.103515625e-05,
                      "arch": "resnext101-32x4d", "batch_size": 128, "memory_format": "nhwc", "print_freq": 20,
                      "training_only": False, "evaluate": False, "save_checkpoints": True}
    short = expand("resnet50", "TF32", "benchmark_training_short", "DGXA100")
    assert (short["data_backend"], short["prof"], short["epochs"], short["lr"], short["batch_size"]) == (
        "synthetic", 100, 1, 2.048, 256) and "amp" in short and not short["amp"]
    # resnet50's FP32 configs name no arch: main.py's default (resnet50) applies.
    assert "arch" not in expand("resnet50", "FP32", "evaluate", "DGX1V")
    assert expand("se-resnext101-32x4d", "AMP", "benchmark_inference", "DGX1V")["batch_size"] == 112
    with pytest.raises(UserError, match="--platform DGXH100: model resnet50 has no such entry; available: DGX1V"):
        expand("resnet50", "AMP", "convergence", "DGXH100")


@needs_yaml
def test_launch_reads_a_users_configs_yml(tmp_path, capsys):
    (tmp_path / "configs.yml").write_text("""
precision:
    AMP: {static_loss_scale: 128, amp: True}
platform:
    LAB: {workers: 3, gpu_affinity: socket}
mode:
    quick: &quick {print_freq: 1, epochs: 2}
    quicker: {<<: *quick, epochs: 1, prof: 5}
anchors:
    base: &base {lr: 0.5, lr_schedule: cosine, warmup: 1}
models:
    resnext101-32x4d:
        LAB:
            AMP: {<<: *base, arch: resnext101-32x4d, batch_size: 32}
""")
    assert expand("resnext101-32x4d", "amp", "quicker", "LAB", tmp_path / "configs.yml") == {
        "static_loss_scale": 128, "amp": True, "workers": 3, "gpu_affinity": "socket", "lr": 0.5,
        "lr_schedule": "cosine", "warmup": 1, "arch": "resnext101-32x4d", "batch_size": 32, "print_freq": 1,
        "epochs": 1, "prof": 5}
    (tmp_path / "broken.yml").write_text("precision: [unclosed")
    assert main(["launch", "--cfg_file", str(tmp_path / "broken.yml"), "--model", "m", "--precision", "AMP",
                 "--mode", "quick", "--platform", "LAB", "/d"]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


@pytest.mark.skipif(not NVIDIA_CONFIGS.exists(), reason="needs a local copy of NVIDIA's repository")
def test_shipped_values_equal_nvidias_configs_yml(tmp_path):
    text = subprocess.run(["git", "-C", str(NVIDIA_CONFIGS / "repo"), "show",
                           "HEAD:PyTorch/Classification/ConvNets/configs.yml"], capture_output=True, text=True,
                          check=True).stdout
    (tmp_path / "configs.yml").write_text(text)
    theirs = load_configs(tmp_path / "configs.yml")
    for model in MODELS:
        for platform, precisions in theirs["models"][model].items():
            for precision in precisions:
                for mode in MODES:
                    assert expand(model, precision, mode, platform) == \
                        expand(model, precision, mode, platform, tmp_path / "configs.yml")


def every_line():
    configs = load_configs()
    for model in MODELS:
        for platform, precisions in configs["models"][model].items():
            for precision in precisions:
                for mode in MODES:
                    yield model, precision, mode, platform


def test_every_configs_line_parses_into_nvidias_values():
    lines = list(every_line())
    assert len(lines) == (6 * 2 + 5 * 2 + 5 * 2) * 5  # (platforms x precisions of each model) x 5 modes
    for model, precision, mode, platform in lines:
        values = expand(model, precision, mode, platform)
        config = parse(*train_argv(values), "/imagenet", "--epochs", "90")  # the user's flags win, as in launch.py
        config.validate()
        for key, value in values.items():
            if key != "epochs":
                assert getattr(config, key) == value, (model, precision, mode, platform, key)
        assert config.epochs == 90 and config.data == "/imagenet"


def test_launch_prints_and_runs_through_torchrun_for_many_processes(capsys):
    argv = ["launch", "--dry-run", "--nproc_per_node", "8", "--model", "resnext101-32x4d", "--precision", "AMP",
            "--mode", "convergence", "--platform", "DGXA100", "/imagenet", "--epochs", "90", "--mixup", "0.0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:7] == ["torchrun", "--nproc_per_node=8", "--nnodes=1", "--node_rank=0",
                           "--master_addr=127.0.0.1", "--master_port=29500", "-m"]
    assert printed[7:9] == ["resnext", "train"] and printed[-5:] == ["/imagenet", "--epochs", "90", "--mixup", "0.0"]
    assert main(["launch", "--model", "efficientnet-b0", "--precision", "AMP", "--mode", "convergence",
                 "--platform", "DGXA100", "/x"]) == 2
    assert "--model efficientnet-b0: the configs file has no such entry" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model, mode", [("resnext101-32x4d", mode) for mode in MODES] +
                         [("resnet50", "convergence"), ("se-resnext101-32x4d", "convergence")])
def test_configs_lines_run_on_the_cpu(model, mode, small_data, tmp_path, capsys, caplog):
    # launch.py's line, with NVIDIA README's `--epochs 1 --prof N` and a batch of 2 at 64 px so a CPU runs it.
    argv = ["launch", "--model", model, "--precision", "AMP", "--mode", mode, "--platform", "DGXA100",
            str(small_data), "--epochs", "1", "--prof", "1", "-b", "2", "--optimizer-batch-size", "-1",
            "--image-size", "64", "-j", "0", "--workspace", str(tmp_path), "--no-tensorboard"]
    with caplog.at_level(logging.INFO, logger="resnext"):
        assert main(argv) == 0, capsys.readouterr().err
    assert "--gpu-affinity socket_unique_contiguous: this process runs without a GPU" in caplog.text
    if mode != "benchmark_training_short":  # synthetic data: 1000 classes
        assert "the classifier has 1000 outputs for 10 class folders" in caplog.text  # configs.yml's num_classes
    if mode in ("evaluate", "benchmark_inference"):
        assert "--evaluate without weights: validating the freshly initialised model" in caplog.text


# ---- NVIDIA's loop semantics -------------------------------------------------------------------------------

def test_prof_trains_the_first_batches_of_every_epoch(small_data, tmp_path):
    # 160 images of 16: 10 batches per epoch; --prof 3 trains 3 of them in each of the 2 epochs and validates on
    # at most 3 batches; --run-epochs 0 runs none; --early-stopping-patience 0 is off.
    summary = train(tiny_config(small_data, tmp_path / "prof", epochs=2, prof=3, early_stopping_patience=0))
    state = final_state(tmp_path / "prof")
    assert (state["epoch"], state["global_step"], summary["exit.reason"]) == (2, 6, "completed")
    assert all(e["data"]["val.images"] <= 3 * 16 for e in log_entries(tmp_path / "prof") if "val.images" in e["data"])
    summary = train(tiny_config(small_data, tmp_path / "none", epochs=2, run_epochs=0))
    assert summary["exit.reason"] == "stopped" and summary["train.images"] == 0


def test_ema_moves_after_every_micro_batch(small_data, tmp_path, monkeypatch):
    steps = []
    original = ModelEMA.update
    monkeypatch.setattr(ModelEMA, "update", lambda self, model, step: (steps.append(step), original(self, model,
                                                                                                   step)))
    common = dict(epochs=1, run_steps=2, batch_size=16, optimizer_batch_size=32, use_ema=0.9, training_only=True)
    train(tiny_config(small_data, tmp_path / "nvidia", ema_update="micro-batch", **common))
    assert steps == [0, 1, 2, 3]  # NVIDIA's: t counts batches, two per optimizer step
    steps.clear()
    train(tiny_config(small_data, tmp_path / "ours", ema_update="optimizer-step", **common))
    assert steps == [0, 1]


def test_validation_loss_is_nvidias_criterion():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images, labels = torch.randn(8, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    class Loader(list):
        class_names = ["a", "b", "c"]

    loader = Loader([(images[:5], labels[:5]), (images[5:], labels[5:])])
    result = evaluate(model, loader, device=torch.device("cpu"), label_smoothing=0.1)
    logits = model(images)
    log_probs = torch.log_softmax(logits, 1)
    by_hand = (0.9 * -log_probs.gather(1, labels[:, None]).squeeze(1) + 0.1 * -log_probs.mean(1)).mean()
    assert result["loss"] == pytest.approx(by_hand.item(), rel=1e-5)
    assert TrainConfig(label_smoothing=0.1).val_label_smoothing() == 0.1
    assert TrainConfig(label_smoothing=0.1, mixup=0.2).val_label_smoothing() == 0.0  # NLLMultiLabelSmooth: plain CE
    assert TrainConfig(label_smoothing=0.1, val_loss="cross-entropy").val_label_smoothing() == 0.0


@needs_dali
def test_dali_pipelines_nvidias_and_ours(tmp_path):
    from resnext.data import create_loader

    generator = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for index in range(4):  # photographs larger than the crop, not square: resizes shrink them
                pixels = generator.integers(0, 256, (90, 120, 3), dtype=np.uint8)
                Image.fromarray(pixels).resize((150, 110)).save(tmp_path / split / name / f"{index}.jpg")

    def first_batch(**options):
        loader = create_loader("dali-cpu", tmp_path, batch_size=8, image_size=32, workers=1, device="cpu",
                               **options)
        loader.set_epoch(0)
        return next(iter(loader))

    # Evaluation: NVIDIA's resize-shorter to 32 + 32 without antialiasing, then DALI's center crop; ours resizes
    # with antialiasing and torchvision's rounding. The same images, slightly different pixels.
    nvidia, labels = first_batch(train=False, crop_pct=0.5, dali_ops="nvidia")
    ours, same_labels = first_batch(train=False, crop_pct=0.5, dali_ops="resnext")
    assert nvidia.shape == ours.shape == (8, 3, 32, 32) and torch.equal(labels, same_labels)
    difference = (nvidia - ours).abs().mean().item()
    assert 0 < difference < 0.5  # in normalized units (about 0.23 per level of 255 / 0.226 std)
    images, _ = first_batch(train=True, crop_pct=0.5, dali_ops="nvidia", interpolation="triangular")
    assert images.shape == (8, 3, 32, 32) and torch.isfinite(images).all()


def test_jit_script_trains(small_data, tmp_path):
    summary = train(tiny_config(small_data, tmp_path, epochs=1, run_steps=1, training_only=True, jit="script"))
    assert summary["exit.reason"] == "stopped" and "fc.weight" in final_state(tmp_path)["model"]


def test_trt_and_fused_se_compute_the_same_function():
    torch.manual_seed(0)
    reference = resnext.create_model("se_resnext101_32x4d_nvidia", 10).train()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = reference(images)
        for se_linear, fused in ((True, True), (True, False), (False, True)):
            other = resnext.create_model("se_resnext101_32x4d_nvidia", 10, se_linear=se_linear, fused_se=fused)
            other.train().load_state_dict(reference.state_dict())
            assert torch.allclose(other(images), expected, atol=1e-4)
    assert TrainConfig(trt=True, fused_se=False).model_options()["se_linear"] is False


def test_pretrained_offline_is_one_line(small_data, tmp_path, monkeypatch, capsys):
    from resnext import weights

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RESNEXT_HOME", str(tmp_path / "home"))
    source = dataclasses.replace(weights.PRETRAINED["nvidia-ngc-resnet50"], url=f"http://127.0.0.1:{port}/rn50.pth")
    monkeypatch.setitem(weights.PRETRAINED, "nvidia-ngc-resnet50", source)
    code = main(["train", str(small_data), "--pretrained", "--data-backend", "pytorch", "-b", "16", "--workspace",
                 str(tmp_path / "ws")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("resnext train: error: cannot download nvidia-ngc-resnet50 (")
    with pytest.raises(UserError, match="NGC weights, which exist for resnet50"):
        weights.pretrained_weights(TrainConfig(arch="resnext_tiny", pretrained=True))


# ---- GPU affinity (gpu_affinity.py's modes on a made-up machine) ---------------------------------------------

# Two sockets of 4 physical cores with 2 hyper-threads each (cpu n and n + 8); GPUs 0, 1 on socket 0, GPUs 2, 3 on 1.
SOCKETS = [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
GPU_CPUS = [SOCKETS[0], SOCKETS[0], SOCKETS[1], SOCKETS[1]]
SIBLINGS = [[n, n + 8] for n in range(8)]


@pytest.mark.parametrize("mode, expected", [
    ("socket", [SOCKETS[0], SOCKETS[0], SOCKETS[1], SOCKETS[1]]),
    ("socket_single", [[0, 8], [0, 8], [4, 12], [4, 12]]),
    ("socket_single_unique", [[0, 8], [1, 9], [4, 12], [5, 13]]),
    ("socket_unique_interleaved", [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]),
    ("socket_unique_contiguous", [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]]),
    ("none", [list(range(16))] * 4),
])
def test_affinity_modes(mode, expected):
    assert core_sets(mode, GPU_CPUS, set(range(16)), SIBLINGS) == expected


def test_affinity_balances_and_respects_the_allowed_cores():
    # Socket 1 has 3 GPUs: every GPU gets 4 // 3 = 1 physical core (balanced), socket 0's GPU too.
    gpus = [SOCKETS[0], SOCKETS[1], SOCKETS[1], SOCKETS[1]]
    assert core_sets("socket_unique_contiguous", gpus, set(range(16)), SIBLINGS) == [[0, 8], [4, 12], [5, 13],
                                                                                     [6, 14]]
    assert core_sets("socket_unique_contiguous", gpus, set(range(16)), SIBLINGS, balanced=False)[0] == SOCKETS[0]
    # Cores this process may not use are left out; "single" logical drops the hyper-thread siblings.
    assert core_sets("socket", GPU_CPUS, set(range(16)) - {0, 8}, SIBLINGS)[0] == [1, 2, 3, 9, 10, 11]
    assert core_sets("socket_unique_contiguous", GPU_CPUS, set(range(16)), SIBLINGS, logical="single")[1] == [2, 3]
    with pytest.raises(UserError, match="overlap without being the same socket"):
        core_sets("socket", [[0, 1], [1, 2]], {0, 1, 2}, [])
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


def test_affinity_without_a_gpu_is_one_notice(caplog):
    with caplog.at_level(logging.INFO, logger="resnext"):
        assert set_gpu_affinity("socket_unique_contiguous", DistEnv()) is None
    assert [r.getMessage() for r in caplog.records] == [
        "--gpu-affinity socket_unique_contiguous: this process runs without a GPU, so its CPU affinity stays as it "
        "is."]


# ---- AutoAugment: NVIDIA's policy ------------------------------------------------------------------------

def test_autoaugment_is_nvidias_policy():
    assert len(POLICIES) == 25 and POLICIES[6] == ((0.4, "equalize", 8), (0.8, "solarizeadd", 3))
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())

    def same(ours, theirs):
        return np.array_equal(ours.permute(1, 2, 0).numpy(), np.asarray(theirs))

    grey = (128, 128, 128)
    assert same(apply_op(image, "translateX", 10), pil.transform(pil.size, Image.AFFINE, (1, 0, 10, 0, 1, 0),
                                                                 fillcolor=grey))
    rotated = pil.convert("RGBA").rotate(21)
    rotated = Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert("RGB")
    assert same(apply_op(image, "rotate", 21), rotated)
    assert same(apply_op(image, "solarize", 76.8), ImageOps.solarize(pil, 76.8))
    assert same(apply_op(image, "solarize", 256), pil)
    assert same(apply_op(image, "posterize", 1), ImageOps.posterize(pil, 1))
    assert same(apply_op(image, "equalize", 0), ImageOps.equalize(pil))
    assert same(apply_op(image, "solarizeadd", 77), pil.point([min(255, i + 77) if i < 128 else i
                                                               for i in range(256)] * 3))
    color = apply_op(image, "color", 1.54).int() - torch.from_numpy(np.asarray(ImageEnhance.Color(pil).enhance(1.54))
                                                                    ).permute(2, 0, 1).int()
    assert color.abs().max() <= 1  # rounding
    sheared = apply_op(image, "shearX", 0.12).float()
    theirs = torch.from_numpy(np.asarray(pil.transform(pil.size, Image.AFFINE, (1, 0.12, 0, 0, 1, 0),
                                                       Image.BILINEAR, fillcolor=grey))).permute(2, 0, 1).float()
    assert (sheared - theirs).abs().mean() < 2  # the same geometry (interpolation rounding at the edges)
    policy = NvidiaAutoAugment()
    assert torch.equal(policy(image, random.Random(5)), policy(image, random.Random(5)))


# ---- docs/nvidia.md ------------------------------------------------------------------------------------------

def test_docs_table_is_generated_from_the_definitions():
    text = (ROOT / "docs" / "nvidia.md").read_text()
    assert text == nvidia_doc(), "docs/nvidia.md is stale: run python scripts/write_nvidia_doc.py"
    for flag in ("--gpu-affinity", "--jit", "--trt", "--fused_se", "--pretrained", "--lr-granularity",
                 "--wd-exempt", "--crop-pct", "resnext launch --model M"):
        assert f"`{flag}" in text, flag
