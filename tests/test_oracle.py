"""The oracle row (``pseudo.source=gt``: the segmenter trained on the ground truth) and the toy val size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import TINY_TOY, compose_config, run_stage
from wsss.data.palette import read_index_png
from wsss.data.toy import SIZES, ensure_toy
from wsss.data.voc import VOCDataset
from wsss.errors import MissingLabelsError
from wsss.pipeline.artifacts import Experiment
from wsss.pipeline.runner import pipeline_names


def _oracle(tmp_path: Path, *extra: str):
    return compose_config(
        [
            *TINY_TOY,
            "stage=pipeline",
            "exp=oracle",
            "pseudo.source=gt",
            "seg.max_steps=4",
            "seg.val_every_n_steps=2",
            f"paths.data={tmp_path / 'data'}",
            *extra,
        ],
        runs=tmp_path / "runs",
    )


def test_oracle_pipeline_trains_the_segmenter_on_the_ground_truth(tmp_path: Path) -> None:
    cfg = _oracle(tmp_path)
    assert pipeline_names(cfg) == ["pseudo", "seg", "eval"]  # no classifier, no maps
    run_stage(cfg)
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    data = VOCDataset(cfg.data.root, "train_aug")
    assert len(data.ids) == 8
    for k, image_id in enumerate(data.ids):  # the labels are the masks, pixel for pixel
        np.testing.assert_array_equal(
            read_index_png(exp.stage_dir("pseudo") / f"{image_id}.png"), data.mask(k)
        )
    pseudo = json.loads((exp.stage_dir("pseudo") / "metrics.json").read_text())
    assert pseudo["source"] == "gt" and pseudo["rule"] == "gt"
    assert pseudo["miou"] == pytest.approx(1.0) and pseudo["ignore_ratio"] == 0.0
    record = exp.record("pseudo")
    assert record["upstream"] == {} and record["config"]["pseudo.source"] == "gt"
    assert "pseudo" in exp.record("seg")["upstream"]
    assert 0.0 <= exp.metrics("eval")["miou"] <= 1.0 and exp.is_complete("eval")
    assert not (exp.root / "cls").exists() and not (exp.root / "maps").exists()


def test_oracle_and_map_labels_are_different_artifacts(tmp_path: Path) -> None:
    """The identity says where the labels came from: a cls-sourced pseudo folder is not the oracle's."""
    from wsss.pipeline.provenance import expected_record

    gt, cam = _oracle(tmp_path), _oracle(tmp_path, "pseudo.source=cls")
    assert expected_record(gt, "pseudo")["identity"] != expected_record(cam, "pseudo")["identity"]
    assert list(expected_record(cam, "pseudo")["upstream"]) == ["maps_cls"]
    assert pipeline_names(cam) == ["cls", "maps_cls", "pseudo", "seg", "eval"]


def test_oracle_needs_a_mask_for_every_image(tmp_path: Path) -> None:
    cfg = _oracle(tmp_path, "stage=pseudo", "data.maps_split=test")  # the toy test split has no masks
    with pytest.raises(
        MissingLabelsError, match=r"pseudo.source=gt .* 1 images .* no mask .*pseudo.source=cls"
    ):
        run_stage(cfg)


def test_toy_val_has_200_images() -> None:
    cfg = compose_config(["experiment=toy"])
    assert cfg.data.toy.num_val == 200 == SIZES["num_val"]
    assert cfg.data.val_split == "val" and cfg.eval.split == "val"


def test_toy_with_other_split_sizes_is_remade_with_the_same_images(tmp_path: Path) -> None:
    small = {"num_train": 3, "num_val": 2, "num_test": 1, "size": 48}
    cfg = OmegaConf.create({"root": str(tmp_path / "toy"), "generate": True, "toy": {"seed": 0, **small}})
    ensure_toy(cfg)
    before = VOCDataset(tmp_path / "toy", "val")
    first = [before.mask(k) for k in range(2)]
    cfg.toy.num_val = 5
    ensure_toy(cfg)  # replaced (only the counts differ), not refused
    after = VOCDataset(tmp_path / "toy", "val")
    assert len(after.ids) == 5
    for k in range(2):
        np.testing.assert_array_equal(after.mask(k), first[k])


def test_report_labels_the_oracle_row_whatever_the_controller() -> None:
    from wsss.experiments.paper import JobSettings

    base = {"delta": 0.55, "placement": ("conv1",), "segmenter": "largefov_vgg16", "seed": 0}
    for mode in ("learnable", "fixed"):
        job = JobSettings(mode=mode, source="gt", **base)
        assert job.label("table3_refine") == "oracle (ground-truth labels)"
        assert job.label("table4_seg") == "oracle (ground-truth labels) LargeFOV-VGG16"
    assert JobSettings(mode="learnable", source="cls", **base).label("table3_refine") == "learnable"
