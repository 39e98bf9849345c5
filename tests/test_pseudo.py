"""Pseudo-label rules on hand-built arrays: one pixel per rule, paper, release and fallback."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.method.localization import resize_maps
from wsss.stages.pseudo_rules import (
    PseudoRule,
    fallback_label,
    make_label,
    paper_label,
    release_label,
)


def _pixels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense maps (20, 1, n) and saliency (1, n), all zero."""
    return np.zeros((20, 1, n), np.float32), np.zeros((1, n), np.uint8)


def test_paper_rule_each_cue() -> None:
    maps, sal = _pixels(8)
    # 0: object cue only (class id 3) on a salient pixel
    maps[2, 0, 0], sal[0, 0] = 0.5, 200
    # 1: background cue only (15 / 255 = 0.0588 < 0.06)
    sal[0, 1] = 15
    # 2: neither cue: map 0.1 <= alpha, saliency 100 / 255 >= beta
    maps[4, 0, 2], sal[0, 2] = 0.1, 100
    # 3: two object cues: the higher map (class id 6 at 0.8) beats class id 1 at 0.6
    maps[0, 0, 3], maps[5, 0, 3], sal[0, 3] = 0.6, 0.8, 200
    # 4: both cues (map 0.7 and saliency 0): background by default
    maps[1, 0, 4], sal[0, 4] = 0.7, 0
    # 5: alpha is strict: a map of exactly 0.2 is no object cue
    maps[3, 0, 5], sal[0, 5] = 0.2, 100
    # 6: beta is strict: 16 / 255 = 0.0627 is no background cue
    sal[0, 6] = 16
    # 7: equal maps go to the lower class index (class id 8 over id 10)
    maps[7, 0, 7], maps[9, 0, 7], sal[0, 7] = 0.9, 0.9, 255
    label = paper_label(maps, sal, alpha=0.2, beta=0.06)
    assert label.dtype == np.uint8
    assert label[0].tolist() == [3, 0, 255, 6, 0, 255, 255, 8]
    # the two other readings of "both cues"
    assert paper_label(maps, sal, conflict="object")[0, 4] == 2
    assert paper_label(maps, sal, conflict="ignore")[0, 4] == 255
    assert paper_label(maps, sal, conflict="ignore")[0].tolist() == [3, 0, 255, 6, 255, 255, 255, 8]


def test_release_rule_each_step() -> None:
    maps, sal = _pixels(8)
    # 0: non-salient (50 is not > 50): background score 1 beats a 0.8 map
    maps[3, 0, 0], sal[0, 0] = 0.8, 50
    # 1: salient (51): background score 0, the map wins (class id 4)
    maps[3, 0, 1], sal[0, 1] = 0.8, 51
    # 2: salient, all maps below 0.2 are zeroed -> argmax lands on background -> 255
    maps[3, 0, 2], maps[6, 0, 2], sal[0, 2] = 0.15, 0.19, 255
    # 3: tie to background: non-salient pixel with a map of exactly 1.0
    maps[1, 0, 3], sal[0, 3] = 1.0, 0
    # 4: background + two maps above 0.9 = three confident channels -> 255
    maps[0, 0, 4], maps[1, 0, 4], sal[0, 4] = 0.95, 0.92, 10
    # 5: salient with two maps above 0.9 = two confident channels only -> the higher map (class id 1)
    maps[0, 0, 5], maps[1, 0, 5], sal[0, 5] = 0.95, 0.92, 200
    # 6: salient with three maps above 0.9 -> 255
    maps[0, 0, 6], maps[1, 0, 6], maps[2, 0, 6], sal[0, 6] = 0.95, 0.92, 0.91, 200
    # 7: salient, a map of exactly 0.2 survives the zeroing (values *below* 0.2 are zeroed)
    maps[9, 0, 7], sal[0, 7] = 0.2, 128
    label = release_label(maps, sal)
    assert label[0].tolist() == [0, 4, 255, 0, 255, 1, 255, 10]


def test_release_and_paper_differ_on_the_same_pixels() -> None:
    maps, sal = _pixels(3)
    maps[4, 0, :] = 0.5
    sal[0] = [40, 10, 200]  # weakly salient, background cue, salient
    # paper: 40/255 = 0.157 >= 0.06 -> no background cue, the map wins; release: 40 <= 50 -> background
    assert paper_label(maps, sal)[0].tolist() == [5, 0, 5]
    assert release_label(maps, sal)[0].tolist() == [0, 0, 5]


def test_fallback_rule() -> None:
    maps, _ = _pixels(4)
    maps[0, 0, 1] = 0.2  # every map <= threshold -> background
    maps[2, 0, 2] = 0.3  # one map above -> its class
    maps[2, 0, 3], maps[6, 0, 3] = 0.3, 0.5  # the top one
    assert fallback_label(maps, bg_threshold=0.2)[0].tolist() == [0, 0, 3, 7]
    assert fallback_label(maps, bg_threshold=0.4)[0].tolist() == [0, 0, 0, 7]
    with pytest.raises(ValueError, match="fallback_threshold"):
        fallback_label(maps, bg_threshold=1.5)


def test_resize_maps_bilinear_half_pixel() -> None:
    maps = np.array([[[0.0, 1.0], [0.0, 1.0]]], np.float32)
    out = resize_maps(maps, (2, 4))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-4)
    assert resize_maps(np.zeros((0, 3, 3), np.float32), (5, 7)).shape == (0, 5, 7)


def test_rules_resize_maps_to_the_saliency_size() -> None:
    maps = np.zeros((20, 2, 2), np.float32)
    maps[11, :, 1] = 1.0  # right half: class id 12 (dog)
    sal = np.full((4, 6), 255, np.uint8)
    sal[:, 0] = 0
    label = paper_label(maps, sal)
    assert label.shape == (4, 6)
    assert label[0].tolist() == [0, 255, 12, 12, 12, 12]
    assert fallback_label(maps, 0.2, size=(4, 6))[0].tolist() == [0, 0, 12, 12, 12, 12]


def test_missing_saliency_names_the_fix() -> None:
    maps, _ = _pixels(2)
    with pytest.raises(ValueError, match="data.saliency_dir"):
        paper_label(maps, None)
    with pytest.raises(ValueError, match="pseudo.background=fallback"):
        release_label(maps, None)


def test_make_label_checks_saliency_size_and_dispatches() -> None:
    maps, sal = _pixels(2)
    maps[0, 0, 1], sal[0, 1] = 0.5, 200
    rule = PseudoRule(rule="release")
    assert make_label(rule, maps, sal, (1, 2)).tolist() == [[0, 1]]
    assert make_label(PseudoRule(background="fallback"), maps, None, (1, 2)).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="saliency map is"):
        make_label(rule, maps, sal, (2, 2))
    with pytest.raises(ValueError, match="pseudo.background"):
        PseudoRule(background="none")
    assert PseudoRule(rule="release", background="fallback").name == "fallback"


def _naive_release(maps: np.ndarray, sal: np.ndarray) -> np.ndarray:
    """docs/protocol.md's release rule transcribed literally over all 21 channels."""
    maps = np.where(maps < 0.2, 0.0, maps)
    salient = (sal > 50).astype(np.float32)
    scores = np.concatenate([1.0 - salient[None], maps])
    label = scores.argmax(0).astype(np.uint8)
    label[(scores > 0.9).sum(0) > 2] = 255
    label[(salient == 1) & (label == 0)] = 255
    return label


def _naive_paper(maps: np.ndarray, sal: np.ndarray) -> np.ndarray:
    label = np.full(sal.shape, 255, np.uint8)
    obj = maps.max(0) > 0.2
    label[obj] = maps.argmax(0)[obj] + 1
    label[sal / 255.0 < 0.06] = 0
    return label


@pytest.mark.parametrize("seed", range(5))
def test_rules_match_a_literal_transcription_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps = np.zeros((20, 24, 32), np.float32)
    present = rng.choice(20, 4, replace=False)
    # quantised like stored uint8 maps, so ties between classes and at the thresholds occur
    maps[present] = rng.integers(0, 256, (4, 24, 32)) / 255.0
    maps[present[0], :, :8] = maps[present[1], :, :8]  # exact ties between two classes
    sal = rng.integers(0, 256, (24, 32)).astype(np.uint8)
    np.testing.assert_array_equal(release_label(maps, sal), _naive_release(maps, sal))
    np.testing.assert_array_equal(paper_label(maps, sal), _naive_paper(maps, sal))
    top = maps.max(0)
    expected = np.where(top > 0.3, maps.argmax(0) + 1, 0)
    np.testing.assert_array_equal(fallback_label(maps, 0.3), expected)
