"""Dense CRF: it snaps a blurred unary to a sharp image edge; parameters; pool; the missing-package error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from wsss.method import crf
from wsss.method.crf import CRFParams, MissingCRFError, crf_labels, crf_map, dense_crf, require_pydensecrf
from wsss.stages.pseudo_rules import PseudoRule, make_label


def _edge_case(height: int = 40, width: int = 64, edge: int = 32, shift: int = 7):
    """A dark-left / bright-right image and a blurred two-class unary whose boundary is ``shift`` px off."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :edge] = 30
    image[:, edge:] = 220
    truth = np.zeros((height, width), np.int64)
    truth[:, edge:] = 1
    x = np.arange(width, dtype=np.float32)
    p1 = np.clip(0.5 + (x - (edge + shift)) / 40.0, 0.1, 0.9)
    probs = np.stack([1.0 - p1, p1])[:, None, :].repeat(height, axis=1)
    return image, probs.astype(np.float32), truth


def test_crf_snaps_blurred_unary_to_the_image_edge() -> None:
    pytest.importorskip("pydensecrf")
    image, probs, truth = _edge_case()
    before = (probs.argmax(0) == truth).mean()
    q = dense_crf(image, probs, CRFParams())
    after = (q.argmax(0) == truth).mean()
    assert before < 0.9
    assert after > 0.99
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    image.flags.writeable = False  # as np.asarray(PIL.Image) returns it
    np.testing.assert_array_equal(dense_crf(image, probs, CRFParams()), q)


def test_crf_labels_on_two_of_21_channels_sharpen_the_edge() -> None:
    pytest.importorskip("pydensecrf")
    image, probs, truth = _edge_case()
    scores = np.zeros((21, *probs.shape[1:]), np.float32)
    scores[0], scores[12] = probs[0], probs[1]  # background vs dog (class id 12)
    label = np.where(probs[1] > probs[0], 12, 0).astype(np.uint8)
    label[:5] = 255
    out = np.where(label == 255, 255, crf_labels(image, scores, CRFParams()))  # what make_label does
    assert (out[:5] == 255).all()
    assert (out[5:] == np.where(truth[5:] == 1, 12, 0)).all()


def test_make_label_with_crf_fallback_rule() -> None:
    pytest.importorskip("pydensecrf")
    image, probs, truth = _edge_case()
    maps = np.zeros((20, *probs.shape[1:]), np.float32)
    maps[6] = probs[1]  # car (class id 7); the fallback background score is the threshold 0.5
    rule = PseudoRule(background="fallback", fallback_threshold=0.5)
    plain = make_label(rule, maps, None, truth.shape)
    refined = make_label(rule, maps, None, truth.shape, image=image, crf_params=CRFParams())
    target = np.where(truth == 1, 7, 0)
    assert (plain == target).mean() < 0.9
    assert (refined == target).mean() > 0.99


def test_dense_crf_rejects_a_mismatched_image() -> None:
    pytest.importorskip("pydensecrf")
    _, probs, _ = _edge_case()
    with pytest.raises(ValueError, match=r"image must be RGB uint8 of shape \(40, 64, 3\)"):
        dense_crf(np.zeros((40, 60, 3), np.uint8), probs)


def test_missing_pydensecrf_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # makes `import pydensecrf...` raise ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(MissingCRFError, match=r"pip install 'wsss\[crf\]'") as info:
        require_pydensecrf()
    assert "pip install pydensecrf2" in str(info.value)
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingCRFError):
        dense_crf(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 2), np.float32))


def test_params_from_config() -> None:
    cfg = OmegaConf.create({"enabled": True, "workers": 2, "bilateral_sxy": 50, "iterations": 5})
    params = CRFParams.from_config(cfg)
    assert params == CRFParams(bilateral_sxy=50.0, iterations=5)
    assert CRFParams() == CRFParams(1.0, 3.0, 67.0, 3.0, 4.0, 10)
    with pytest.raises(ValueError, match="crf.iterations"):
        CRFParams.from_config({"iterations": 0})


def test_crf_map_keeps_item_order_across_processes() -> None:
    assert crf_map(abs, [-3, -1, -2, -5], workers=2, progress=False) == [3, 1, 2, 5]
    assert crf_map(abs, [-3, -1], workers=1, progress=False) == [3, 1]
    assert crf.INSTALL_HINT.startswith("pip install")
