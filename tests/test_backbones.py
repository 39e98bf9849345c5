"""Backbones and the classifier: DeepLab VGG-16 layout, DRS placement, parameter counts, tiny and ResNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_classifier
from wsss.method.drs import DRS, LAYERS, count_drs, make_activation
from wsss.models.classifier import DRSClassifier
from wsss.models.tiny import TinyBackbone
from wsss.models.vgg import conv_indices


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vgg_learnable() -> DRSClassifier:
    torch.manual_seed(0)
    return make_classifier("vgg16", "learnable")


def test_vgg16_parameter_counts_match_the_paper(vgg_learnable: DRSClassifier) -> None:
    fixed = make_classifier("vgg16", "fixed")
    off = make_classifier("vgg16", "off")
    assert n_params(fixed) == n_params(off) == 21_804_372
    assert round(n_params(off) / 1e6 / 0.05) * 0.05 == pytest.approx(21.8)
    assert n_params(vgg_learnable) - n_params(off) == 2_596_864  # the 16 controllers (docs/protocol.md)
    assert round(n_params(vgg_learnable) / 1e6 / 0.05) * 0.05 == pytest.approx(24.4)


def test_drs_count_per_placement(vgg_learnable: DRSClassifier) -> None:
    assert count_drs(vgg_learnable) == 16
    assert count_drs(make_classifier("vgg16", "learnable", placement=[])) == 0
    assert count_drs(make_classifier("vgg16", "off")) == 0
    # paper Table 2 rows: convs per block are 2, 2, 3, 3, 3 (VGG-16) and 3 (head)
    expected = {("layer6",): 3, ("layer5", "layer6"): 6, ("layer3", "layer4", "layer5", "layer6"): 12}
    expected |= {LAYERS[:5]: 13, LAYERS[:4]: 10, ("layer1",): 2}
    for placement, n in expected.items():
        assert count_drs(make_classifier("vgg16", "fixed", placement=list(placement))) == n, placement
    # tiny: one conv per backbone block, three in the head
    assert count_drs(make_classifier("tiny", "fixed", placement=["layer1", "layer5", "layer6"])) == 5


def test_vgg16_keeps_torchvision_indices_and_deeplab_changes(vgg_learnable: DRSClassifier) -> None:
    features = vgg_learnable.backbone.features
    assert len(features) == 30
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [i for i, m in enumerate(features) if isinstance(m, DRS)] == [c + 1 for c in convs]
    assert conv_indices()["layer5"] == [24, 26, 28]
    pools = {i: m for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)}
    assert sorted(pools) == [4, 9, 16, 23]
    assert (pools[23].kernel_size, pools[23].stride, pools[23].padding) == (3, 1, 1)
    assert all(features[i].dilation == (2, 2) and features[i].padding == (2, 2) for i in (24, 26, 28))
    assert features[21].dilation == (1, 1)
    # the DRS of conv3_2 and conv5_3 have K = 256 and 512 channels
    assert features[13].fc[0].weight.shape == (256, 256) and features[29].channels == 512


def test_vgg16_output_stride_8_and_score_maps(vgg_learnable: DRSClassifier) -> None:
    with torch.no_grad():
        scores = vgg_learnable(torch.randn(1, 3, 64, 80))
        assert scores.shape == (1, 20, 8, 10)
        assert torch.allclose(
            vgg_learnable.logits(torch.zeros(1, 3, 64, 64)),
            vgg_learnable(torch.zeros(1, 3, 64, 64)).mean((2, 3)),
        )


def test_head_is_three_convs_and_a_biased_1x1(vgg_learnable: DRSClassifier) -> None:
    convs = [m for m in vgg_learnable.head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(512, 512, (3, 3))] * 3
    assert sum(isinstance(m, DRS) for m in vgg_learnable.head) == 3
    cls = vgg_learnable.classifier
    assert (cls.in_channels, cls.out_channels, cls.kernel_size) == (512, 20, (1, 1)) and cls.bias is not None


def test_release_param_groups(vgg_learnable: DRSClassifier) -> None:
    groups = vgg_learnable.param_groups()
    sizes = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    assert sizes["backbone_weight"] == 14_710_464  # 13 VGG conv kernels
    assert sizes["backbone_bias"] == 4_224
    assert sizes["new_weight"] == 3 * 512 * 512 * 9 + 512 * 20 + 2_596_864  # head convs + all 16 DRS FCs
    assert sizes["new_bias"] == 3 * 512 + 20
    assert sum(sizes.values()) == n_params(vgg_learnable)


def test_tiny_backbone_shape_size_and_blocks() -> None:
    torch.manual_seed(0)
    model = make_classifier("tiny", "learnable")
    assert model.backbone.out_channels == 64 and model.classifier.in_channels == 32
    assert count_drs(model) == 8  # one per tiny block + three in the head
    assert 20_000 < n_params(model) < 150_000
    assert model(torch.randn(2, 3, 64, 96)).shape == (2, 20, 8, 12)
    wide = TinyBackbone(make_activation("off"), width=4)
    assert wide.out_channels == 32 and wide(torch.randn(1, 3, 32, 32)).shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="backbone.width"):
        TinyBackbone(make_activation("off"), width=0)
    fine = make_classifier("tiny", "off", output_stride=4)
    assert fine(torch.randn(2, 3, 64, 96)).shape == (2, 20, 16, 24)  # stride 4: layer3 keeps the size
    assert n_params(fine) == n_params(make_classifier("tiny", "off"))
    with pytest.raises(ValueError, match="output_stride=16"):
        TinyBackbone(make_activation("off"), output_stride=16)


def test_refiner_has_no_drs_and_the_classifier_shape() -> None:
    refiner = make_classifier("tiny", "learnable", refiner=True)
    assert count_drs(refiner) == 0
    assert n_params(refiner) == n_params(make_classifier("tiny", "fixed"))


def test_resnet_classifier_places_drs_after_stages_and_in_head() -> None:
    model = make_classifier("resnet50", "learnable", placement=["layer2", "layer4", "layer5", "layer6"])
    assert sorted(model.backbone.post) == ["layer2", "layer4"]  # ResNet has no layer5: ignored
    assert count_drs(model) == 5
    assert model.classifier.in_channels == 512 and model.head[0].in_channels == 2048
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 20, 8, 8)


def test_a_network_config_without_target_is_a_clear_error() -> None:
    from wsss.models.networks import spec

    with pytest.raises(ValueError, match="needs a _target_"):
        spec({"name": "vgg19", "weights": None})
