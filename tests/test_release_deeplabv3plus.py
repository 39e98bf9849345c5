"""DeepLab-V3+ as the release builds it: its file format, parameter count, output stride, head maths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from release_listings import random_state, read_listing, save

from wsss.errors import WeightsError
from wsss.models.deeplabv3plus import DeepLabV3Plus, deeplabv3plus_resnet101
from wsss.models.release_formats import load_deeplabv3plus_weights
from wsss.models.resnet import ResNetBackbone
from wsss.models.weights import detect_format

V3P = "deeplabv3plus_resnet101"


@pytest.fixture(scope="module")
def model() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return deeplabv3plus_resnet101()


@pytest.fixture(scope="module")
def release_state() -> dict[str, torch.Tensor]:
    return random_state(V3P, seed=2)


def test_state_dict_is_the_release_listing(model: DeepLabV3Plus) -> None:
    assert [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()] == read_listing(V3P)


def test_parameter_count(model: DeepLabV3Plus) -> None:
    listed = sum(
        math.prod(s)
        for k, s, _ in read_listing(V3P)
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert sum(p.numel() for p in model.parameters()) == listed == 58_753_973


def test_release_checkpoint_loads_and_round_trips(
    tmp_path: Path, model: DeepLabV3Plus, release_state: dict[str, torch.Tensor]
) -> None:
    path = save(release_state, tmp_path / "best_deeplabv3plus_resnet101_voc_os16.pth", wrapper="model_state")
    assert detect_format(release_state) == "release_deeplabv3plus"
    report = load_deeplabv3plus_weights(model, path)
    assert report.format == "release_deeplabv3plus" and not report.missing and not report.skipped
    back = model.state_dict()
    assert list(back) == list(release_state) and all(
        torch.equal(back[k], v) for k, v in release_state.items()
    )
    with pytest.raises(WeightsError, match="is a DeepLab-V2 file; use segmenter=aspp_r101"):
        load_deeplabv3plus_weights(
            model, save({"layer1.conv1.conv.weight": torch.zeros(1)}, tmp_path / "v2.pth")
        )


def test_output_stride_16_with_torchvision_dilation(model: DeepLabV3Plus) -> None:
    layer4 = [b.conv2.dilation for b in model.backbone.layer4]
    assert layer4 == [(1, 1), (2, 2), (2, 2)]  # torchvision: the first block keeps the previous rate
    assert model.backbone.layer4[0].conv2.stride == (1, 1) and model.backbone.layer3[0].conv2.stride == (2, 2)
    assert model.backbone.layer3[0].conv1.stride == (1, 1) and not model.backbone.maxpool.ceil_mode
    assert all(m.momentum == 0.01 for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        stages = model.eval().backbone.forward_stages(x)
        assert stages["layer1"].shape[-2:] == (16, 20) and stages["layer4"].shape[-2:] == (4, 5)
        logits = model(x)
    assert logits.shape == (1, 21, 64, 80)


def test_torchvision_dilation_at_output_stride_8() -> None:
    net = ResNetBackbone(50, output_stride=8, dilate_first_block=False)
    assert [b.conv2.dilation[0] for b in net.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in net.layer4] == [2, 4, 4]
    assert [b.conv2.dilation[0] for b in ResNetBackbone(50, output_stride=8).layer3] == [2] * 6


def _conv_bn_relu(x: torch.Tensor, sd: dict, conv: str, bn: str, rate: int = 1, pad: int = 0) -> torch.Tensor:
    x = F.conv2d(x, sd[f"{conv}.weight"], padding=pad, dilation=rate)
    x = F.batch_norm(
        x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"], eps=1e-5
    )
    return F.relu(x)


def reference_head(sd: dict, low: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
    """The release's DeepLabHeadV3Plus (eval mode), from the facts, on its state dict."""
    a = "classifier.aspp.convs"
    branches = [_conv_bn_relu(deep, sd, f"{a}.0.0", f"{a}.0.1")]
    branches += [
        _conv_bn_relu(deep, sd, f"{a}.{i}.0", f"{a}.{i}.1", r, r) for i, r in ((1, 6), (2, 12), (3, 18))
    ]
    pooled = _conv_bn_relu(deep.mean(dim=(2, 3), keepdim=True), sd, f"{a}.4.1", f"{a}.4.2")
    branches.append(pooled.expand_as(branches[0]))
    context = _conv_bn_relu(
        torch.cat(branches, 1), sd, "classifier.aspp.project.0", "classifier.aspp.project.1"
    )
    low = _conv_bn_relu(low, sd, "classifier.project.0", "classifier.project.1")
    context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
    x = _conv_bn_relu(
        torch.cat([low, context], 1), sd, "classifier.classifier.0", "classifier.classifier.1", 1, 1
    )
    return F.conv2d(x, sd["classifier.classifier.3.weight"], sd["classifier.classifier.3.bias"])


def test_head_computes_the_release_s_decoder(
    model: DeepLabV3Plus, release_state: dict[str, torch.Tensor]
) -> None:
    model.load_state_dict(release_state)
    g = torch.Generator().manual_seed(4)
    low, deep = torch.randn(2, 256, 12, 10, generator=g), torch.randn(2, 2048, 3, 3, generator=g)
    with torch.no_grad():
        expected = reference_head(release_state, low, deep)
        got = model.eval().classifier(low, deep)
    assert got.shape == (2, 21, 12, 10)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_param_groups_put_the_backbone_at_a_tenth(model: DeepLabV3Plus) -> None:
    groups = model.param_groups(0.05, 1e-4)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", pytest.approx(0.005), 1e-4),
        ("classifier", 0.05, 1e-4),
    ]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_one_sgd_step_moves_backbone_and_head_by_their_group_rates() -> None:
    torch.manual_seed(1)
    net = deeplabv3plus_resnet101().train()
    x, y = torch.randn(2, 3, 65, 65), torch.randint(0, 21, (2, 65, 65))
    F.cross_entropy(net(x), y, ignore_index=255).backward()
    probes = {
        "backbone": net.backbone.layer4[2].conv3.weight,
        "classifier": net.classifier.classifier[3].weight,
    }
    before = {k: (p.detach().clone(), p.grad.clone()) for k, p in probes.items()}
    torch.optim.SGD(net.param_groups(0.05, 0.0), lr=0.05).step()
    for name, lr in (("backbone", 0.005), ("classifier", 0.05)):
        weight, grad = before[name]
        assert grad.abs().sum() > 0
        assert torch.allclose(probes[name].detach(), weight - lr * grad, atol=1e-7)
    with pytest.raises(
        ValueError, match="Expected more than 1 value per channel"
    ):  # as the release: batch >= 2
        net(torch.randn(1, 3, 65, 65))


def test_segmenter_weights_of_the_v3plus_config_load_the_release_file_and_imagenet_init(
    tmp_path: Path, release_state: dict[str, torch.Tensor]
) -> None:
    """segmenter=deeplabv3plus_r101 + segmenter.weights: the release's checkpoint whole, or torchvision
    resnet101 weights into the backbone (the release's init), through the one loader."""
    from conftest import make_segmenter
    from wsss.models.segmenter_weights import load_weights

    path = save(release_state, tmp_path / "best.pth", wrapper="model_state")
    net = make_segmenter("deeplabv3plus_r101", weights=str(path))
    assert isinstance(net, DeepLabV3Plus)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in release_state.items())
    torchvision = {
        k.removeprefix("backbone."): v for k, v in release_state.items() if k.startswith("backbone.")
    }
    torchvision |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    fresh = make_segmenter("deeplabv3plus_r101")
    head = {k: v.clone() for k, v in fresh.classifier.state_dict().items()}
    assert load_weights(fresh, save(torchvision, tmp_path / "resnet101.pth")) == "torchvision_resnet"
    assert torch.equal(fresh.backbone.layer3[7].conv2.weight, release_state["backbone.layer3.7.conv2.weight"])
    assert all(torch.equal(fresh.classifier.state_dict()[k], v) for k, v in head.items())
    with pytest.raises(WeightsError, match="DeepLab-V3\\+ checkpoint; use segmenter=deeplabv3plus_r101"):
        load_weights(make_segmenter("largefov_tiny"), path)
