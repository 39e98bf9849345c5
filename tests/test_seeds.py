"""Seed evaluation: background-threshold sweep on hand-built maps and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.data.maps_io import save_maps
from wsss.localization import resize_maps
from wsss.seeds import DEFAULT_THRESHOLDS, SeedSweep, evaluate_seeds

GT = np.array([[0, 1, 1], [0, 2, 255]])
CLASSES = np.array([0, 1])  # 0-based: aeroplane -> label 1, bicycle -> label 2
MAPS = np.array(
    [
        [[0.1, 0.8, 0.3], [0.0, 0.2, 0.9]],
        [[0.0, 0.1, 0.6], [0.2, 0.7, 0.9]],
    ],
    dtype=np.float32,
)


def test_default_thresholds_are_005_to_060() -> None:
    assert DEFAULT_THRESHOLDS == (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def test_sweep_matches_a_hand_computation() -> None:
    sweep = SeedSweep([0.25, 0.65])
    sweep.update(CLASSES, MAPS, GT)
    curve = sweep.curve()
    # t=0.25: pred [[0,1,2],[0,2,-]] -> IoU bg 2/2, c1 1/2, c2 1/2
    assert curve[0]["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert curve[0]["precision"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert curve[0]["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    # t=0.65: pred [[0,1,0],[0,2,-]] -> IoU bg 2/3, c1 1/2, c2 1/1
    assert curve[1]["miou"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    best = sweep.compute()
    assert best["best_threshold"] == 0.65
    assert best["miou"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert best["precision"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert best["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert best["seed_images"] == 1


def test_value_equal_to_threshold_is_background_and_ties_pick_lowest_threshold() -> None:
    sweep = SeedSweep([0.5, 0.6])
    sweep.update(np.array([0]), np.array([[[0.5, 0.7]]], np.float32), np.array([[0, 1]]))
    assert [r["miou"] for r in sweep.curve()] == [1.0, 1.0]
    assert sweep.compute()["best_threshold"] == 0.5


def test_image_without_present_classes_is_all_background() -> None:
    sweep = SeedSweep([0.3])
    sweep.update(np.zeros(0, np.int64), np.zeros((0, 2, 2), np.float32), np.array([[0, 0], [0, 3]]))
    assert sweep.cms[0][0, 0] == 3 and sweep.cms[0][3, 0] == 1


def test_maps_are_resized_bilinearly_to_the_mask() -> None:
    resized = resize_maps(np.array([[[0.2, 0.8]]], np.float32), (1, 4))
    np.testing.assert_allclose(resized[0, 0], [0.2, 0.35, 0.65, 0.8], atol=1e-6)


def test_evaluate_seeds_reads_files_and_counts_missing(tmp_path: Path) -> None:
    save_maps(tmp_path / "a.npz", CLASSES, MAPS, dtype="float16")
    small = np.array([[[0.2, 0.8]]], np.float32)  # stored at half the mask's width
    save_maps(tmp_path / "b.npz", np.array([4]), small, dtype="float16")
    save_maps(tmp_path / "d.npz", CLASSES, MAPS)
    masks = {0: GT, 1: np.array([[0, 0, 5, 5]]), 2: GT, 3: None}  # d has maps but no mask: skipped
    metrics, curve = evaluate_seeds(
        tmp_path, ["a", "b", "c", "d"], masks.__getitem__, thresholds=[0.25, 0.65]
    )
    assert metrics["seed_images"] == 2 and metrics["seed_missing"] == 1
    assert len(curve) == 2
    # b at t=0.65 after resizing [0.2, 0.35, 0.65, 0.8]: pred [0, 0, 0, 5] vs gt [0, 0, 5, 5]
    # totals at t=0.65: bg tp 4, pred 6 (a: 3, b: 3), gt 4 -> 4/6; c1 1/2; c2 1; c5 1/2
    assert curve[1]["miou"] == pytest.approx((4 / 6 + 0.5 + 1 + 0.5) / 4, abs=1e-3)


def test_evaluate_seeds_without_any_maps_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval_split must be a split with masks inside maps.split"):
        evaluate_seeds(tmp_path, ["a"], lambda i: GT)
