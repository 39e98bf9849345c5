"""The whole method through train.py on generated toy data: every stage, its files, resume, errors."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_train
from wsss.data.maps_io import load_maps

STAGES = ["cls", "maps_cls", "refine", "maps_refine", "pseudo", "seg", "eval", "predict"]
STAGE_FOLDERS = ["cls", "maps/cls", "refine", "maps/refine", "pseudo", "seg", "eval", "predict"]
TINY = [
    "experiment=toy",
    "data.toy.num_train=12",
    "data.toy.num_val=4",
    "data.toy.num_test=3",
    "data.toy.size=64",
    "cls.epochs=2",
    "refine.epochs=1",
    "seg.max_steps=6",
    "seg.val_every_n_steps=3",
    "logger=csv",
    "print_config=false",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str]:
    root = tmp_path_factory.mktemp("e2e")
    args = [
        "stage=pipeline",
        f"pipeline.stages=[{','.join(STAGES)}]",
        "exp=e2e",
        f"paths.runs={root / 'runs'}",
        f"paths.data={root / 'data'}",
        *TINY,
    ]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return root, args, proc.stdout


def test_every_stage_completes_with_its_artifacts(pipeline_run: tuple[Path, list[str], str]) -> None:
    root, _, _ = pipeline_run
    exp = root / "runs" / "e2e"
    for folder in STAGE_FOLDERS:
        assert (exp / folder / ".complete").is_file(), folder
        assert (exp / folder / "config.yaml").is_file(), folder
    ids = (root / "data/toy/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert len(ids) == 12
    for source in ("cls", "refine"):
        assert sorted(p.stem for p in (exp / "maps" / source).glob("*.npz")) == sorted(ids)
        classes, maps = load_maps(exp / "maps" / source / f"{ids[0]}.npz")
        assert maps.shape == (len(classes), 64, 64) and maps.max() <= 1.0
    pseudo = Image.open(exp / "pseudo" / f"{ids[0]}.png")
    assert pseudo.mode == "P" and pseudo.size == (64, 64)
    assert set(np.unique(np.asarray(pseudo)).tolist()) <= set(range(21)) | {255}
    assert (exp / "seg" / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((exp / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 4 and 0.0 <= metrics["miou"] <= 1.0
    for figure in ("figure1.png", "pseudo.png", "segmentation.png"):
        assert (exp / "figures" / figure).is_file(), figure
    with tarfile.open(exp / "predict" / "results.tar.gz") as tar:
        names = sorted(n for n in tar.getnames() if n.endswith(".png"))
    assert len(names) == 3 and all("results/VOC2012/Segmentation/comp6_test_cls/" in n for n in names)


def test_seed_and_pseudo_metrics_are_recorded(pipeline_run: tuple[Path, list[str], str]) -> None:
    root, _, _ = pipeline_run
    exp = root / "runs" / "e2e"
    seeds = json.loads((exp / "maps" / "cls" / "metrics.json").read_text())
    assert 0.0 <= seeds["best_threshold"] <= 0.95 and 0.0 < seeds["miou"] <= 1.0
    pseudo = json.loads((exp / "pseudo" / "metrics.json").read_text())
    assert {"miou", "precision", "recall", "ignore_ratio"} <= set(pseudo)
    assert pseudo["source"] == "refine"


def test_rerun_skips_completed_stages(pipeline_run: tuple[Path, list[str], str]) -> None:
    root, args, _ = pipeline_run
    ckpt = root / "runs" / "e2e" / "cls" / "checkpoints" / "best.ckpt"
    before = ckpt.stat().st_mtime_ns
    proc = run_train(args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("already complete") == len(STAGES)
    assert ckpt.stat().st_mtime_ns == before


def test_a_pasted_hint_makes_the_missing_input_and_the_command_then_runs(
    pipeline_run: tuple[Path, list[str], str],
) -> None:
    import shlex

    root, _, _ = pipeline_run
    # without the store (it would reuse the pseudo labels the pipeline above made with these settings)
    original = [
        "stage=seg",
        "exp=fresh",
        "store.enabled=false",
        f"paths.runs={root / 'runs'}",
        f"paths.data={root / 'data'}",
        *TINY,
    ]
    proc = run_train(original)
    assert proc.returncode != 0
    hint = next(
        line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("python train.py")
    )
    assert "pipeline.stages=[cls,maps_cls,refine,maps_refine,pseudo]" in hint and "experiment=toy" in hint
    made = run_train(shlex.split(hint)[2:])  # the command exactly as printed, minus "python train.py"
    assert made.returncode == 0, made.stdout[-3000:]
    assert run_train(original).returncode == 0
    assert (root / "runs" / "fresh" / "seg" / ".complete").is_file()
