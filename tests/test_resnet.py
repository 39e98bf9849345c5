"""ResNet backbone: torchvision names and sizes, dilation plan, frozen BatchNorm, post-stage hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.models.resnet import FrozenBatchNorm2d, ResNetBackbone


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: two threads per process run far slower
    yield
    torch.set_num_threads(before)


# torchvision resnet50 / resnet101 parameter counts (25,557,032 / 44,549,160) minus fc (2048*1000 + 1000)
TORCHVISION_BACKBONE_PARAMS = {50: 25_557_032 - 2_049_000, 101: 44_549_160 - 2_049_000}


@pytest.mark.parametrize("depth", [50, 101])
def test_parameter_count_and_names_match_torchvision(depth: int) -> None:
    net = ResNetBackbone(depth)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_BACKBONE_PARAMS[depth]
    keys = set(net.state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.22.bn3.bias" if depth == 101 else "layer3.5.bn3.bias",
        "layer4.2.conv3.weight",
    ]:
        assert key in keys
    assert f"layer3.{len(net.layer3)}.conv1.weight" not in keys
    assert net.out_channels == 2048


@pytest.mark.parametrize(
    ("output_stride", "rates", "size"), [(4, (1, 2, 4, 8), 16), (8, (1, 1, 2, 4), 8), (16, (1, 1, 1, 2), 4)]
)
def test_output_stride_and_dilation_plan(output_stride: int, rates: tuple[int, ...], size: int) -> None:
    net = ResNetBackbone(50, output_stride=output_stride).eval()
    for layer, rate in zip([net.layer1, net.layer2, net.layer3, net.layer4], rates, strict=True):
        # DeepLab v2: every block of a dilated layer uses the full rate (also the first one)
        assert {block.conv2.dilation for block in layer} == {(rate, rate)}
        assert {block.conv2.padding for block in layer} == {(rate, rate)}
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2048, size, size)


def test_unsupported_settings_are_named() -> None:
    with pytest.raises(ValueError, match="depth 34"):
        ResNetBackbone(34)
    with pytest.raises(ValueError, match="backbone.output_stride=2 is not supported"):
        ResNetBackbone(50, output_stride=2)


def test_caffe_style_moves_the_stride_to_the_first_1x1_conv() -> None:
    net = ResNetBackbone(50, caffe_style=True)
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert net.maxpool.ceil_mode
    plain = ResNetBackbone(50)
    assert plain.layer2[0].conv1.stride == (1, 1) and plain.layer2[0].conv2.stride == (2, 2)
    # same tensors either way: torchvision weights load into the caffe variant too
    assert net.load_state_dict(plain.state_dict()) is not None


def test_frozen_batchnorm_loads_batchnorm_weights_and_never_updates() -> None:
    torch.manual_seed(0)
    trained = ResNetBackbone(50, output_stride=16)
    for m in trained.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    frozen = ResNetBackbone(50, output_stride=16, frozen_bn=True)
    result = frozen.load_state_dict(trained.state_dict())  # num_batches_tracked accepted and dropped
    assert not result.missing_keys and not result.unexpected_keys
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    # only conv weights remain trainable
    assert sum(p.numel() for p in frozen.parameters()) < sum(p.numel() for p in trained.parameters())
    x = torch.randn(2, 3, 48, 48)
    before = frozen.layer1[0].bn1.running_mean.clone()
    frozen.train()
    out_train = frozen(x)
    assert torch.equal(frozen.layer1[0].bn1.running_mean, before)
    with torch.no_grad():
        expected = trained.eval()(x)
    torch.testing.assert_close(out_train, expected, atol=1e-3, rtol=1e-3)


def test_activation_modules_are_built_per_layer_and_applied_unless_plain_relu() -> None:
    calls: list[tuple[str, int]] = []

    def activation(name: str, channels: int) -> nn.Module:
        calls.append((name, channels))
        return nn.Identity() if name != "layer4" else _Zero()

    net = ResNetBackbone(50, activation=activation).eval()
    assert calls == [("layer1", 256), ("layer2", 512), ("layer3", 1024), ("layer4", 2048)]
    assert list(net.post) == ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        assert torch.count_nonzero(net(torch.randn(1, 3, 32, 32))) == 0

    plain = ResNetBackbone(50, activation=lambda name, c: nn.ReLU())  # stages already end in a ReLU
    assert len(plain.post) == 0


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0
