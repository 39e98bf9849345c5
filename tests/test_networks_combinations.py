"""Every experiment composes with every backbone and segmenter, and wsss's network check (before any
work) refuses a key or value a network does not take as a ConfigError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_TOY, compose_config, run_stage
from wsss.errors import ConfigError, TrainingError
from wsss.models.config_checks import check_networks
from wsss.pipeline.config import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (CONF_DIR / "backbone").glob("*.yaml"))
SEGMENTERS = sorted(p.stem for p in (CONF_DIR / "segmenter").glob("*.yaml"))
FAST = "toy"
"""The experiment walked in the fast suite; the others are walked by the slow tests."""


def _walk(experiment: str, group: str, name: str, stages: list[str], tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={experiment}", f"{group}={name}"], runs=tmp_path / "runs")
    assert cfg[group].name == name  # the command line's choice wins over the experiment's
    check_networks(cfg, stages)  # builds the network on the meta device


def test_the_lists_cover_the_config_groups() -> None:
    assert {"toy", "paper_vgg16", "release"} <= set(EXPERIMENTS)
    assert {"tiny", "vgg16", "resnet50", "resnet101"} <= set(BACKBONES)
    assert {"largefov_tiny", "largefov_vgg16", "aspp_r101", "deeplabv3plus_r101"} <= set(SEGMENTERS)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_toy_recipe_takes_every_backbone(backbone: str, tmp_path: Path) -> None:
    _walk(FAST, "backbone", backbone, ["cls", "refine"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("segmenter", SEGMENTERS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_every_segmenter(experiment: str, segmenter: str, tmp_path: Path) -> None:
    _walk(experiment, "segmenter", segmenter, ["seg", "eval"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != FAST])
def test_every_experiment_takes_every_backbone(experiment: str, backbone: str, tmp_path: Path) -> None:
    _walk(experiment, "backbone", backbone, ["cls", "refine"], tmp_path)


def test_the_toy_recipe_takes_a_segmenter_of_another_family(tmp_path: Path) -> None:
    _walk(FAST, "segmenter", "largefov_vgg16", ["seg"], tmp_path)


def test_a_key_the_backbone_does_not_take_is_refused_naming_it(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=toy", "backbone=resnet50", "+backbone.dropout=0.5"], runs=tmp_path)
    with pytest.raises(ConfigError) as err:
        check_networks(cfg, ["cls"])
    assert str(err.value).startswith(
        "backbone.dropout=0.5 is not a setting of backbone=resnet50 (wsss.models.resnet.ResNetBackbone "
        "takes: caffe_style, depth, dilate_first_block, frozen_bn, output_stride). Remove it (~backbone.dropout)"
    )
    cfg = compose_config(["experiment=toy", "+segmenter.backbone.width2=3"], runs=tmp_path)
    check_networks(cfg, ["cls"])  # the segmenter is not built by cls: not checked
    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.width2=3 is not a setting of segmenter="):
        check_networks(cfg, ["seg"])


def test_a_value_the_network_refuses_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    for override, says in (
        (
            "backbone.output_stride=2",
            "backbone=tiny cannot be built with these settings: backbone.output_stride=2",
        ),
        ("backbone.width=0", "backbone=tiny cannot be built with these settings: backbone.width=0 must be"),
    ):
        cfg = compose_config(["experiment=toy", override], runs=tmp_path)
        with pytest.raises(ConfigError) as err:
            check_networks(cfg, ["cls"])
        assert str(err.value).startswith(says), str(err.value)


CHEAP = ["data.batch_size=2", "cls.log_images=0", "data.toy.size=32"]
"""One tiny batch: VGG-16 on CPU costs seconds per 8 images of 48 px."""


def test_toy_with_vgg16_runs_one_batch_of_each_loop(tmp_path: Path) -> None:
    """``experiment=toy backbone=vgg16 trainer.fast_dev_run=1``: the real network, forward and backward
    (it used to crash: VGG16Backbone took no output_stride); fast_dev_run then refuses to mark it complete."""
    cfg = compose_config(
        [*TINY_TOY, "stage=cls", "exp=fdr", "backbone=vgg16", "trainer.fast_dev_run=1", *CHEAP],
        runs=tmp_path / "runs",
    )
    assert cfg.backbone.output_stride == 4  # the toy recipe's stride, on VGG-16
    with pytest.raises(TrainingError, match=r"fast_dev_run \(debug=fdr\) ran one batch of each loop"):
        run_stage(cfg)


def test_output_stride_4_keeps_the_weights_layout() -> None:
    """Stride 4 changes pools only: a stride-8 VGG-16 / ResNet state dict loads as it is."""
    import torch

    from wsss.models.resnet import ResNetBackbone
    from wsss.models.vgg import VGG16Backbone

    for make in (VGG16Backbone, lambda output_stride: ResNetBackbone(depth=50, output_stride=output_stride)):
        eight, four = make(output_stride=8), make(output_stride=4)
        four.load_state_dict(eight.state_dict())
        x = torch.zeros(1, 3, 64, 64)
        with torch.no_grad():
            assert eight(x).shape[-1] == 8 and four(x).shape[-1] == 16
