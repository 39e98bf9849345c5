"""The confusion counts' label-image path (uint8) against the general one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss.method.metrics import confusion_counts


def test_uint8_label_images_count_like_any_integer_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred = rng.integers(0, 256, (37, 41)).astype(np.uint8)  # 0..20 classes, 21..255 not classes
        gt = rng.integers(0, 23, (37, 41)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.2] = 255
        fast = confusion_counts(pred, gt)
        general = confusion_counts(torch.from_numpy(pred.astype(np.int64)), gt.astype(np.int64))
        assert fast.dtype == general.dtype == torch.int64
        assert torch.equal(fast, general)
        keep = (pred < 21) & (gt < 21)
        assert int(fast.sum()) == int(keep.sum())
    hand = confusion_counts(np.array([0, 1, 255, 2], np.uint8), np.array([0, 1, 1, 255], np.uint8))
    assert hand.sum() == 2 and hand[0, 0] == 1 and hand[1, 1] == 1  # the issue-11 case, uint8
    with pytest.raises(ValueError, match="prediction has 3 pixels but ground truth has 4"):
        confusion_counts(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
