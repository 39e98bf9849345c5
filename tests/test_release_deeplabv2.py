"""DeepLab-V2 as the release computes it: file formats both ways, caffe input, multi-scale wrapper, logits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from release_listings import random_state, read_listing, save
from release_reference import ReferenceDeepLabV2, ReferenceMSC, caffe_image

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import WeightsError
from wsss.models.deeplabv2 import CaffeInput, DeepLabV2, MultiScaleInputs, deeplabv2_resnet101, input_adapter
from wsss.models.release_formats import (
    deeplabv2_release_to_wsss,
    deeplabv2_wsss_to_release,
    load_deeplabv2_weights,
)
from wsss.models.segmenter_weights import load_weights
from wsss.models.weights import detect_format

MSC = "deeplabv2_resnet101_msc"
COCO = "deeplabv1_resnet101_coco_init"


def loaded(path: Path) -> MultiScaleInputs:
    """The release's network with a file loaded by ``segmenter.weights``'s loader."""
    model = deeplabv2_resnet101()
    load_weights(model, path)
    return model


def layout(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items()]


def normalised(rgb01: torch.Tensor) -> torch.Tensor:
    """wsss's network input for an RGB [0, 1] image."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb01 - mean) / std


@pytest.fixture(scope="module")
def release_state() -> dict[str, torch.Tensor]:
    return random_state(MSC, seed=0)


@pytest.fixture(scope="module")
def wsss_model() -> MultiScaleInputs:
    torch.manual_seed(0)
    return deeplabv2_resnet101()


def test_the_reference_recreation_has_the_release_layout() -> None:
    """The test-only reference (written from the facts) holds exactly the listed tensors, in order."""
    assert layout(ReferenceMSC(ReferenceDeepLabV2()).state_dict()) == read_listing(MSC)


def test_wsss_network_written_in_the_release_layout_is_the_listing(wsss_model: MultiScaleInputs) -> None:
    assert layout(deeplabv2_wsss_to_release(wsss_model.state_dict())) == read_listing(MSC)
    bare = deeplabv2_wsss_to_release(wsss_model.base.state_dict(), prefix="")
    assert [k for k, _, _ in read_listing(COCO) if not k.startswith("fc.")] == [
        k for k in bare if not k.startswith("aspp.")
    ]


def test_parameter_counts(wsss_model: MultiScaleInputs) -> None:
    # from the listing: 42,394,816 conv weights + 4 * 21 * (2048 * 9 + 1) ASPP; the 105,344 BN weights and
    # biases of the release (never in its optimizer) are frozen buffers here
    trainable = sum(p.numel() for p in wsss_model.parameters() if p.requires_grad)
    assert trainable == 42_394_816 + 4 * 21 * (2048 * 9 + 1) == 43_943_188
    listed = sum(math.prod(s) for k, s, _ in read_listing(MSC) if k.endswith("conv.weight") or ".aspp." in k)
    assert trainable == listed
    assert [g["name"] for g in wsss_model.param_groups(2.5e-4, 5e-4)] == ["weight", "new_weight", "new_bias"]


def test_round_trips_are_exact(release_state: dict[str, torch.Tensor], wsss_model: MultiScaleInputs) -> None:
    wsss_state, skipped = deeplabv2_release_to_wsss(release_state)
    assert not skipped
    back = deeplabv2_wsss_to_release(wsss_state)
    assert list(back) == list(release_state)
    assert all(torch.equal(back[k], v) for k, v in release_state.items())
    own = wsss_model.state_dict()  # frozen BN: no num_batches_tracked; the release layout gets 0 there
    there = deeplabv2_wsss_to_release(own)
    assert int(there["base.layer2.block1.reduce.bn.num_batches_tracked"]) == 0
    again = {f"base.{k}": v for k, v in deeplabv2_release_to_wsss(there)[0].items() if "num_batches" not in k}
    assert list(again) == list(own) and all(torch.equal(again[k], v) for k, v in own.items())


def test_release_checkpoint_loads_with_nothing_missing_or_left_over(
    tmp_path: Path, release_state: dict[str, torch.Tensor]
) -> None:
    path = save(release_state, tmp_path / "checkpoint_final.pth")
    model = deeplabv2_resnet101()
    assert load_weights(model, path) == "release_deeplabv2"
    report = load_deeplabv2_weights(model, path)
    assert report.format == "release_deeplabv2" and not report.skipped and not report.missing
    state = model.base.state_dict()
    assert torch.equal(
        state["backbone.layer3.22.conv2.weight"], release_state["base.layer4.block23.conv3x3.conv.weight"]
    )
    assert torch.equal(
        state["backbone.layer1.0.downsample.1.running_var"],
        release_state["base.layer2.block1.shortcut.bn.running_var"],
    )
    assert torch.equal(state["head.branches.3.fc8.bias"], release_state["base.aspp.c3.bias"])


def test_coco_init_loads_the_backbone_and_leaves_the_aspp(tmp_path: Path) -> None:
    coco = random_state(COCO, seed=3)
    assert detect_format(coco) == "release_deeplabv2_coco_init"
    torch.manual_seed(0)
    model = deeplabv2_resnet101()
    head_before = {k: v.clone() for k, v in model.base.head.state_dict().items()}
    report = load_deeplabv2_weights(model, save(coco, tmp_path / "deeplabv1_resnet101-coco.pth"))
    assert report.skipped == ["fc.weight", "fc.bias"]
    assert report.missing == [f"head.{k}" for k in head_before]
    assert all(torch.equal(v, model.base.head.state_dict()[k]) for k, v in head_before.items())
    assert torch.equal(model.base.backbone.conv1.weight, coco["layer1.conv1.conv.weight"])
    assert torch.equal(
        model.base.backbone.layer4[2].bn3.running_mean, coco["layer5.block3.increase.bn.running_mean"]
    )


def test_wrong_files_are_explained(tmp_path: Path, release_state: dict[str, torch.Tensor]) -> None:
    other = dict(release_state)
    other["base.aspp.c0.weight"] = torch.zeros(19, 2048, 3, 3)
    with pytest.raises(
        WeightsError,
        match=r"'head.branches.0.fc8.weight' has shape \(19, 2048, 3, 3\) in the file but \(21, 2048, 3, 3\)",
    ):
        loaded(save(other, tmp_path / "cityscapes.pth"))
    with pytest.raises(
        WeightsError, match="'layer6.block1.reduce.conv.weight' is not a key of the release's DeepLab-V2"
    ):
        deeplabv2_release_to_wsss({"base.layer6.block1.reduce.conv.weight": torch.zeros(1)})
    v3p = {"classifier.aspp.convs.0.0.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="DeepLab-V3\\+ checkpoint; use segmenter=deeplabv3plus_r101"):
        loaded(save(v3p, tmp_path / "v3p.pth", wrapper="model_state"))


def test_caffe_input_is_the_release_s_preprocessing_exactly() -> None:
    rgb = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 3)
    out = CaffeInput()(normalised(rgb))
    expected = torch.tensor([0.9 * 255 - 104.008, 0.5 * 255 - 116.669, 0.2 * 255 - 122.675]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=2e-5, rtol=0)
    assert not CaffeInput().state_dict() and isinstance(input_adapter("imagenet"), torch.nn.Identity)
    with pytest.raises(ValueError, match="input_format='bgr'; choose 'caffe'"):
        input_adapter("bgr")


def test_msc_resizes_inputs_by_scale_factor_and_fuses_by_max() -> None:
    """A 1-channel ramp through an identity 'network': the 0.5 input is bilinear with the grid of the scale
    itself (source x = 2 i + 0.5: 0.5, 2.5 for width 5), not of the sizes (5 / 2: 0.75, 3.25)."""
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 4, 5).contiguous()
    msc = MultiScaleInputs(torch.nn.Identity(), [0.5, 0.75]).train()
    full, half, three_quarter, fused = msc(ramp)
    assert torch.equal(full, ramp) and half.shape[-2:] == (2, 2) and three_quarter.shape[-2:] == (3, 3)
    assert torch.allclose(half[0, 0, 0], torch.tensor([0.5, 2.5]))
    up = [F.interpolate(t, size=(4, 5), mode="bilinear", align_corners=False) for t in (half, three_quarter)]
    assert torch.equal(fused, torch.maximum(torch.maximum(full, up[0]), up[1]))
    assert torch.equal(msc.eval()(ramp), fused)
    with pytest.raises(ValueError, match="positive input scales"):
        MultiScaleInputs(torch.nn.Identity(), [])


def test_logits_equal_the_release_s_on_the_same_image(
    tmp_path: Path, release_state: dict[str, torch.Tensor]
) -> None:
    """Release file -> wsss (conversion + caffe adapter) vs the reference on the caffe image: max abs
    difference ~3e-5 on logits up to ~45 (relative ~1e-6); in train mode (BN frozen) all four outputs."""
    torch.set_num_threads(1)
    reference = ReferenceMSC(ReferenceDeepLabV2())
    reference.load_state_dict(release_state)
    model = loaded(save(release_state, tmp_path / "checkpoint_final.pth"))
    rgb = torch.rand(1, 3, 65, 81, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.eval()(caffe_image(rgb))
        got = model.eval()(normalised(rgb))
        assert got.shape == expected.shape == (1, 21, 9, 11)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        reference.train()
        reference.base.freeze_bn()
        outputs = model.train()(normalised(rgb))
        for g, e in zip(outputs, reference(caffe_image(rgb)), strict=True):
            assert g.shape == e.shape
            assert (g - e).abs().max() <= 1e-5 * e.abs().max()


def test_the_release_network_is_wsss_s_caffe_resnet() -> None:
    """The facts the equivalence rests on, read off the built modules."""
    net = DeepLabV2(num_classes=21)
    bb = net.backbone
    assert bb.maxpool.ceil_mode and bb.conv1.bias is None and bb.bn1.eps == 1e-5
    assert bb.layer2[0].conv1.stride == (2, 2) and bb.layer2[0].conv2.stride == (1, 1)
    assert [b.conv2.dilation for b in bb.layer3] == [(2, 2)] * 23
    assert [b.conv2.dilation for b in bb.layer4] == [(4, 4)] * 3
    assert bb.layer1[0].downsample is not None and bb.layer1[0].downsample[0].stride == (1, 1)
    assert [(b.fc8.dilation, b.fc8.padding, b.fc8.bias is not None) for b in net.head.branches] == [
        ((r, r), (r, r), True) for r in (6, 12, 18, 24)
    ]


def test_segmenter_aspp_r101_under_protocol_release_is_the_release_s_network(
    tmp_path: Path, release_state: dict[str, torch.Tensor]
) -> None:
    """The seg stage's own build (segmenter=aspp_r101, seg.multi_scale_inputs, segmenter.weights=the
    release's checkpoint_final.pth) computes the reference's logits."""
    from conftest import compose_config
    from wsss.stages.seg import build_task

    path = save(release_state, tmp_path / "checkpoint_final.pth")
    cfg = compose_config(
        ["protocol=release", "segmenter=aspp_r101", f"segmenter.weights={path}"], runs=tmp_path / "runs"
    )
    model = build_task(cfg).model
    assert isinstance(model, MultiScaleInputs) and model.scales == [0.5, 0.75]
    reference = ReferenceMSC(ReferenceDeepLabV2())
    reference.load_state_dict(release_state)
    rgb = torch.rand(1, 3, 49, 57, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference.eval()(caffe_image(rgb))
        got = model.eval()(normalised(rgb))
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
