"""The recipe's numbers, checked against values computed by hand."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

import resnext
from resnext.device import make_grad_scaler
from resnext.ema import ModelEMA
from resnext.errors import UserError
from resnext.mixup import mixup
from resnext.optim import LRSchedule, build_optimizer, parameter_groups
from resnext.recipe import PRESETS, TrainConfig, preset


def test_resnext_preset_is_nvidias_recipe():
    config = TrainConfig(**preset("resnext"))
    assert config.momentum == 0.875
    assert config.weight_decay == 6.103515625e-05 == 1 / 16384
    assert config.label_smoothing == 0.1
    assert config.lr_schedule == "cosine" and config.epochs == 90
    assert config.peak_lr(world_size=1) == pytest.approx(0.256)  # batch 256 on one GPU
    assert config.warmup_epochs() == 8
    assert config.static_loss_scale == 128


def test_lr_scales_linearly_with_global_batch_and_accumulation():
    config = TrainConfig(batch_size=128, optimizer_batch_size=1024, lr=None)  # ours: scaled (--preset resnext)
    assert config.accumulation_steps(world_size=2) == 4
    assert config.global_batch(world_size=2) == 1024
    assert config.peak_lr(world_size=2) == pytest.approx(1.024)
    assert TrainConfig(batch_size=64, lr=0.5).peak_lr(world_size=8) == 0.5  # an explicit --lr wins


def test_warmup_then_cosine_per_step():
    schedule = LRSchedule(kind="cosine", peak=1.0, end=0.0, warmup_epochs=1, epochs=11, steps_per_epoch=10,
                          granularity="step")
    assert schedule(0) == pytest.approx(0.1)  # first update already moves
    assert schedule(4) == pytest.approx(0.5)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert schedule(60) == pytest.approx(0.5)  # half-way through the decay: cos(pi/2)
    assert schedule(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert schedule(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_cosine_ends_at_end_lr_and_linear_schedule():
    cosine = LRSchedule(kind="cosine", peak=0.4, end=0.1, warmup_epochs=0, epochs=10, steps_per_epoch=10,
                        granularity="step")
    assert cosine(0) == pytest.approx(0.4)
    assert cosine.policy(10) == pytest.approx(0.1)
    linear = LRSchedule(kind="linear", peak=0.4, end=0.0, warmup_epochs=0, epochs=10, steps_per_epoch=10,
                        granularity="step")
    assert linear(25) == pytest.approx(0.3)


def test_step_schedule_uses_nvidias_milestones():
    schedule = LRSchedule(kind="step", peak=1.0, end=0.0, warmup_epochs=0, epochs=90, steps_per_epoch=10)
    assert schedule(299) == pytest.approx(1.0)
    assert schedule(300) == pytest.approx(0.1)   # epoch 30
    assert schedule(600) == pytest.approx(0.01)  # epoch 60
    assert schedule(800) == pytest.approx(0.001)  # epoch 80


def test_weight_decay_skips_bn_and_biases():
    model = resnext.create_model("se_resnext101_32x4d", num_classes=10)
    no_decay, decay = parameter_groups(model, weight_decay=1 / 16384, exempt="bn-and-bias")
    assert decay["weight_decay"] == 1 / 16384 and no_decay["weight_decay"] == 0
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for param in no_decay["params"]:
        name = names[id(param)]
        assert ".bn" in name or name.startswith("bn1") or "downsample.1" in name or name.endswith("bias"), name
    # The shortcut BN and the classifier bias are exempt too (NVIDIA's "bn" name filter misses them).
    assert id(model.layer1[0].downsample[1].weight) not in decayed
    assert id(model.fc.bias) not in decayed and id(model.fc.weight) in decayed
    assert id(model.layer1[0].se.fc1.bias) not in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = parameter_groups(model, weight_decay=0.1, bn_weight_decay=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_sgd_step_applies_weight_decay_and_momentum_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    config = TrainConfig(weight_decay=0.5, momentum=0.875, wd_exempt="bn-and-bias")
    optimizer = build_optimizer(config, model, lr=0.1, device=torch.device("cpu"))
    weight = model[0].weight
    before = weight.detach().clone()
    bias_before = model[0].bias.detach().clone()
    weight.grad = torch.ones_like(weight)
    model[0].bias.grad = torch.ones_like(model[0].bias)
    for p in model[1].parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(weight, before - 0.1 * (1 + 0.5 * before))  # decayed
    assert torch.allclose(model[0].bias, bias_before - 0.1 * 1.0)  # bias: no decay


def test_training_step_loss_is_label_smoothed_cross_entropy(tmp_path):
    """The loss our training step reports is NVIDIA's label-smoothed cross-entropy, computed here by hand."""
    import copy

    from resnext.distributed import DistEnv
    from resnext.training import setup, train_step
    from resnext.workspace import claim_workspace

    config = TrainConfig(data_backend="synthetic", arch="resnext_tiny", num_classes=3, image_size=32, batch_size=4,
                         synthetic_batches=1, epochs=1, label_smoothing=0.1, device="cpu", workspace=str(tmp_path),
                         tensorboard=False, progress=False)
    with claim_workspace(config, DistEnv()) as workspace:
        run, _, _ = setup(config, DistEnv(), workspace)
    try:
        generator = torch.Generator().manual_seed(3)
        images = torch.randn(4, 3, 32, 32, generator=generator)
        labels = torch.tensor([0, 1, 2, 1])
        before = copy.deepcopy(run.model).train()
        run.train_model.train()
        loss, _ = train_step(run, iter([(images, labels)]), global_step=0, lr=0.1)
        log_probs = torch.log_softmax(before(images).double(), dim=1)
        # (1 - eps) * nll of the true class + eps * mean over the 3 classes of -log p, per image, averaged.
        expected = sum(-(0.9 * log_probs[i, int(labels[i])] + 0.1 * log_probs[i].mean()) for i in range(4)) / 4
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    finally:
        run.logger.close()


def test_mixup_mixes_images_and_targets_with_one_weight():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mixup(images.clone(), labels, num_classes=4, alpha=0.2, rng=random.Random(7))
    # The same draws by hand: one Beta(0.2, 0.2) weight, then the partner permutation.
    rng = random.Random(7)
    lam = rng.betavariate(0.2, 0.2)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(rng.getrandbits(63)))
    onehot = torch.eye(4)
    for i in range(4):
        assert mixed[i].flatten()[0].item() == pytest.approx(lam * i + (1 - lam) * int(perm[i]), abs=1e-5)
        assert torch.allclose(targets[i], lam * onehot[i] + (1 - lam) * onehot[perm[i]])
    # A MixUp loss with smoothing equals NVIDIA's NLLMultiLabelSmooth: confidence * nll + smoothing * mean(-logp).
    logits = torch.randn(4, 4)
    logp = torch.log_softmax(logits, 1)
    nvidia = (0.9 * (-(logp * targets).sum(1)) + 0.1 * (-logp.mean(1))).mean()
    assert F.cross_entropy(logits, targets, label_smoothing=0.1).item() == pytest.approx(nvidia.item(), rel=1e-5)


def test_ema_follows_nvidias_decay_rule():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.99)
    model.weight.data.fill_(1.0)
    ema.update(model, step=0)  # decay = min(0.99, 1/10) = 0.1
    assert ema.module.weight.item() == pytest.approx(0.9)
    model.weight.data.fill_(2.0)
    ema.update(model, step=10**6)  # decay = 0.99
    assert ema.module.weight.item() == pytest.approx(0.99 * 0.9 + 0.01 * 2.0)


def test_fp16_scaler_is_nvidias_dynamic_scaler():
    config = TrainConfig(static_loss_scale=128)
    cpu = torch.device("cpu")
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    scaler = make_grad_scaler("amp", cpu, optimizer, init_scale=config.static_loss_scale)
    assert scaler.get_scale() == 128.0
    assert scaler.get_growth_interval() == 100 and scaler.get_growth_factor() == 2.0
    assert scaler.get_backoff_factor() == 0.5
    static = make_grad_scaler("amp", cpu, optimizer, init_scale=64, dynamic=False)
    assert static.get_scale() == 64 and static.get_growth_interval() > 10**9
    fixed = make_grad_scaler("fp32", cpu, optimizer)
    assert fixed.is_enabled() and fixed.get_scale() == 1.0  # the inf/NaN check without scaling


def test_presets_are_nvidias_configs():
    amp90 = PRESETS["nvidia-90ep-amp"]
    assert amp90["optimizer_batch_size"] == 1024 and amp90["lr"] == 1.024 and amp90["warmup"] == 8
    assert amp90["batch_size"] == 128 and amp90["memory_format"] == "nhwc" and amp90.get("mixup", 0) == 0
    assert preset("nvidia-250ep-tf32")["mixup"] == 0.2 and preset("nvidia-250ep-tf32")["epochs"] == 250
    assert preset("nvidia-90ep-fp32")["batch_size"] == 64
    assert preset("nvidia-90ep-amp")["amp"] and preset("nvidia-90ep-amp")["static_loss_scale"] == 128
    assert all(TrainConfig(data="x", **values).validate(world_size=8) for values in PRESETS.values())


@pytest.mark.parametrize("changes, message", [
    (dict(optimizer_batch_size=100, batch_size=256), "smaller than one batch"),
    (dict(warmup=-1), "--warmup"),
    (dict(lr=float("nan")), "finite"),
    (dict(use_ema=1.5), "--use-ema"),
    (dict(precision="fp8"), "--precision"),
    (dict(data=None), "dataset folder is required"),
    (dict(evaluate=True, training_only=True), "--evaluate and --training-only"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
])
def test_impossible_configs_are_one_sentence_errors(changes, message):
    values = {"data": "somewhere", **changes}
    with pytest.raises(UserError, match=message):
        TrainConfig(**values).validate()
