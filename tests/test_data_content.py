"""Data is named in identities by its content: moved or copied data reuses everything; a changed mask
invalidates exactly what read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_TOY, compose_config, run_train
from wsss.data.content import attach_content
from wsss.pipeline.provenance import expected_record

PIPELINE = ["stage=pipeline", "pipeline.stages=[cls,maps_cls,pseudo]", "pseudo.source=cls", "cls.epochs=1"]


def _toy(tmp_path: Path, root: Path | None = None, generate: bool = True):
    extra = [f"data.root={root}", f"data.generate={str(generate).lower()}"] if root else []
    return compose_config([*TINY_TOY, *extra], runs=tmp_path / "runs")


def _voc(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def test_fingerprints_follow_content_not_the_folder(tmp_path: Path) -> None:
    cfg = _toy(tmp_path)
    first = attach_content(cfg)
    assert set(first) == {"train_aug", "train", "val", "test", "train_aug+saliency"}
    copy = tmp_path / "elsewhere" / "toy"
    shutil.copytree(cfg.data.root, copy)
    moved = _toy(tmp_path, copy, generate=False)
    assert attach_content(moved) == first
    assert expected_record(moved, "pseudo")["identity"] == expected_record(cfg, "pseudo")["identity"]
    assert "data.root" not in expected_record(cfg, "cls")["config"]

    val_id = (_voc(copy) / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    mask_path = _voc(copy) / "SegmentationClassAug" / f"{val_id}.png"
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 255 if mask[0, 0] != 255 else 0
    Image.fromarray(mask).save(mask_path)
    changed = attach_content(moved)
    assert changed["val"] != first["val"]
    assert {k: v for k, v in changed.items() if k != "val"} == {k: v for k, v in first.items() if k != "val"}
    # cls validates on val: its identity changes; the refiner reads train_aug only: its own config does not
    assert expected_record(moved, "cls")["identity"] != expected_record(cfg, "cls")["identity"]
    assert expected_record(moved, "refine")["config"] == expected_record(cfg, "refine")["config"]


def test_a_pipeline_on_copied_data_reuses_every_stage(tmp_path: Path) -> None:
    runs, data = tmp_path / "runs", tmp_path / "data"
    base = [*TINY_TOY, *PIPELINE, f"paths.runs={runs}", f"paths.data={data}"]
    first = run_train([*base, "exp=a"])
    assert first.returncode == 0, first.stdout[-3000:]
    copy = tmp_path / "scratch" / "toy"
    shutil.copytree(data / "toy", copy)
    second = run_train([*base, "exp=b", f"data.root={copy}", "data.generate=false"])
    assert second.returncode == 0, second.stdout[-3000:]
    for name in ("cls", "maps_cls", "pseudo"):
        assert f"stage {name}: reusing the stored artifact" in second.stdout, (name, second.stdout[-3000:])
    assert "running stage" not in second.stdout
    assert (runs / "b" / "pseudo").resolve() == (runs / "a" / "pseudo").resolve()
