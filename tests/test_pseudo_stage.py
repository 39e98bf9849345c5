"""stage=pseudo end to end on 4 real VOC images: palette PNGs, resuming, quality metrics, clear errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config, finish_as_made, run_stage
from wsss.data.maps_io import dense_maps, load_maps, save_maps
from wsss.data.palette import read_index_png, voc_palette
from wsss.data.voc import read_saliency
from wsss.method.localization import resize_maps
from wsss.pipeline.artifacts import Experiment, read_json
from wsss.stages.pseudo_rules import PseudoRule, make_label

TRAIN = ["2007_000063", "2007_000363", "2007_000648"]  # in VOC train (eval_split)
EXTRA = ["2008_002176"]  # train_aug only
IDS = TRAIN + EXTRA


@pytest.fixture()
def voc(tmp_path: Path, shared_data: Path) -> tuple[Path, Path]:
    """A 4-image VOC copy (train_aug = 4 ids, train = 3 of them) and its saliency folder."""
    src = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    dst = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png"), ("saliency_isnet_imgly", "png")):
        (dst / sub).mkdir(parents=True)
        for i in IDS:
            shutil.copy(src / sub / f"{i}.{ext}", dst / sub / f"{i}.{ext}")
    (dst / "SegmentationClass").mkdir()
    for i in TRAIN:
        shutil.copy(src / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass" / f"{i}.png")
    lists = dst / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("\n".join(IDS) + "\n")
    (lists / "train.txt").write_text("\n".join(TRAIN) + "\n")
    return tmp_path / "data", dst / "saliency_isnet_imgly"


def _gt(root: Path, image_id: str) -> np.ndarray:
    return read_index_png(root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / f"{image_id}.png")


def _write_maps(cfg, root: Path, stage: str, scale: int) -> None:
    """Maps made from the ground truth (indicator of each present class), stored at 1/scale size, marked
    complete with the record the config expects (as if stage=maps had made them)."""
    exp = Experiment(Path(cfg.paths.exp_dir), runs=cfg.paths.runs)
    folder = exp.stage_dir(stage)
    for i in IDS:
        gt = _gt(root, i)
        classes = np.array([c - 1 for c in np.unique(gt) if 0 < c < 255])
        maps = np.stack([(gt == c + 1).astype(np.float32) for c in classes])
        size = (gt.shape[0] // scale, gt.shape[1] // scale)
        save_maps(folder / f"{i}.npz", classes, resize_maps(maps, size))
    finish_as_made(cfg, stage, {"best_threshold": 0.35})  # the seed evaluation's optimum


def _config(tmp_path: Path, root: Path, saliency: Path | None, *extra: str):
    overrides = [
        "stage=pseudo",
        "data=voc",
        f"data.root={root}",
        "data.maps_split=train_aug",
        "data.eval_split=train",
        "logger=csv",
        "exp=t",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
    if saliency is not None:
        overrides.append(f"data.saliency_dir={saliency}")
    return compose_config(overrides, runs=tmp_path / "runs")


def _run(cfg) -> tuple[dict, Experiment]:
    return run_stage(cfg), Experiment(Path(cfg.paths.exp_dir), runs=cfg.paths.runs)


@pytest.mark.parametrize("protocol", ["paper", "release"])
def test_saliency_labels_are_palette_pngs_of_the_rule(tmp_path: Path, voc, protocol: str) -> None:
    root, sal = voc
    cfg = _config(tmp_path, root, sal, f"protocol={protocol}", "pseudo.workers=2")
    _write_maps(cfg, root, "maps_refine", scale=4)
    metrics, exp = _run(cfg)
    rule = PseudoRule(rule=protocol)
    for i in IDS:
        path = exp.stage_dir("pseudo") / f"{i}.png"
        with Image.open(path) as img:
            assert img.mode == "P"
            assert img.getpalette()[: 256 * 3] == voc_palette().flatten().tolist()
        label = read_index_png(path)
        saliency = read_saliency(sal / f"{i}.png")
        assert label.shape == saliency.shape == _gt(root, i).shape  # original size, not the stored 1/4
        classes, maps = load_maps(exp.stage_dir("maps_refine") / f"{i}.npz")
        expected = make_label(
            rule, dense_maps(classes, resize_maps(maps, label.shape)), saliency, label.shape
        )
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= set(range(21)) | {255}
    assert metrics["rule"] == protocol and metrics["background"] == "saliency"
    assert metrics["images"] == 4 and metrics["written"] == 4 and metrics["eval_images"] == 3
    assert 0.0 < metrics["ignore_ratio"] < 1.0
    assert 0.0 < metrics["miou"] <= 1.0
    assert read_json(exp.stage_dir("pseudo") / "metrics.json")["miou"] == metrics["miou"]
    assert exp.is_complete("pseudo")
    assert (exp.root / "figures" / "pseudo.png").is_file()
    assert (exp.stage_dir("pseudo") / "per_class_iou.csv").read_text().startswith("class,iou\nbackground,")
    logged = (exp.root / "logs" / "pseudo" / "version_0" / "metrics.csv").read_text()
    assert "pseudo/miou" in logged and "pseudo/ignore_ratio" in logged


def test_fallback_from_exact_maps_scores_one_and_resumes(tmp_path: Path, voc) -> None:
    root, _ = voc
    cfg = _config(tmp_path, root, None, "pseudo.background=fallback", "pseudo.source=cls", "pseudo.workers=1")
    _write_maps(cfg, root, "maps_cls", scale=1)  # full-size indicator maps: the labels equal the masks
    metrics, exp = _run(cfg)
    assert (
        metrics["background"] == "fallback" and metrics["fallback_threshold"] == 0.35
    )  # best: from the maps
    assert metrics["fallback_threshold_from"].startswith("maps seed evaluation")
    assert metrics["miou"] == 1.0 and metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["ignore_ratio"] == 0.0
    gt = _gt(root, IDS[0])
    label = read_index_png(exp.stage_dir("pseudo") / f"{IDS[0]}.png")
    np.testing.assert_array_equal(label[gt != 255], gt[gt != 255])

    first = exp.stage_dir("pseudo") / f"{EXTRA[0]}.png"
    kept = exp.stage_dir("pseudo") / f"{IDS[0]}.png"
    first.write_bytes(b"not a png")  # damaged after it was written
    kept_at = kept.stat().st_mtime_ns
    (exp.stage_dir("pseudo") / ".complete").unlink()  # as if killed before the end: a rerun resumes ...
    metrics, _ = _run(cfg)
    assert metrics["written"] == 1 and metrics["skipped"] == 3  # ... checking what it keeps
    assert read_index_png(first).shape == _gt(root, EXTRA[0]).shape and kept.stat().st_mtime_ns == kept_at
    cfg.force = True  # ... and force=true makes it anew
    metrics, _ = _run(cfg)
    assert metrics["written"] == 4 and read_index_png(first).shape == _gt(root, EXTRA[0]).shape


def test_saliency_required_but_missing(tmp_path: Path, voc) -> None:
    from wsss.errors import MissingSaliencyError

    root, sal = voc
    cfg = _config(tmp_path, root, None)
    _write_maps(cfg, root, "maps_refine", scale=4)
    with pytest.raises(
        MissingSaliencyError, match=r"data.saliency_dir is not set.*pseudo.background=fallback"
    ):
        _run(cfg)
    (sal / f"{IDS[2]}.png").unlink()
    with_saliency = _config(tmp_path, root, sal)
    _write_maps(with_saliency, root, "maps_refine", scale=4)  # data.saliency_dir is not a key of the maps
    with pytest.raises(MissingSaliencyError, match=rf"1 of 4 images have no saliency map .*{IDS[2]}\.png"):
        _run(with_saliency)


def test_missing_maps_and_missing_pydensecrf_fail_at_start(tmp_path: Path, voc, monkeypatch) -> None:
    from wsss.errors import MissingArtifactError, MissingCRFError

    root, sal = voc
    with pytest.raises(
        MissingArtifactError, match=r"stage=pipeline 'pipeline.stages=\[cls,maps_cls,refine,maps_refine\]'"
    ):
        _run(_config(tmp_path, root, sal))
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    cfg = _config(tmp_path, root, sal, "pseudo.crf=true")
    _write_maps(cfg, root, "maps_refine", scale=4)
    with pytest.raises(MissingCRFError, match=r"pip install 'wsss\[crf\]'"):
        _run(cfg)
    assert not (Path(cfg.paths.exp_dir) / "pseudo" / ".complete").exists()


class _Truth:
    """A stand-in for the eval split: ids and their masks."""

    def __init__(self, masks: dict[str, np.ndarray]) -> None:
        self.ids = list(masks)
        self.masks = masks

    def mask(self, i: int) -> np.ndarray:
        return self.masks[self.ids[i]]


def test_quality_counts_ignore_as_background_and_reports_labeled_only(tmp_path: Path) -> None:
    from wsss.data.palette import save_mask
    from wsss.stages.pseudo import evaluate

    gt = np.zeros((4, 4), np.uint8)
    gt[:, 2:] = 1  # 8 background, 8 class-1 pixels
    label = gt.copy()
    label[:, 3] = 255  # half of the object unlabelled
    label[0, 0] = 255  # one background pixel unlabelled
    save_mask(tmp_path / "a.png", label)
    metrics, per_class = evaluate(tmp_path, _Truth({"a": gt}))
    # 255 as background: background IoU 8 / (8 + 4) , class-1 IoU 4 / 8
    assert metrics["miou"] == pytest.approx((8 / 12 + 4 / 8) / 2)
    assert metrics["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["precision"] == pytest.approx((8 / 12 + 1.0) / 2)
    assert per_class["aeroplane"] == pytest.approx(0.5)
    # 255 left out: what is labelled is all correct
    assert metrics["miou_labeled"] == metrics["precision_labeled"] == metrics["recall_labeled"] == 1.0
    assert metrics["ignore_ratio"] == pytest.approx(5 / 16)
