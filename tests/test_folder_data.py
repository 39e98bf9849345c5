"""data=folder: a 3-class dataset with image-level labels, converted by wsss.data.folder, runs the whole
pipeline, and its scores name its own classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config
from wsss.data.folder import convert
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DatasetLayoutError

CLASSES = ("apple", "boat", "cat")
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 60, 230))
SIDE = 48


def make_dataset(folder: Path, n: int = 10, seed: int = 0) -> dict[str, Path]:
    """``n`` images with one or two coloured squares (class = colour), masks, saliency, a names list."""
    rng = np.random.default_rng(seed)
    paths = {k: folder / k for k in ("images", "masks", "saliency")}
    for p in paths.values():
        p.mkdir(parents=True)
    lines = []
    for k in range(n):
        image = np.full((SIDE, SIDE, 3), 128, np.uint8) + rng.integers(0, 20, (SIDE, SIDE, 3), dtype=np.uint8)
        mask = np.zeros((SIDE, SIDE), np.uint8)
        present = sorted(rng.choice(3, size=1 + k % 2, replace=False).tolist())
        for j, c in enumerate(present):
            y, x = 4 + 22 * j, int(rng.integers(2, SIDE - 22))
            image[y : y + 18, x : x + 18] = COLOURS[c]
            mask[y : y + 18, x : x + 18] = c + 1
        mask[mask.nonzero()[0][:1], mask.nonzero()[1][:1]] = 255  # an ignored pixel
        image_id = f"img{k:02d}"
        suffix = ".png" if k % 3 == 0 else ".jpg"  # PNG images are re-encoded as JPEG
        Image.fromarray(image).save(paths["images"] / f"{image_id}{suffix}", quality=98)
        Image.fromarray(mask, mode="L").save(paths["masks"] / f"{image_id}.png")
        Image.fromarray(((mask > 0) * 255).astype(np.uint8), mode="L").save(
            paths["saliency"] / f"{image_id}.png"
        )
        lines.append([image_id, " ".join(CLASSES[c] for c in present)])
    paths["labels"] = folder / "labels.csv"
    with open(paths["labels"], "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "labels"], *lines])
    paths["classes"] = folder / "classes.txt"
    paths["classes"].write_text("\n".join(CLASSES) + "\n")
    return paths


def test_the_converter_writes_the_layout_and_labels(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    counts = convert(
        src["images"], src["labels"], src["classes"], tmp_path / "out", src["masks"], src["saliency"]
    )
    assert counts == {"train_aug": 10, "train": 10, "val": 10}
    data = VOCDataset(
        tmp_path / "out", "train_aug", labels_file=tmp_path / "out/VOCdevkit/VOC2012/labels.txt"
    )
    assert data.class_names == CLASSES and data.num_classes == 3
    assert data.label(0).tolist() == [float(c in (0, 1, 2) and c in _present(src, 0)) for c in range(3)]
    assert data.mask(1).max() == 255 and set(np.unique(data.mask(1))) <= {0, 1, 2, 3, 255}
    assert data.image(0).shape == (SIDE, SIDE, 3)  # img00 was a PNG


def _present(src: dict[str, Path], k: int) -> list[int]:
    mask = np.array(Image.open(src["masks"] / f"img{k:02d}.png"))
    return [int(v) - 1 for v in np.unique(mask) if 0 < v < 255]


def test_bad_inputs_are_refused_naming_the_file(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=3)
    src["labels"].write_text("id,labels\nimg00,apple\nimg01,dog\n")
    with pytest.raises(DatasetLayoutError, match=r"labels.csv:3: label 'dog' of 'img01' is neither a class"):
        convert(src["images"], src["labels"], src["classes"], tmp_path / "out")
    listing = tmp_path / "src" / "labels.txt"
    listing.write_text("img00 apple\nimg01 1\n")  # names or 0-based ids
    Image.fromarray(np.full((SIDE, SIDE), 7, np.uint8), mode="L").save(src["masks"] / "img01.png")
    with pytest.raises(DatasetLayoutError, match=r"img01.png: mask holds values \[7\] outside 0..3 and 255"):
        convert(src["images"], listing, src["classes"], tmp_path / "out", src["masks"])
    assert not (tmp_path / "out").exists()  # nothing written before every input passed


FOLDER_TINY = [
    "data=folder",
    "backbone=tiny",
    "segmenter=largefov_tiny",
    "trainer=cpu",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.crop_size=48",
    "data.color_jitter=null",
    "data.cache_mb=0",
    "cls.optimizer=adam",
    "cls.epochs=2",
    "cls.log_images=0",
    "maps.figure_images=0",
    "pseudo.source=cls",
    "pseudo.workers=1",
    "pseudo.figure_images=0",
    "seg.max_steps=2",
    "seg.val_every_n_steps=null",
    "eval.figure_images=0",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "print_config=false",
]


def test_a_three_class_folder_dataset_runs_the_pipeline_and_names_its_classes(tmp_path: Path) -> None:
    from wsss.pipeline.runner import run_stages

    src = make_dataset(tmp_path / "src")
    root = tmp_path / "mine"
    convert(src["images"], src["labels"], src["classes"], root, src["masks"], src["saliency"])
    cfg = compose_config(
        [
            *FOLDER_TINY,
            f"data.root={root}",
            f"data.saliency_dir={root / 'VOCdevkit' / 'VOC2012' / 'saliency'}",
            "stage=pipeline",
            "exp=f",
        ],
        runs=tmp_path / "runs",
    )
    assert (cfg.data.num_classes, cfg.data.seg_classes, cfg.model.num_classes) == (3, 4, 3)
    from wsss.cli import preflight

    preflight(cfg)
    metrics = run_stages(cfg)
    assert metrics["maps_cls/images"] == 10 and metrics["eval/images"] == 10
    exp = tmp_path / "runs" / "f"
    for stage in ("pseudo", "eval"):
        rows = (exp / stage / "per_class_iou.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows] == ["class", "background", *CLASSES]
    import torch

    ckpt = torch.load(exp / "cls" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["state_dict"]["model.classifier.weight"].shape[0] == 3
    with np.load(next((exp / "maps" / "cls").glob("*.npz"))) as maps:
        assert maps["classes"].max() < 3


def test_a_class_count_that_contradicts_the_classes_file_is_refused(tmp_path: Path) -> None:
    from wsss.data.verify import check_class_count

    src = make_dataset(tmp_path / "src", n=2)
    convert(src["images"], src["labels"], src["classes"], tmp_path / "mine")
    cfg = compose_config(
        [*FOLDER_TINY, f"data.root={tmp_path / 'mine'}", "data.num_classes=20"], runs=tmp_path / "r"
    )
    with pytest.raises(ConfigError, match=r"data.num_classes=20 but .*classes.txt names 3 classes"):
        check_class_count(cfg)
