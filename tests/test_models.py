import pytest
import torch
from torchvision.models.resnet import Bottleneck as TvBottleneck
from torchvision.models.resnet import ResNet as TvResNet

import resnext
from resnext import UserError
from resnext.summary import model_summary

EXPECTED_PARAMS = {
    "resnext101_32x4d": 44_177_704,
    "resnet50": 25_557_032,
    "se_resnext101_32x4d": 48_955_416,  # same as timm's seresnext101_32x4d
    "se_resnext101_32x4d_nvidia": 45_251_128,  # NVIDIA's: a 16-channel squeeze in every block
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMS))
def test_parameter_counts(arch):
    assert n_params(resnext.create_model(arch)) == EXPECTED_PARAMS[arch]


def test_list_models_has_family_and_tiny():
    names = resnext.list_models()
    assert set(EXPECTED_PARAMS) <= set(names)
    assert "resnext_tiny" in names


def test_state_dict_layout_matches_torchvision():
    ours = resnext.create_model("resnext101_32x4d").state_dict()
    theirs = TvResNet(TvBottleneck, [3, 4, 23, 3], groups=32, width_per_group=4).state_dict()
    assert list(ours) == list(theirs)
    assert len(ours) == 626
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_torchvision_weights_give_identical_logits():
    reference = TvResNet(TvBottleneck, [3, 4, 23, 3], groups=32, width_per_group=4).eval()
    # Random BN statistics so eval mode exercises running_mean / running_var too.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    ours = resnext.create_model("resnext101_32x4d").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("alias, canonical", [("resnext101-32x4d", "resnext101_32x4d"),
                                              ("se-resnext101-32x4d", "se_resnext101_32x4d_nvidia"),
                                              ("ResNeXt101_32x4d", "resnext101_32x4d")])
def test_nvidia_spellings_are_aliases(alias, canonical):
    assert resnext.create_model(alias, num_classes=3).arch == canonical


def test_unknown_arch_is_a_user_error_with_suggestion():
    with pytest.raises(UserError, match="resnext101_32x4d"):
        resnext.create_model("resnext101_32x4")


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_num_classes(bad):
    with pytest.raises(UserError, match="num_classes"):
        resnext.create_model("resnext_tiny", num_classes=bad)


def test_conv_init_modes_and_last_bn_zero_init():
    torch.manual_seed(0)
    fan_in = resnext.create_model("resnext_tiny", num_classes=10, conv_init="fan_in")
    torch.manual_seed(0)
    fan_out = resnext.create_model("resnext_tiny", num_classes=10, conv_init="fan_out")
    conv = fan_in.layer1[0].conv3  # 1x1, 32 -> 128 channels: fan_in 32, fan_out 128
    assert conv.weight.std().item() == pytest.approx((2 / 32) ** 0.5, rel=0.15)
    assert fan_out.layer1[0].conv3.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.15)
    with pytest.raises(UserError, match="conv_init"):
        resnext.create_model("resnext_tiny", conv_init="xavier")
    assert all(float(b.bn3.weight.detach().abs().sum()) > 0 for b in fan_in.layer1)
    zeroed = resnext.create_model("resnext_tiny", num_classes=10, last_bn_0_init=True)
    for stage in (zeroed.layer1, zeroed.layer2, zeroed.layer3, zeroed.layer4):
        assert all(float(block.bn3.weight.detach().abs().sum()) == 0 for block in stage)


def test_forward_features_pooled_and_spatial():
    model = resnext.create_model("resnext_tiny", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    pooled = model.forward_features(x)
    spatial = model.forward_features(x, pool=False)
    assert pooled.shape == (2, model.num_features)
    assert spatial.shape == (2, model.num_features, 2, 2)
    assert torch.allclose(spatial.mean((2, 3)), pooled, atol=1e-6)
    assert torch.allclose(model.fc(pooled), model(x), atol=1e-6)


def test_summary_matches_published_cost():
    summary = model_summary("resnext101_32x4d", image_size=224)
    assert summary["params"] == 44_177_704
    assert summary["gmacs"] == pytest.approx(7.97, abs=0.01)
    assert summary["gmacs_with_elementwise"] == pytest.approx(8.01, abs=0.01)
    assert summary["gflops"] == pytest.approx(15.94, abs=0.01)
    assert summary["activations_m"] == pytest.approx(21.2, abs=0.1)
    assert [s["name"] for s in summary["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(s["params"] for s in summary["stages"]) == summary["params"]
    assert summary["stages"][4]["output_shape"] == [2048, 7, 7]
