"""data=coco: masks and labels from COCO instance annotations (polygons, RLEs, crowd regions), checked on a
tiny COCO-format fixture made here, and a pipeline on it whose scores name the fixture's categories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_folder_data import FOLDER_TINY

from conftest import compose_config
from wsss.data.coco import (
    annotation_mask,
    convert,
    counts_from_string,
    counts_to_string,
    polygon_counts,
    rle_decode,
    rle_encode,
)
from wsss.data.palette import read_index_png
from wsss.errors import ConfigError

H, W = 40, 48
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "tooth brush"}]


def box(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def test_a_box_polygon_covers_the_pixels_whose_centres_lie_inside() -> None:
    """COCO's rasterisation: a box from (4, 6) to (10, 9) covers columns 4..9 and rows 6..8."""
    mask = rle_decode(polygon_counts(box(4, 6, 10, 9), 12, 14), 12, 14)
    expected = np.zeros((12, 14), bool)
    expected[6:9, 4:10] = True
    assert np.array_equal(mask, expected)


def test_rle_strings_round_trip_and_decode() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) < 0.3
    counts = rle_encode(mask)
    assert sum(counts) == 63 and np.array_equal(rle_decode(counts, 7, 9), mask)
    text = counts_to_string(counts)
    assert counts_from_string(text) == counts
    assert counts_to_string([4, 2, 2, 0, 3]) == "422N1"  # by hand: 0 - 2 = -2 -> 0b11110 -> chr(78)
    assert counts_from_string("422N1") == [4, 2, 2, 0, 3]


def test_the_decoder_equals_pycocotools() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(5, 50, 2))
        poly = rng.uniform(-3, max(h, w) + 3, 2 * int(rng.integers(3, 10))).round(1).tolist()
        reference = mask_api.decode(mask_api.merge(mask_api.frPyObjects([poly], h, w))).astype(bool)
        assert np.array_equal(annotation_mask([poly], h, w), reference)
        m = rng.random((h, w)) < 0.4
        encoded = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert counts_to_string(rle_encode(m)) == encoded["counts"].decode()


def make_coco(folder: Path, split: str, n: int, first_id: int = 1) -> tuple[Path, Path]:
    """``n`` annotated images + one without annotations: a large person box with a small dog box on it
    (polygons), a tooth brush as an uncompressed RLE, a crowd region of people as a compressed RLE."""
    images = folder / f"{split}2014"
    images.mkdir(parents=True)
    rng = np.random.default_rng(first_id)
    records, annotations = [], []
    ann_id = 100 * first_id
    for k in range(n + 1):
        image_id = first_id + k
        name = f"COCO_{split}2014_{image_id:012d}.jpg"
        pixels = np.full((H, W, 3), 110, np.uint8) + rng.integers(0, 15, (H, W, 3), dtype=np.uint8)
        pixels[4:30, 2:26] = (200, 60, 60)  # the person
        pixels[10:20, 8:18] = (60, 200, 60)  # the dog on it
        pixels[30:38, 30:44] = (60, 60, 220)  # the brush
        Image.fromarray(pixels).save(images / name, quality=95)
        records.append({"id": image_id, "file_name": name, "height": H, "width": W})
        if k == n:
            continue  # an image without annotations: not in the WSSS split
        brush = np.zeros((H, W), bool)
        brush[30:38, 30:44] = True
        crowd = np.zeros((H, W), bool)
        crowd[0:4, 36:48] = True
        for category, segmentation, area, iscrowd in (
            (1, [box(2, 4, 26, 30)], 624.0, 0),
            (18, [box(8, 10, 18, 20)], 100.0, 0),
            (90, {"counts": rle_encode(brush), "size": [H, W]}, 112.0, 0),
            (1, {"counts": counts_to_string(rle_encode(crowd)), "size": [H, W]}, 48.0, 1),
        ):
            ann_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": area,
                    "iscrowd": iscrowd,
                }
            )
    path = folder / f"instances_{split}2014.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": CATEGORIES}))
    return path, images


def test_masks_labels_and_lists_from_the_annotations(tmp_path: Path) -> None:
    annotations, images = make_coco(tmp_path / "raw", "train", 2)
    counts = convert(annotations, images, tmp_path / "coco", "train")
    assert counts == {"images": 2, "skipped_unannotated": 1, "classes": 3}
    voc = tmp_path / "coco" / "VOCdevkit" / "VOC2012"
    assert (voc / "classes.txt").read_text().split() == ["person", "dog", "tooth_brush"]
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]
    assert (voc / "labels.txt").read_text().splitlines()[0] == "COCO_train2014_000000000001 0 1 2"
    mask = read_index_png(voc / "SegmentationClassAug" / f"{ids[0]}.png")
    expected = np.zeros((H, W), np.uint8)
    expected[4:30, 2:26] = 1  # person
    expected[10:20, 8:18] = 2  # the smaller dog wins where they overlap
    expected[30:38, 30:44] = 3  # tooth brush (RLE)
    expected[0:4, 36:48] = 255  # crowd: ignored
    assert np.array_equal(mask, expected)
    assert (voc / "JPEGImages" / f"{ids[0]}.jpg").is_symlink()


def test_a_pipeline_on_the_coco_fixture_names_its_categories(tmp_path: Path) -> None:
    from wsss.cli import preflight
    from wsss.pipeline.runner import run_stages

    root = tmp_path / "coco"
    for split, first in (("train", 1), ("val", 50)):
        annotations, images = make_coco(tmp_path / "raw", split, 4 if split == "train" else 2, first)
        convert(annotations, images, root, split)
    overrides = [o for o in FOLDER_TINY if not o.startswith("data=")]
    args = [
        "data=coco",
        f"data.root={root}",
        *overrides,
        "pseudo.background=fallback",
        "stage=pipeline",
        "exp=c",
    ]
    with pytest.raises(ConfigError, match=r"data.num_classes=80 but .*classes.txt names 3 classes"):
        preflight(compose_config(args, runs=tmp_path / "runs"))
    cfg = compose_config([*args, "data.num_classes=3", "data.seg_classes=4"], runs=tmp_path / "runs")
    preflight(cfg)
    metrics = run_stages(cfg)
    assert metrics["eval/images"] == 2
    rows = (tmp_path / "runs" / "c" / "eval" / "per_class_iou.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["class", "background", "person", "dog", "tooth_brush"]
