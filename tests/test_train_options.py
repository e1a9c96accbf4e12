"""Every `resnext train` option does what its help says: parsed into the config, and seen in a run's outputs."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch
from optional import needs_tensorboard

from resnext.checkpoint import list_checkpoints, read_checkpoint
from resnext.cli import build_parser
from resnext.cli.train import config_from_args
from resnext.errors import UserError
from resnext.logger import RunLogger
from resnext.recipe import TrainConfig
from resnext.training import train

from test_step import CHANGE_TOLERANCE, LOSS_RTOL, change_difference
from test_train import assert_same_weights, final_state, log_entries, tiny_config

TESTS = Path(__file__).parent

# Where each option's behaviour is checked (beyond the parse test below). A new option without an entry here
# fails test_every_option_has_a_behaviour_test: no dead flags.
BEHAVIOUR_TESTS = {
    "--preset": "test_recipe.py::test_presets_are_nvidias_configs test_train_options.py::test_preset_then_flags",
    "--data-backend": "test_train_options.py::test_other_backends_train",
    "--workers": "test_train.py::test_training_learns_the_embedded_dataset",
    "--prefetch": "test_train_options.py::test_other_backends_train",
    "--image-size": "test_train_options.py::test_preprocessing_options_are_recorded",
    "--crop-pct": "test_train_options.py::test_preprocessing_options_are_recorded",
    "--interpolation": "test_train_options.py::test_preprocessing_options_are_recorded "
                       "test_nvidia.py::test_dali_pipelines_nvidias_and_ours",
    "--augmentation": "test_train_options.py::test_other_backends_train",
    "--jpeg-decode": "test_data_fast_paths.py::test_train_jpeg_decode_flag_reaches_the_training_loader",
    "--join-timeout": "test_reliability_distributed.py::test_a_lost_node_relaunched_rejoins_and_the_job_ends_bit_exact",
    "--synthetic-batches": "test_train_options.py::test_other_backends_train",
    "--exif-orientation": "test_data_orientation.py::test_train_records_the_choice_and_evaluate_follows_it",
    "--class-map": "test_data_classes.py::test_resume_refuses_renamed_classes_and_keeps_the_checkpoints_list "
                   "test_data_classes.py::test_pretrained_weights_match_by_name_or_train_a_new_head",
    "--arch": "test_train.py::test_resume_refuses_another_architecture",
    "--num_classes": "test_train_options.py::test_other_backends_train",
    "--conv_init": "test_models.py::test_conv_init_modes_and_last_bn_zero_init",
    "--last_bn_0_init": "test_models.py::test_conv_init_modes_and_last_bn_zero_init",
    "--pretrained-from-file": "test_train_options.py::test_fine_tune_from_pretrained_file",
    "--ignore-head": "test_train_options.py::test_fine_tune_from_pretrained_file",
    "--epochs": "test_train.py::test_resume_after_run_epochs_is_bit_exact",
    "--run-epochs": "test_train.py::test_resume_after_run_epochs_is_bit_exact "
                    "test_nvidia.py::test_prof_trains_the_first_batches_of_every_epoch",
    "--early-stopping-patience": "test_train_options.py::test_early_stopping",
    "--prof": "test_nvidia.py::test_prof_trains_the_first_batches_of_every_epoch",
    "--run-steps": "test_train.py::test_resume_mid_epoch_is_bit_exact",
    "--dali-ops": "test_nvidia.py::test_dali_pipelines_nvidias_and_ours",
    "--gpu-affinity": "test_nvidia.py::test_affinity_modes test_nvidia.py::test_affinity_without_a_gpu_is_one_notice",
    "--trt": "test_nvidia.py::test_trt_and_fused_se_compute_the_same_function",
    "--fused_se": "test_nvidia.py::test_trt_and_fused_se_compute_the_same_function",
    "--pretrained": "test_nvidia.py::test_pretrained_offline_is_one_line",
    "--jit": "test_nvidia.py::test_jit_script_trains",
    "--lr-granularity": "test_nvidia.py::test_per_step_lr_is_our_opt_in "
                        "test_nvidia.py::test_a_run_logs_one_lr_per_epoch",
    "--wd-exempt": "test_nvidia.py::test_weight_decay_groups_are_nvidias_name_filter",
    "--ema-update": "test_nvidia.py::test_ema_moves_after_every_micro_batch",
    "--val-loss": "test_nvidia.py::test_validation_loss_is_nvidias_criterion",
    "--batch-size": "test_train.py::test_torchrun_two_ranks_match_one_process_with_twice_the_batch",
    "--optimizer-batch-size": "test_train.py::test_resume_mid_epoch_is_bit_exact",
    "--lr": "test_train.py::test_training_learns_the_embedded_dataset",
    "--lr-schedule": "test_recipe.py::test_step_schedule_uses_nvidias_milestones",
    "--end-lr": "test_recipe.py::test_cosine_ends_at_end_lr_and_linear_schedule",
    "--warmup": "test_recipe.py::test_warmup_then_cosine_per_step",
    "--label-smoothing": "test_recipe.py::test_training_step_loss_is_label_smoothed_cross_entropy",
    "--mixup": "test_train.py::test_resume_after_run_epochs_is_bit_exact",
    "--optimizer": "test_train_options.py::test_optimizer_options_reach_the_optimizer",
    "--momentum": "test_recipe.py::test_sgd_step_applies_weight_decay_and_momentum_by_hand",
    "--weight-decay": "test_recipe.py::test_sgd_step_applies_weight_decay_and_momentum_by_hand",
    "--bn-weight-decay": "test_recipe.py::test_weight_decay_skips_bn_and_biases",
    "--rmsprop-alpha": "test_train_options.py::test_optimizer_options_reach_the_optimizer",
    "--rmsprop-eps": "test_train_options.py::test_optimizer_options_reach_the_optimizer",
    "--nesterov": "test_train_options.py::test_optimizer_options_reach_the_optimizer",
    "--grad-clip": "test_train_options.py::test_grad_clip_bounds_the_update",
    "--use-ema": "test_recipe.py::test_ema_follows_nvidias_decay_rule",
    "--precision": "test_train_options.py::test_mixed_precision_on_cpu",
    "--amp": "test_train_options.py::test_mixed_precision_on_cpu",
    "--memory-format": "test_train_options.py::test_mixed_precision_on_cpu",
    "--static-loss-scale": "test_train_options.py::test_mixed_precision_on_cpu",
    "--dynamic-loss-scale": "test_recipe.py::test_fp16_scaler_is_nvidias_dynamic_scaler",
    "--compile": "test_train_options.py::test_compile test_step.py::test_compiled_step_matches_eager",
    "--cuda-graphs": "test_step.py::test_cuda_graphs_refusals_are_one_sentence_before_set_up "
                     "test_step.py::test_cuda_graph_step_matches_eager",
    "--sync-bn": "test_train.py::test_torchrun_two_ranks_match_one_process_with_twice_the_batch",
    "--deterministic": "test_train_options.py::test_seed_and_deterministic",
    "--device": "test_train_options.py::test_device_errors",
    "--dist-backend": "test_train_options.py::test_device_errors",
    "--seed": "test_train_options.py::test_seed_and_deterministic",
    "--max-nonfinite-steps": "test_train.py::test_nonfinite_losses_stop_training_and_keep_the_last_checkpoint",
    "--workspace": "test_train.py::test_resume_after_run_epochs_is_bit_exact",
    "--resume": "test_train.py::test_resume_after_run_epochs_is_bit_exact",
    "--checkpoint-filename": "test_train_options.py::test_checkpoint_files_and_retention",
    "--gather-checkpoints": "test_train_options.py::test_checkpoint_files_and_retention",
    "--checkpoint-interval": "test_train.py::test_resume_mid_epoch_is_bit_exact",
    "--no-checkpoints": "test_train_options.py::test_checkpoint_files_and_retention",
    "--evaluate": "test_train.py::test_evaluate_only_on_a_finished_checkpoint",
    "--training-only": "test_train_options.py::test_checkpoint_files_and_retention",
    "--print-freq": "test_train_options.py::test_logs_tensorboard_progress_and_topk",
    "--raport-file": "test_train_options.py::test_logs_tensorboard_progress_and_topk",
    "--topk": "test_train_options.py::test_logs_tensorboard_progress_and_topk",
    "--tensorboard": "test_train_options.py::test_logs_tensorboard_progress_and_topk",
    "--progress": "test_train_options.py::test_logs_tensorboard_progress_and_topk",
}


def train_parser() -> argparse.ArgumentParser:
    parser = build_parser(["train"])
    return next(a for a in parser._subparsers._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]


def long_option(action: argparse.Action) -> str:
    """The option's main spelling: its longest, not counting the --no-X twin of a --X/--no-X pair."""
    spellings = [s for s in action.option_strings if not s.startswith("--no-")] or action.option_strings
    return max(spellings, key=len)


def test_every_option_has_a_behaviour_test():
    options = {long_option(a) for a in train_parser()._actions if a.option_strings} - {"--help"}
    aliases = {"--learning-rate": "--lr", "--num-classes": "--num_classes", "--conv-init": "--conv_init",
               "--last-bn-0-init": "--last_bn_0_init"}
    options = {aliases.get(o, o) for o in options}
    assert options == set(BEHAVIOUR_TESTS), options ^ set(BEHAVIOUR_TESTS)
    sources = {path.name: path.read_text() for path in TESTS.glob("test_*.py")}
    for option, where in BEHAVIOUR_TESTS.items():
        for reference in where.split():
            module, function = reference.split("::")
            assert f"def {function}(" in sources[module], f"{option}: {reference} does not exist"


def test_every_option_reaches_the_config():
    argv = ["train", "/data", "--data-backend", "gpu", "-j", "3", "--prefetch", "4", "--image-size", "160",
            "--crop-pct", "0.9", "--interpolation", "bicubic", "--augmentation", "autoaugment",
            "--synthetic-batches", "7", "--exif-orientation", "--class-map", "map.json", "-a", "resnet50",
            "--num-classes", "12", "--conv-init", "fan_out",
            "--last-bn-0-init", "--pretrained-from-file", "w.pth", "--ignore-head", "--epochs", "40",
            "--run-epochs", "3", "--early-stopping-patience", "5", "--prof", "9", "-b", "32",
            "--optimizer-batch-size", "64", "--learning-rate", "0.3", "--lr-schedule", "step", "--end-lr", "0.001",
            "--warmup", "2", "--label-smoothing", "0.2", "--mixup", "0.4", "--optimizer", "rmsprop",
            "--momentum", "0.5", "--wd", "0.01", "--bn-weight-decay", "--rmsprop-alpha", "0.8",
            "--rmsprop-eps", "0.01", "--nesterov", "--grad-clip", "2.5", "--use-ema", "0.999",
            "--precision", "amp-bf16", "--memory-format", "nhwc", "--static-loss-scale", "64",
            "--no-dynamic-loss-scale", "--compile", "--cuda-graphs", "--sync-bn", "--deterministic", "--device", "cpu",
            "--dist-backend", "gloo", "--seed", "11", "--max-nonfinite-steps", "7", "--workspace", "ws",
            "--resume", "auto", "--checkpoint-filename", "last.pt", "--gather-checkpoints", "-1",
            "--checkpoint-interval", "50", "--no-checkpoints", "--training-only", "-p", "3",
            "--raport-file", "log.json", "--topk", "3", "--no-tensorboard", "--progress", "--dali-ops", "resnext",
            "--gpu-affinity", "socket", "--trt", "--fused_se", "False", "--pretrained", "--jit", "script",
            "--run-steps", "4", "--lr-granularity", "step", "--wd-exempt", "bn-and-bias", "--ema-update",
            "optimizer-step", "--val-loss", "cross-entropy", "--amp", "--jpeg-decode", "scaled",
            "--join-timeout", "30"]
    args = build_parser(argv).parse_args(argv)
    config = config_from_args(args)
    expected = dict(data="/data", data_backend="gpu", workers=3, prefetch=4, image_size=160, crop_pct=0.9,
                    interpolation="bicubic", augmentation="autoaugment", synthetic_batches=7, exif_orientation=True,
                    class_map="map.json", arch="resnet50",
                    num_classes=12, conv_init="fan_out", last_bn_0_init=True, pretrained_from_file="w.pth",
                    ignore_head=True, epochs=40, run_epochs=3, early_stopping_patience=5, prof=9, batch_size=32,
                    optimizer_batch_size=64, lr=0.3, lr_schedule="step", end_lr=0.001, warmup=2,
                    label_smoothing=0.2, mixup=0.4, optimizer="rmsprop", momentum=0.5, weight_decay=0.01,
                    bn_weight_decay=True, rmsprop_alpha=0.8, rmsprop_eps=0.01, nesterov=True, grad_clip=2.5,
                    use_ema=0.999, precision="amp-bf16", memory_format="nhwc", static_loss_scale=64,
                    dynamic_loss_scale=False, compile=True, cuda_graphs=True, sync_bn=True, deterministic=True,
                    device="cpu", dist_backend="gloo", join_timeout=30, jpeg_decode="scaled", seed=11,
                    max_nonfinite_steps=7, workspace="ws", resume="auto",
                    checkpoint_filename="last.pt", gather_checkpoints=-1, checkpoint_interval=50,
                    save_checkpoints=False, training_only=True, print_freq=3, raport_file="log.json", topk=3,
                    tensorboard=False, progress=True, dali_ops="resnext", gpu_affinity="socket", trt=True,
                    fused_se=False, pretrained=True, jit="script", run_steps=4, lr_granularity="step",
                    wd_exempt="bn-and-bias", ema_update="optimizer-step", val_loss="cross-entropy", amp=True)
    for field, value in expected.items():
        assert getattr(config, field) == value, field
    assert set(expected) | {"preset", "evaluate"} == set(TrainConfig.__dataclass_fields__)  # --evaluate excludes
    # --training-only; the evaluate test covers it
    amp = config_from_args(build_parser(["train"]).parse_args(["train", "/data", "--amp"]))
    assert amp.amp and amp.training_precision("cuda") == "amp" and amp.training_precision("cpu") == "amp"
    with pytest.raises(UserError, match="--amp conflicts"):
        config_from_args(build_parser(["train"]).parse_args(["train", "/d", "--amp", "--precision", "fp32"])).validate()


def test_preset_then_flags():
    argv = ["train", "/data", "--preset", "nvidia-250ep-amp", "-b", "32"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert (config.epochs, config.mixup, config.lr, config.optimizer_batch_size) == (250, 0.2, 1.024, 1024)
    assert config.batch_size == 32 and config.preset == "nvidia-250ep-amp"  # the explicit flag wins


def test_optimizer_options_reach_the_optimizer(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path / "rms", epochs=1, prof=2, training_only=True, optimizer="rmsprop",
                      rmsprop_alpha=0.8, rmsprop_eps=0.01, momentum=0.5))
    group = final_state(tmp_path / "rms")["optimizer"]["param_groups"][0]
    assert (group["alpha"], group["eps"], group["momentum"]) == (0.8, 0.01, 0.5)
    assert "square_avg" in next(iter(final_state(tmp_path / "rms")["optimizer"]["state"].values()))
    train(tiny_config(small_data, tmp_path / "sgd", epochs=1, prof=2, training_only=True, nesterov=True))
    groups = final_state(tmp_path / "sgd")["optimizer"]["param_groups"]
    assert all(g["nesterov"] for g in groups) and groups[1]["weight_decay"] == 1 / 16384
    assert groups[0]["weight_decay"] == 0.0  # NVIDIA's order: the exempt group first


def test_grad_clip_bounds_the_update(small_data, tmp_path):
    # With plain SGD (no momentum, no decay) one step moves the weights by lr x clipped gradient.
    common = dict(epochs=1, prof=1, training_only=True, momentum=0.0, weight_decay=0.0, lr=1.0, warmup=0,
                  label_smoothing=0.0)
    train(tiny_config(small_data, tmp_path / "start", prof=1, lr=1e-30, **{k: v for k, v in common.items()
                                                                         if k not in ("prof", "lr")}))
    train(tiny_config(small_data, tmp_path / "clipped", grad_clip=0.01, **common))
    before, after = final_state(tmp_path / "start")["model"], final_state(tmp_path / "clipped")["model"]
    keys = [k for k in before if before[k].is_floating_point() and "running" not in k]
    step = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in keys))
    assert step.item() == pytest.approx(0.01, rel=1e-2)


def test_mixed_precision_on_cpu(small_data, tmp_path):
    summary = train(tiny_config(small_data, tmp_path / "bf16", epochs=1, precision="amp-bf16",
                                memory_format="nhwc", print_freq=1))
    assert summary["best.top1"] >= 0 and summary["exit.reason"] == "completed"
    steps = [e["data"] for e in log_entries(tmp_path / "bf16") if len(e["step"]) == 2]
    assert all(torch.isfinite(torch.tensor(s["train.loss"])) for s in steps) and "train.grad_scale" not in steps[0]
    train(tiny_config(small_data, tmp_path / "fp16", epochs=1, prof=3, training_only=True, precision="amp",
                      static_loss_scale=32, print_freq=1))
    scales = [e["data"]["train.grad_scale"] for e in log_entries(tmp_path / "fp16") if len(e["step"]) == 2]
    assert scales[0] in (32.0, 16.0, 8.0)  # starts at --static-loss-scale (halved on an fp16 overflow)


@pytest.mark.slow
def test_compile(small_data, tmp_path):
    """--compile (the whole step compiled) resumes exactly, writes checkpoints an eager run continues and continues an
    eager run's: a run switching eager -> compiled -> eager logs and saves what a compiled run does, within
    test_step's tolerances."""
    # 5 steps of 2 micro-batches with MixUp: test_step's shapes, so the graphs compiled there are reused. A small,
    # clipped LR, as in test_step: at this test's default LR (0.032) the loss rises and the steps amplify rounding.
    options = dict(epochs=1, training_only=True, mixup=0.2, optimizer_batch_size=32, print_freq=1, lr=0.01,
                   grad_clip=1.0)
    train(tiny_config(small_data, tmp_path / "compiled", compile=True, **options))
    train(tiny_config(small_data, tmp_path / "split", compile=True, run_steps=2, **options))
    train(tiny_config(small_data, tmp_path / "split", compile=True, resume="auto", **options))
    compiled = final_state(tmp_path / "compiled")
    assert_same_weights(compiled, final_state(tmp_path / "split"))  # the same compiled arithmetic at every step

    switched = tmp_path / "switched"
    train(tiny_config(small_data, switched, run_steps=2, **options))
    train(tiny_config(small_data, switched, run_steps=2, compile=True, resume="auto", **options))
    summary = train(tiny_config(small_data, switched, resume="auto", **options))
    assert summary["exit.reason"] == "completed"
    mixed = final_state(switched)
    assert mixed["global_step"] == compiled["global_step"] == 5
    assert not any(k.startswith("_orig_mod") for k in compiled["model"])  # clean names saved
    assert all(type(g["lr"]) is float for g in compiled["optimizer"]["param_groups"])  # not the step's LR tensor
    start = tiny_start_weights(small_data, tmp_path)
    assert change_difference(mixed["model"], compiled["model"], start) < CHANGE_TOLERANCE

    def steps(workspace):  # the last entry written for each step, as readers keep it
        return {tuple(e["step"]): e["data"] for e in log_entries(workspace) if len(e["step"]) == 2}

    compiled_steps, mixed_steps = steps(tmp_path / "compiled"), steps(switched)
    assert compiled_steps.keys() == mixed_steps.keys() and len(compiled_steps) == 5
    for key, data in compiled_steps.items():
        assert mixed_steps[key].keys() == data.keys()
        assert mixed_steps[key]["train.loss"] == pytest.approx(data["train.loss"], rel=LOSS_RTOL)
        assert mixed_steps[key]["train.lr"] == data["train.lr"]


def tiny_start_weights(data, tmp_path) -> dict:
    """The initial weights of tiny_config's runs (the seed fixes them): a run of one step at LR ~0 saves them."""
    train(tiny_config(data, tmp_path / "start", epochs=1, run_steps=1, training_only=True, lr=1e-30, momentum=0.0,
                      weight_decay=0.0))
    return final_state(tmp_path / "start")["model"]


def test_seed_and_deterministic(small_data, tmp_path):
    try:
        for name, seed in (("a", 1), ("b", 1), ("c", 2)):
            train(tiny_config(small_data, tmp_path / name, epochs=1, prof=2, training_only=True, seed=seed,
                              deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    a, b, c = (final_state(tmp_path / n)["model"]["fc.weight"] for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_device_errors(small_data, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no CUDA GPU"):
        train(tiny_config(small_data, tmp_path, device="cuda"))
    with pytest.raises(UserError, match="not a device name"):
        train(tiny_config(small_data, tmp_path, device="tpu9"))
    # A single process starts no process group, so --dist-backend matters under torchrun only (the torchrun test
    # runs gloo); nccl without GPUs is refused before any rendezvous.
    from resnext.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="nccl needs GPUs"):
        setup("cpu", "nccl")


def test_checkpoint_files_and_retention(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path / "keep3", epochs=4, training_only=True, gather_checkpoints=3,
                      checkpoint_filename="last.pt"))
    assert [p.name for p in list_checkpoints(tmp_path / "keep3")] == [
        "checkpoint-0004-00000040.pt", "checkpoint-0003-00000030.pt", "checkpoint-0002-00000020.pt"]
    assert read_checkpoint(tmp_path / "keep3" / "last.pt")["epoch"] == 4
    assert not (tmp_path / "keep3" / "model_best.pth.tar").exists()  # --training-only: nothing is "best"
    train(tiny_config(small_data, tmp_path / "default", epochs=3, training_only=True))
    assert len(list_checkpoints(tmp_path / "default")) == 1  # NVIDIA's 0: only the last (and the best)
    train(tiny_config(small_data, tmp_path / "all", epochs=3, training_only=True, gather_checkpoints=-1))
    assert len(list_checkpoints(tmp_path / "all")) == 3
    train(tiny_config(small_data, tmp_path / "none", epochs=1, save_checkpoints=False))
    assert not list(Path(tmp_path / "none").glob("*.pt")) and not (tmp_path / "none" / "checkpoint.pth.tar").exists()


@needs_tensorboard
def test_logs_tensorboard_progress_and_topk(small_data, tmp_path, capsys):
    train(tiny_config(small_data, tmp_path, epochs=1, topk=3, print_freq=4, raport_file="run.json",
                      tensorboard=True, progress=True))
    lines = (tmp_path / "run.json").read_text().splitlines()
    entries = [json.loads(line[5:]) for line in lines]
    steps = [e["step"] for e in entries if e["type"] == "LOG" and isinstance(e["step"], list) and len(e["step"]) == 2]
    assert steps == [[0, 4], [0, 8], [0, 10]]  # every 4 steps and the epoch's last
    validation = next(e["data"] for e in entries if e["type"] == "LOG" and "val.top3" in e["data"])
    assert "val.top5" not in validation
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    out = capsys.readouterr().out
    assert "\r\033[K" in out and "img/s" in out and "eta" in out  # a live progress line


def test_progress_lines_are_plain_when_not_a_terminal():
    stream = io.StringIO()
    run_logger = RunLogger(None, progress=None, stream=stream)  # StringIO is not a terminal
    data = {"train.loss": 1.0, "train.lr": 0.1, "train.total_ips": 10.0, "train.data_time": 0.01}
    run_logger.train_progress(0, 5, 10, 2, data, eta_s=65)
    assert stream.getvalue().endswith("eta 0:01:05\n") and "\r" not in stream.getvalue()


def test_console_counts_epochs_from_one_and_the_log_from_zero(tmp_path):
    stream = io.StringIO()
    run_logger = RunLogger(tmp_path / "run.json", progress=False, stream=stream)
    run_logger.epoch_end(11, {"val.top1": 80.3}, steps_per_epoch=10)
    run_logger.summary({"best.top1": 80.3, "best.epoch": 11})
    run_logger.close()
    assert "epoch 12: val.top1 80.3" in stream.getvalue() and "best.epoch 12" in stream.getvalue()
    summary = json.loads((tmp_path / "run.json").read_text().splitlines()[-1][5:])
    assert summary["step"] == [] and summary["data"]["best.epoch"] == 11


def test_early_stopping(small_data, tmp_path):
    summary = train(tiny_config(small_data, tmp_path, epochs=6, lr=1e-12, warmup=0, early_stopping_patience=2))
    assert summary["exit.reason"] == "early_stop"
    assert final_state(tmp_path)["epoch"] == 3  # best at epoch 0, then two epochs without a better top-1


def test_preprocessing_options_are_recorded(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path, epochs=1, prof=1, image_size=40, crop_pct=1.0,
                      interpolation="bicubic"))
    assert final_state(tmp_path)["preprocessing"] == {
        "image_size": 40, "crop_pct": 1.0, "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "exif_orientation": False}


def test_fine_tune_from_pretrained_file(small_data, embedded_data, tmp_path):
    from conftest import copy_subset

    train(tiny_config(small_data, tmp_path / "source", epochs=1, training_only=True))
    source = tmp_path / "source" / "checkpoint.pth.tar"
    five = copy_subset(embedded_data, tmp_path / "five", 4, 2)
    for name in ("bag", "coat", "dress", "pullover", "sandal"):
        for split in ("train", "val"):
            for image in (five / split / name).iterdir():
                image.unlink()
            (five / split / name).rmdir()
    with pytest.raises(UserError, match="ignore-head"):
        train(tiny_config(five, tmp_path / "strict", epochs=1, pretrained_from_file=str(source)))
    train(tiny_config(five, tmp_path / "tuned", epochs=1, prof=1, lr=1e-12, warmup=0, training_only=True,
                      pretrained_from_file=str(source), ignore_head=True))
    tuned = final_state(tmp_path / "tuned")
    assert tuned["num_classes"] == 5 and tuned["model"]["fc.weight"].shape == (5, 1024)
    original = read_checkpoint(source)["model"]
    assert torch.allclose(tuned["model"]["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])


def test_other_backends_train(small_data, tmp_path):
    synthetic = train(TrainConfig(data_backend="synthetic", num_classes=7, synthetic_batches=3, epochs=1,
                                  warmup=0, arch="resnext_tiny", image_size=32, batch_size=8,
                                  workspace=str(tmp_path / "synthetic"), tensorboard=False, progress=False))
    assert final_state(tmp_path / "synthetic")["global_step"] == 3
    assert final_state(tmp_path / "synthetic")["num_classes"] == 7 and synthetic["exit.reason"] == "completed"
    for backend, extra in (("gpu", {}), ("dali-cpu", {}), ("pytorch", dict(workers=2, prefetch=1,
                                                                            augmentation="autoaugment"))):
        summary = train(tiny_config(small_data, tmp_path / backend, epochs=1, data_backend=backend, **extra))
        assert summary["exit.reason"] == "completed", backend
        assert final_state(tmp_path / backend)["global_step"] == 10, backend

