"""Seed evaluation: background-threshold sweep on hand-built maps and masks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from wsss.data.maps_io import MapsFolder, save_maps
from wsss.errors import ConfigError
from wsss.method.localization import resize_maps
from wsss.method.seed_labels import DEFAULT_THRESHOLDS, SeedSweep, evaluate_seeds
from wsss.pipeline.config import CONF_DIR

GT = np.array([[0, 1, 1], [0, 2, 255]])
CLASSES = np.array([0, 1])  # 0-based: aeroplane -> label 1, bicycle -> label 2
MAPS = np.array(
    [
        [[0.1, 0.8, 0.3], [0.0, 0.2, 0.9]],
        [[0.0, 0.1, 0.6], [0.2, 0.7, 0.9]],
    ],
    dtype=np.float32,
)


def test_default_thresholds_are_0_to_095_and_match_the_config() -> None:
    assert DEFAULT_THRESHOLDS[:3] == (0.0, 0.05, 0.1) and DEFAULT_THRESHOLDS[-2:] == (0.9, 0.95)
    assert len(DEFAULT_THRESHOLDS) == 20 and np.allclose(np.diff(DEFAULT_THRESHOLDS), 0.05)
    conf = OmegaConf.load(CONF_DIR / "settings" / "maps.yaml")
    assert tuple(conf.thresholds) == DEFAULT_THRESHOLDS


def spread_maps(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Maps that spread past their object, as DRS maps do: object pixels at 0.92 .. 0.99, background
    pixels at 0.05 .. 0.88 (one image, one class, 40 pixels). The seed mIoU rises up to t = 0.9."""
    gt = np.zeros((1, 40), np.int64)
    gt[0, :n] = 1
    values = np.zeros((1, 1, 40), np.float32)
    values[0, 0, :n] = np.linspace(0.92, 0.99, n)
    values[0, 0, n:] = np.linspace(0.05, 0.88, 40 - n)
    return values, gt


def test_optimum_at_090_is_found_where_the_old_range_reported_060() -> None:
    maps, gt = spread_maps()
    full = SeedSweep()
    full.update(np.array([0]), maps, gt)
    best = full.compute()
    # t = 0.90: every map value <= 0.88 is background, the 4 object pixels stay: mIoU 1
    assert best["best_threshold"] == 0.9 and best["miou"] == pytest.approx(1.0)
    assert best["best_threshold_at_edge"] is False
    old = SeedSweep([round(0.05 * k, 2) for k in range(1, 13)])  # the range before issue 15
    old.update(np.array([0]), maps, gt)
    truncated = old.compute()
    assert truncated["best_threshold"] == 0.6 and truncated["best_threshold_at_edge"] is True
    # at 0.60, the 12 background values 0.62 .. 0.88 are still object: IoU 4/16 and 24/36
    assert truncated["miou"] == pytest.approx((4 / 16 + 24 / 36) / 2)


@pytest.mark.parametrize(
    ("thresholds", "best", "at_edge"),
    [
        ([0.3, 0.5, 0.7, 0.9, 0.95], 0.9, False),  # inside: 0.95 is no better than 0.9 (ties -> lowest)
        ([0.3, 0.5, 0.7], 0.7, True),  # the highest threshold: the optimum may lie above
        ([0.9, 0.1, 0.5], 0.9, True),  # order given does not matter: 0.9 is the highest
        ([0.91, 0.95], 0.91, True),  # the lowest threshold: the optimum may lie below
        ([0.5], 0.5, True),  # a single threshold searched nothing
    ],
)
def test_edge_flag(thresholds: list[float], best: float, at_edge: bool) -> None:
    maps, gt = spread_maps()
    sweep = SeedSweep(thresholds)
    sweep.update(np.array([0]), maps, gt)
    metrics = sweep.compute()
    assert metrics["best_threshold"] == best and metrics["best_threshold_at_edge"] is at_edge


def test_a_best_threshold_of_0_is_not_at_an_edge() -> None:
    """Compact maps (CAM): positive on the object only, 0 elsewhere: t = 0 is best, and nothing lies below
    (a lone 0 is still flagged: nothing above it was searched)."""
    gt = np.array([[0, 0, 1, 1, 1, 0]])
    maps = np.array([[[0.0, 0.0, 0.03, 0.5, 1.0, 0.0]]], np.float32)
    for thresholds, at_edge in (([0.0, 0.05, 0.5], False), ([0.0], True), ([0.01, 0.05], True)):
        sweep = SeedSweep(thresholds)
        sweep.update(np.array([0]), maps, gt)
        metrics = sweep.compute()
        assert metrics["best_threshold"] == thresholds[0] and metrics["best_threshold_at_edge"] is at_edge
        assert metrics["miou"] == pytest.approx(1.0)


def test_evaluate_seeds_warns_when_the_best_threshold_is_at_an_edge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    maps, gt = spread_maps()
    save_maps(tmp_path / "a.npz", np.array([0]), maps, dtype="float16")
    with caplog.at_level(logging.WARNING, logger="wsss.method.seed_labels"):
        metrics, _ = evaluate_seeds(MapsFolder(tmp_path), ["a"], [gt].__getitem__, thresholds=[0.2, 0.4, 0.6])
    assert metrics["best_threshold"] == 0.6 and metrics["best_threshold_at_edge"] is True
    assert (
        "0.60 is at the edge of the sweep [0.20, 0.60]" in caplog.text
        and "widen maps.thresholds" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsss.method.seed_labels"):
        metrics, _ = evaluate_seeds(MapsFolder(tmp_path), ["a"], [gt].__getitem__)
    assert metrics["best_threshold"] == 0.9 and not metrics["best_threshold_at_edge"]
    assert "edge" not in caplog.text


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
        MapsFolder(tmp_path), ["a", "b", "c", "d"], masks.__getitem__, thresholds=[0.25, 0.65]
    )
    assert metrics["seed_images"] == 2 and metrics["seed_missing"] == 1
    assert len(curve) == 2
    # b at t=0.65 after resizing [0.2, 0.35, 0.65, 0.8]: pred [0, 0, 0, 5] vs gt [0, 0, 5, 5]
    # totals at t=0.65: bg tp 4, pred 6 (a: 3, b: 3), gt 4 -> 4/6; c1 1/2; c2 1; c5 1/2
    assert curve[1]["miou"] == pytest.approx((4 / 6 + 0.5 + 1 + 0.5) / 4, abs=1e-3)


def test_evaluate_seeds_without_any_maps_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval_split must be a split with masks inside maps.split"):
        evaluate_seeds(MapsFolder(tmp_path), ["a"], lambda i: GT)
