"""Weights from files: torchvision VGG-16 / ResNet layouts, the authors' release checkpoints, wsss checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import net_config
from wsss.models.networks import build, classifier_spec
from wsss.models.weights import (
    WeightsError,
    detect_format,
    init_score_network,
    load_backbone_weights,
    load_classifier_weights,
)

VGG_CONVS = {  # torchvision features index of each conv: (in, out)
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
# the release's names of the same convs, written out by hand (docs/protocol.md "Weights users bring")
RELEASE_NAMES = {
    0: "layer1_conv1", 2: "layer1_conv2", 5: "layer2_conv1", 7: "layer2_conv2", 10: "layer3_conv1",
    12: "layer3_conv2", 14: "layer3_conv3", 17: "layer4_conv1", 19: "layer4_conv2", 21: "layer4_conv3",
    24: "layer5_conv1", 26: "layer5_conv2", 28: "layer5_conv3",
}  # fmt: skip


def backbone_cfg(name: str = "vgg16", weights: str | None = None, **extra):
    node = net_config("backbone", name, **extra)
    node.weights = weights
    return node


def drs(mode: str = "learnable"):
    return net_config("drs", mode)


def build_classifier(backbone, drs_node, num_classes: int, weights: str | None = None):
    """What stage=cls builds: the network of the config groups, then its init from the weights files."""
    model = net_config("model", "classifier")
    model.num_classes = num_classes
    net = build(classifier_spec(OmegaConf.create({"backbone": backbone, "drs": drs_node, "model": model})))
    init_score_network(net, backbone.weights, weights, backbone.name)
    return net


def torchvision_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in VGG_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.05
    for index in (0, 3, 6):  # the fully connected layers (tiny stand-ins: they are skipped anyway)
        state[f"classifier.{index}.weight"] = torch.randn(4, 4, generator=g)
        state[f"classifier.{index}.bias"] = torch.randn(4, generator=g)
    return state


def to_release(model: torch.nn.Module, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The authors' checkpoint keys for a wsss VGG-16 classifier, with features.N aliases and a prefix."""
    state = model.state_dict()
    out = {}
    for index, name in RELEASE_NAMES.items():
        for p in ("weight", "bias"):
            out[f"{name}.{p}"] = state[f"backbone.features.{index}.{p}"]
            out[f"features.{index}.{p}"] = state[f"backbone.features.{index}.{p}"]  # the alias
        fc = f"backbone.features.{index + 1}.fc.0.weight"
        if fc in state:
            out[f"{name.replace('conv', 'relu')}.fc.0.weight"] = state[fc]
    for j in (1, 2, 3):
        out[f"extra_conv{j}.weight"] = state[f"head.{2 * j - 2}.weight"]
        out[f"extra_conv{j}.bias"] = state[f"head.{2 * j - 2}.bias"]
        if f"head.{2 * j - 1}.fc.0.weight" in state:
            out[f"extra_relu{j}.fc.0.weight"] = state[f"head.{2 * j - 1}.fc.0.weight"]
    out["extra_conv4.weight"] = state["classifier.weight"]
    out["extra_conv4.bias"] = state["classifier.bias"]
    return {prefix + k: v.clone() for k, v in out.items()}


def test_torchvision_vgg16_state_dict_loads_into_the_backbone(tmp_path: Path, caplog) -> None:
    path = tmp_path / "vgg16-imagenet.pth"
    state = torchvision_vgg16_state()
    torch.save(state, path)
    torch.manual_seed(1)
    fresh_fc = build_classifier(backbone_cfg(), drs(), 20).backbone.features[1].fc[0].weight.clone()
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="wsss.models.weights"):
        model = build_classifier(backbone_cfg(weights=str(path)), drs(), 20)
    for index in VGG_CONVS:
        assert torch.equal(model.backbone.features[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(model.backbone.features[index].bias, state[f"features.{index}.bias"])
    assert torch.equal(model.backbone.features[1].fc[0].weight, fresh_fc)  # DRS controllers keep their init
    assert (
        "loaded 26 tensors" in caplog.text
        and "skipped 6" in caplog.text
        and "classifier.0.weight" in caplog.text
    )


def test_load_report_lists_loaded_skipped_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision_vgg16_state(), path)
    backbone = build_classifier(backbone_cfg(), drs(), 20).backbone
    report = load_backbone_weights(backbone, path)
    assert report.format == "torchvision_vgg16"
    assert len(report.loaded) == 26 and sorted(report.skipped)[0] == "classifier.0.bias"
    assert report.missing == [f"features.{i + 1}.fc.0.weight" for i in VGG_CONVS]


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision_vgg16_state(), path)
    with pytest.raises(
        WeightsError, match=r"'features.0.weight' has shape \(64, 3, 3, 3\) in the file but \(8, 3, 3, 3\)"
    ):
        build_classifier(backbone_cfg("tiny", weights=str(path), width=8), drs(), 20)


def test_missing_file_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match="backbone.weights=.*nope.pth: no such file. Set backbone.weights="
    ):
        build_classifier(backbone_cfg(weights=str(tmp_path / "nope.pth")), drs(), 20)
    tiny = backbone_cfg("tiny", width=4)
    with pytest.raises(FileNotFoundError, match="model.weights=.*gone.ckpt: no such file"):
        build_classifier(tiny, drs(), 20, weights=str(tmp_path / "gone.ckpt"))


def test_torchvision_resnet_layout_loads(tmp_path: Path) -> None:
    from wsss.models.resnet import ResNetBackbone

    source = ResNetBackbone(depth=50)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = build_classifier(backbone_cfg("resnet50", weights=str(path), output_stride=8), drs(), 20)
    assert torch.equal(model.backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])
    with pytest.raises(
        WeightsError, match="no tensor of this torchvision_resnet file fits the VGG16Backbone"
    ):
        build_classifier(backbone_cfg("vgg16", weights=str(path)), drs(), 20)


@pytest.mark.parametrize("mode", ["learnable", "fixed"])
def test_release_checkpoint_reproduces_the_logits(tmp_path: Path, mode: str) -> None:
    torch.manual_seed(0)
    source = build_classifier(backbone_cfg(), drs(mode), 20).eval()
    with torch.no_grad():
        for p in source.parameters():  # make every tensor matter (biases start at zero)
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "release.pth"
    torch.save({"model": to_release(source), "epoch": 7, "miou": 0.5}, path)
    torch.manual_seed(123)
    loaded = build_classifier(backbone_cfg(), drs(mode), 20, weights=str(path)).eval()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(loaded.logits(x), source.logits(x))
        assert torch.equal(loaded(x), source(x))
    report = load_classifier_weights(loaded, path)
    assert (
        report.format == "release_classifier"
        and report.aliases == 26
        and not report.skipped
        and not report.missing
    )


def test_release_checkpoint_without_prefix_and_the_drs_mismatch_hint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fixed = build_classifier(backbone_cfg(), drs("fixed"), 20)
    path = tmp_path / "release_delta.pth"
    torch.save(to_release(fixed, prefix=""), path)
    assert detect_format(torch.load(path, weights_only=True)) == "release_classifier"
    with pytest.raises(WeightsError, match="no DRS controller weights.*set drs=... to match"):
        build_classifier(backbone_cfg(), drs("learnable"), 20, weights=str(path))


def test_wsss_lightning_checkpoint_as_model_and_backbone_weights(tmp_path: Path) -> None:
    tiny = backbone_cfg("tiny", width=4)
    torch.manual_seed(0)
    source = build_classifier(tiny, drs(), 20)
    path = tmp_path / "best.ckpt"
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        "epoch": 3,
        "global_step": 9,
    }
    torch.save(ckpt, path)
    torch.manual_seed(5)
    whole = build_classifier(tiny, drs(), 20, weights=str(path))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(whole(x), source(x))
    init = backbone_cfg("tiny", width=4, weights=str(path))
    torch.manual_seed(5)
    refiner_like = build_classifier(init, drs("off"), 20)  # ImageNet-style init from a wsss checkpoint
    assert torch.equal(refiner_like.backbone.features[0].weight, source.backbone.features[0].weight)
    assert not torch.equal(refiner_like.classifier.weight, source.classifier.weight)


def test_wrong_file_for_the_key_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    torch.save(torchvision_vgg16_state(), path)
    with pytest.raises(WeightsError, match="pass it as backbone.weights=<file>"):
        build_classifier(backbone_cfg(), drs(), 20, weights=str(path))
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.w": torch.zeros(2)}, odd)
    with pytest.raises(WeightsError, match="unknown weights format"):
        build_classifier(backbone_cfg(weights=str(odd)), drs(), 20)
