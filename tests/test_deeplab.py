"""DeepLab networks: head structure, output stride, parameter groups, and the weight loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_segmenter
from wsss.constants import CAFFE_MEAN_BGR
from wsss.errors import WeightsError
from wsss.models.deeplab import DeepLab, caffe_block_names, caffe_key_map
from wsss.models.resnet import FrozenBatchNorm2d
from wsss.models.segmenter_weights import load_weights
from wsss.models.weights import detect_format

ASPP = {"name": "aspp_r101", "backbone__depth": 50}  # ResNet-50 keeps the tests fast
TINY = {"name": "largefov_tiny", "rates": [3], "backbone__width": 4}


def test_aspp_has_four_branches_with_dilations_6_12_18_24_summed_at_output_stride_8() -> None:
    model = make_segmenter(**ASPP).eval()
    assert model.head.rates == [6, 12, 18, 24]
    for branch, rate in zip(model.head.branches, (6, 12, 18, 24), strict=True):
        conv = branch.fc8
        assert conv.kernel_size == (3, 3) and conv.dilation == (rate, rate) and conv.padding == (rate, rate)
        assert (conv.in_channels, conv.out_channels) == (2048, 21)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone(model.input_adapter(x))  # aspp_r101 takes caffe input (the release's)
        summed = sum(b(feats) for b in model.head.branches)
    assert out.shape == (1, 21, 9, 11)  # caffe ResNet: the stem pool rounds up (ceil mode), as the release
    torch.testing.assert_close(out, summed)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_largefov_vgg16_layers_and_output_shape() -> None:
    model = make_segmenter("largefov_vgg16").eval()
    branch = model.head.branches[0]
    assert [type(m) for m in model.pool5] == [nn.MaxPool2d, nn.AvgPool2d]
    assert (model.pool5[0].kernel_size, model.pool5[0].stride, model.pool5[0].padding) == (3, 1, 1)
    assert branch.fc6.dilation == (12, 12) and branch.fc6.kernel_size == (3, 3)
    assert (branch.fc6.out_channels, branch.fc7.out_channels, branch.fc8.out_channels) == (1024, 1024, 21)
    assert [m.p for m in branch if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    # VGG-16 convs 14,714,688 + fc6 4,719,616 + fc7 1,049,600 + fc8 21,525 (DeepLab-LargeFOV: 20.5M)
    assert sum(p.numel() for p in model.parameters()) == 20_505_429
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 97))
    assert out.shape == (1, 21, 8, 12)  # floor(65 / 8), floor(97 / 8): output stride 8 (2x2 pools)


def test_largefov_r101_is_one_branch_at_rate_12() -> None:
    model = make_segmenter("largefov_r101", backbone__output_stride=16)
    assert model.head.rates == [12] and isinstance(model.head.branches[0].fc8, nn.Conv2d)
    assert len(model.backbone.layer3) == 23 and len(model.pool5) == 0


def test_param_groups_give_10x_and_20x_to_the_classifier_only() -> None:
    model = make_segmenter("largefov_vgg16")
    groups = {g["name"]: g for g in model.param_groups(1e-3, weight_decay=5e-4)}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(
        {"weight": 1e-3, "bias": 2e-3, "new_weight": 1e-2, "new_bias": 2e-2}
    )
    assert groups["new_weight"]["params"] == [model.head.branches[0].fc8.weight]
    assert groups["new_bias"]["params"] == [model.head.branches[0].fc8.bias]
    assert (groups["weight"]["weight_decay"], groups["bias"]["weight_decay"]) == (5e-4, 0.0)
    n_total = sum(len(g["params"]) for g in groups.values())
    assert n_total == len(list(model.parameters()))  # every parameter is in exactly one group
    # frozen batch norm: a ResNet backbone has no trainable biases at all
    aspp = {g["name"]: g for g in make_segmenter(**ASPP).param_groups(1.0)}
    assert set(aspp) == {"weight", "new_weight", "new_bias"} and len(aspp["new_weight"]["params"]) == 4


def test_new_head_gives_fc6_fc7_the_new_layers_rate_too() -> None:
    """With weights that hold no fc6/fc7 (the toy classifier's), the whole head is new: 10x / 20x."""
    model = make_segmenter("largefov_tiny", new_head=True)
    branch = model.head.branches[0]
    groups = {g["name"]: g["params"] for g in model.param_groups(1e-3)}
    assert groups["new_weight"] == [branch.fc6.weight, branch.fc7.weight, branch.fc8.weight]
    assert groups["new_bias"] == [branch.fc6.bias, branch.fc7.bias, branch.fc8.bias]
    head = {id(p) for p in model.head.parameters()}
    assert not any(id(p) in head for p in groups["weight"] + groups["bias"])
    assert sum(map(len, groups.values())) == len(list(model.parameters()))
    default = {g["name"]: g["params"] for g in make_segmenter("largefov_tiny").param_groups(1e-3)}
    assert len(default["new_weight"]) == 1  # fc8 only, DeepLab's groups


def test_a_head_needs_a_rate_and_an_unknown_class_is_named() -> None:
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="at least one dilation rate"):
        make_segmenter("largefov_tiny", rates=[])
    with pytest.raises(InstantiationException, match="wsss.models.psp"):
        make_segmenter("largefov_tiny", _target_="wsss.models.psp.PSPNet")


def test_torchvision_vgg16_weights_load_with_decimated_fc6_fc7(tmp_path) -> None:
    torch.manual_seed(0)
    state = {
        f"features.{i}.weight": torch.randn(c_out, c_in, 3, 3)
        for i, c_in, c_out in zip(
            (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512),
            (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512),
            strict=True,
        )
    }
    state |= {k.replace("weight", "bias"): torch.randn(v.shape[0]) for k, v in list(state.items())}
    state |= {
        "classifier.0.weight": torch.randn(4096, 512 * 49),
        "classifier.0.bias": torch.randn(4096),
        "classifier.3.weight": torch.randn(4096, 4096),
        "classifier.3.bias": torch.randn(4096),
        "classifier.6.weight": torch.randn(1000, 4096),
        "classifier.6.bias": torch.randn(1000),
    }
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = make_segmenter("largefov_vgg16", weights=str(path))
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    branch = model.head.branches[0]
    # fc6: filter 4k, input channel c, spatial taps (0, 3, 6) of the 7x7 kernel
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
    assert torch.equal(branch.fc6.weight[5, 7], fc6[20, 7][[0, 3, 6]][:, [0, 3, 6]])
    assert torch.equal(branch.fc7.weight[3, 9, 0, 0], state["classifier.3.weight"][12, 36])
    assert torch.equal(branch.fc7.bias, state["classifier.3.bias"][::4])
    assert float(branch.fc8.weight.detach().std()) < 0.02  # new layer keeps its N(0, 0.01) init
    assert detect_format(state) == "torchvision_vgg16"


def test_caffe_names_follow_deeplab_prototxts() -> None:
    assert caffe_block_names(101)[1] == ["a", "b1", "b2", "b3"]
    assert caffe_block_names(101)[2][-1] == "b22" and caffe_block_names(101)[3] == ["a", "b", "c"]
    assert caffe_block_names(50)[2] == ["a", "b", "c", "d", "e", "f"]
    model = make_segmenter("aspp_r101", backbone__caffe_style=True, backbone__output_stride=16)
    mapping = caffe_key_map(model)
    assert mapping["res4b22_branch2c"] == "backbone.layer3.22.conv3"
    assert mapping["scale3a_branch1"] == "backbone.layer2.0.downsample.1"
    assert mapping["bn_conv1"] == "backbone.bn1"


def _caffe_resnet50_dump(model: DeepLab, num_classes: int) -> dict[str, np.ndarray]:
    """A blob dump in caffe names with random values, built from the model's own shapes."""
    rng = np.random.default_rng(0)
    inverse: dict[str, list[str]] = {}
    for caffe, ours in caffe_key_map(model).items():
        inverse.setdefault(ours, []).append(caffe)
    own = model.state_dict()
    blobs: dict[str, np.ndarray] = {}
    for ours, names in inverse.items():
        for name in names:
            if name.startswith("bn"):
                c = own[f"{ours}.running_mean"].numel()
                blobs[f"{name}.0"] = rng.normal(size=c).astype(np.float32) * 2.0  # mean * factor
                blobs[f"{name}.1"] = rng.uniform(1, 2, size=c).astype(np.float32) * 2.0
                blobs[f"{name}.2"] = np.array([2.0], np.float32)
            elif name.startswith("scale"):
                c = own[f"{ours}.weight"].numel()
                blobs[f"{name}.0"], blobs[f"{name}.1"] = rng.normal(size=(2, c)).astype(np.float32)
            else:
                blobs[f"{name}.0"] = rng.normal(size=own[f"{ours}.weight"].shape).astype(np.float32)
    for i in range(4):
        blobs[f"fc1_voc12_c{i}.0"] = rng.normal(size=(num_classes, 2048, 3, 3)).astype(np.float32)
        blobs[f"fc1_voc12_c{i}.1"] = rng.normal(size=num_classes).astype(np.float32)
    return blobs


def test_caffe_resnet_blob_dump_loads_with_bn_factor_and_rgb_input(tmp_path) -> None:
    cfg = {**ASPP, "input_format": "imagenet"}  # folded into conv1 (the LargeFOV-R101 way; inexact)
    model = make_segmenter(**cfg)
    blobs = _caffe_resnet50_dump(model, 21)
    path = tmp_path / "deeplab_caffe.npz"
    np.savez(path, **blobs)
    assert load_weights(model, path) == "caffe_resnet"
    bn = model.backbone.layer3[5].bn2
    np.testing.assert_allclose(bn.running_mean.numpy(), blobs["bn4f_branch2b.0"] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), blobs["bn4f_branch2b.1"] / 2.0, rtol=1e-6)
    np.testing.assert_allclose(bn.weight.numpy(), blobs["scale4f_branch2b.0"])
    np.testing.assert_allclose(model.head.branches[2].fc8.weight.detach().numpy(), blobs["fc1_voc12_c2.0"])
    # first conv: RGB order, scaled by 255 * std, so that normalised RGB input = caffe's BGR 0-255 input
    conv1 = model.backbone.conv1.weight.detach()
    np.testing.assert_allclose(conv1[:, 0].numpy(), blobs["conv1.0"][:, 2] * 255 * 0.229, rtol=1e-5)

    # COCO-style class layers (91 classes) are skipped, the rest still loads
    coco = make_segmenter(**cfg)
    before = coco.head.branches[0].fc8.weight.clone()
    np.savez(tmp_path / "coco.npz", **_caffe_resnet50_dump(coco, 91))
    load_weights(coco, tmp_path / "coco.npz")
    assert torch.equal(coco.head.branches[0].fc8.weight, before)

    with pytest.raises(ValueError, match="segmenter.backbone.caffe_style=true"):
        load_weights(make_segmenter(**cfg, backbone__caffe_style=False), path)


def test_caffe_input_segmenter_takes_caffe_weights_unfolded_and_refuses_torchvision(tmp_path) -> None:
    """aspp_r101 (input_format caffe): the blob dump loads as it is, and the network computes caffe's
    function of the caffe image (here: its stem conv on BGR 0-255 minus the mean)."""
    model = make_segmenter(**ASPP).eval()
    blobs = _caffe_resnet50_dump(model, 21)
    np.savez(tmp_path / "deeplab_caffe.npz", **blobs)
    assert load_weights(model, tmp_path / "deeplab_caffe.npz") == "caffe_resnet"
    np.testing.assert_array_equal(model.backbone.conv1.weight.detach().numpy(), blobs["conv1.0"])
    rgb = torch.rand(1, 3, 17, 19, generator=torch.Generator().manual_seed(0))
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    caffe = rgb.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        got = model.backbone.conv1(model.input_adapter((rgb - mean) / std))
        want = torch.nn.functional.conv2d(caffe, torch.from_numpy(blobs["conv1.0"]), stride=2, padding=3)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)
    torch.save(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)},
        tmp_path / "tv.pth",
    )
    with pytest.raises(
        WeightsError, match="segmenter.input_format=imagenet segmenter.backbone.caffe_style=false"
    ):
        load_weights(model, tmp_path / "tv.pth")


def test_caffe_vgg_first_conv_sees_the_same_input_as_caffe(tmp_path) -> None:
    """conv1_1 folded for RGB normalised input gives caffe's response to BGR 0-255 minus mean (interior)."""
    model = make_segmenter("largefov_vgg16")
    rng = np.random.default_rng(1)
    blobs = {}
    for name, ours in caffe_key_map(model).items():
        w = model.state_dict()[f"{ours}.weight"]
        blobs[f"{name}.0"] = rng.normal(size=w.shape).astype(np.float32) * 0.01
        blobs[f"{name}.1"] = rng.normal(size=w.shape[0]).astype(np.float32)
    for name in ("fc6", "fc7"):
        w = getattr(model.head.branches[0], name).weight
        blobs[f"{name}.0"] = rng.normal(size=w.shape).astype(np.float32)
        blobs[f"{name}.1"] = rng.normal(size=w.shape[0]).astype(np.float32)
    blobs["fc8_voc12.0"] = rng.normal(size=(21, 1024, 1, 1)).astype(np.float32)
    blobs["fc8_voc12.1"] = rng.normal(size=21).astype(np.float32)
    np.savez(tmp_path / "vgg_caffe.npz", **blobs)
    assert load_weights(model, tmp_path / "vgg_caffe.npz") == "caffe_vgg16"
    assert torch.equal(model.head.branches[0].fc8.bias, torch.from_numpy(blobs["fc8_voc12.1"]))

    image = rng.integers(0, 256, size=(1, 3, 12, 12)).astype(np.float32)  # RGB 0-255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    ours_in = torch.from_numpy(((image / 255 - mean[:, None, None]) / std[:, None, None]).astype(np.float32))
    caffe_in = torch.from_numpy(image[:, ::-1] - np.array(CAFFE_MEAN_BGR, np.float32)[:, None, None])
    conv = model.backbone.features[0]
    ours_out = conv(ours_in)[..., 1:-1, 1:-1]
    caffe_out = nn.functional.conv2d(
        caffe_in.float(), torch.from_numpy(blobs["conv1_1.0"]), torch.from_numpy(blobs["conv1_1.1"])
    )
    torch.testing.assert_close(ours_out, caffe_out, atol=1e-3, rtol=1e-4)


def test_weight_file_errors_name_the_fix(tmp_path) -> None:
    with pytest.raises(WeightsError, match="segmenter.weights=null"):
        make_segmenter(**TINY, weights=str(tmp_path / "missing.pth"))
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="unknown weights format"):
        make_segmenter(**TINY, weights=str(tmp_path / "odd.pth"))
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "r.pth")
    with pytest.raises(ValueError, match="do not fit a VGG-16 segmenter"):
        make_segmenter(**TINY, weights=str(tmp_path / "r.pth"))


def test_own_checkpoint_round_trip(tmp_path) -> None:
    model = make_segmenter(**TINY)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "seg.ckpt"
    )
    other = make_segmenter(**TINY, weights=str(tmp_path / "seg.ckpt"))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_classifier_checkpoint_starts_the_backbone_only(tmp_path) -> None:
    """A stage=cls checkpoint (backbone with DRS, head, classifier): its backbone convs are copied."""
    donor = make_segmenter(**TINY)
    state = {f"model.backbone.{k}": v + 1.0 for k, v in donor.backbone.state_dict().items()}
    state |= {
        "model.backbone.features.1.fc.0.weight": torch.zeros(4, 4),  # a DRS controller: not for the segmenter
        "model.head.0.weight": torch.zeros(8, 32, 3, 3),
        "model.classifier.weight": torch.zeros(20, 8, 1, 1),
        "model.classifier.bias": torch.zeros(20),
    }
    torch.save({"state_dict": state}, tmp_path / "cls.ckpt")
    model = make_segmenter(**TINY)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert load_weights(model, tmp_path / "cls.ckpt") == "wsss_classifier"
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, donor.backbone.state_dict()[k] + 1.0), k
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    with pytest.raises(ValueError, match="does not match segmenter.backbone"):
        load_weights(make_segmenter(**{**TINY, "backbone__width": 8}), tmp_path / "cls.ckpt")
