"""The release's DeepLab-V2 loss, label resizing (PIL nearest) and test-time prediction, on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.method.release_losses import (
    pil_nearest_indices,
    predict_labels,
    release_deeplabv2_loss,
    resize_labels_nearest,
    self_labels,
    with_background,
)


def pil_resize(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """What the release does: float image, PIL nearest resize, back to integers."""
    return np.asarray(
        Image.fromarray(labels.astype(np.float32)).resize((w, h), resample=Image.NEAREST)
    ).astype(np.int64)


def test_indices_match_pil_for_every_size_pair_up_to_120() -> None:
    for n_in in range(1, 121):
        row = np.arange(n_in, dtype=np.float32)[None]
        for n_out in range(1, 121):
            assert list(pil_nearest_indices(n_in, n_out)) == pil_resize(row, 1, n_out)[0].tolist(), (
                n_in,
                n_out,
            )


def test_pil_picks_differ_from_the_centre_formula_and_from_torch() -> None:
    # 2 -> 7: output 3 sits at (3 + 0.5) * 2 / 7 = 1.0 exactly; PIL's summed step lands below and reads 0
    assert pil_nearest_indices(2, 7) == (0, 0, 0, 0, 1, 1, 1)
    assert math.floor(3.5 * 2 / 7) == 1
    # torch's "nearest" reads floor(i * step): 4 -> 2 gives sources 0, 2; PIL gives the centres 1, 3
    assert pil_nearest_indices(4, 2) == (1, 3)
    ramp = torch.arange(4.0).view(1, 1, 1, 4)
    assert F.interpolate(ramp, size=(1, 2), mode="nearest").flatten().tolist() == [0.0, 2.0]


def test_label_resize_matches_pil_on_a_non_square_label_map() -> None:
    labels = torch.randint(0, 21, (2, 321, 250), generator=torch.Generator().manual_seed(0))
    labels[:, :40] = 255
    for h, w in ((41, 32), (21, 16), (31, 24), (400, 333)):
        got = resize_labels_nearest(labels, (h, w))
        for b in range(2):
            assert np.array_equal(got[b].numpy(), pil_resize(labels[b].numpy(), h, w)), (h, w)
    with pytest.raises(ValueError, match=r"\(B, H, W\) class ids"):
        resize_labels_nearest(labels[0], (4, 4))


def test_with_background() -> None:
    assert with_background(torch.tensor([[0.0, 1.0, 0.0]])).tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_self_labels_multiply_not_mask() -> None:
    # classes 0 (background) and 2 present; pixel 1 scores [2, 5, 1] -> [2, 0, 1] -> 0;
    # pixel 2 scores [-1, 3, -2] -> [-1, 0, -2] -> the absent class 1 wins (product 0)
    logits = torch.tensor([[2.0, -1.0], [5.0, 3.0], [1.0, -2.0]]).view(1, 3, 1, 2)
    assert self_labels(logits, torch.tensor([[1.0, 0.0, 1.0]])).tolist() == [[[0, 1]]]


def _ce(scores: list[float], target: int) -> float:
    return math.log(sum(math.exp(s) for s in scores)) - scores[target]


def test_two_term_loss_on_hand_built_outputs() -> None:
    cls = torch.tensor([[1.0, 0.0, 1.0]])
    # output A (1 x 2): pixel scores [2, 5, 1] and [-1, 3, -2]
    a = torch.tensor([[2.0, -1.0], [5.0, 3.0], [1.0, -2.0]]).view(1, 3, 1, 2)
    # output B (2 x 2), one score vector per pixel
    b_scores = [[0.5, 0.0, 1.5], [1.0, 2.0, -1.0], [-0.5, -1.0, -0.2], [3.0, 0.0, 0.0]]
    b = torch.tensor(b_scores).T.reshape(1, 3, 2, 2)
    # labels 4 x 4: PIL's 4 -> 2 reads rows/cols 1 and 3, 4 -> 1 reads row 2 (centre); 255 elsewhere
    labels = torch.full((1, 4, 4), 255)
    labels[0, 2, 1], labels[0, 2, 3] = 2, 255  # output A reads (2, 1) and (2, 3): class 2 and ignored
    labels[0, 1, 1], labels[0, 1, 3], labels[0, 3, 1], labels[0, 3, 3] = 0, 2, 255, 1
    a_first = _ce([2, 5, 1], 2)  # the one labelled pixel
    a_second = (_ce([2, 5, 1], 0) + _ce([-1, 3, -2], 1)) / 2
    b_first = (_ce(b_scores[0], 0) + _ce(b_scores[1], 2) + _ce(b_scores[3], 1)) / 3
    # products with cls [1, 0, 1]: [0.5, 0, 1.5] -> 2; [1, 0, -1] -> 0; [-0.5, 0, -0.2] -> 1; [3, 0, 0] -> 0
    b_second = (_ce(b_scores[0], 2) + _ce(b_scores[1], 0) + _ce(b_scores[2], 1) + _ce(b_scores[3], 0)) / 4
    loss = release_deeplabv2_loss([a, b], labels, cls)
    assert loss.item() == pytest.approx(a_first + a_second + b_first + b_second, abs=1e-6)
    with pytest.raises(ValueError, match=r"cls must be \(B, 3\) image labels with background"):
        release_deeplabv2_loss([a], labels, torch.tensor([[0.0, 1.0]]))


def test_loss_gradient_flows_through_both_terms_only_via_the_logits() -> None:
    a = torch.tensor([[2.0, -1.0], [5.0, 3.0], [1.0, -2.0]]).view(1, 3, 1, 2).requires_grad_()
    release_deeplabv2_loss([a], torch.tensor([[[2, 255]]]), torch.tensor([[1.0, 0.0, 1.0]])).backward()
    p = F.softmax(a.detach(), dim=1)[0, :, 0]
    onehot = torch.eye(3)
    # d/dlogits of CE: (softmax - onehot) / pixels of the term
    expected = torch.stack(
        [(p[:, 0] - onehot[2]) + (p[:, 0] - onehot[0]) / 2, (p[:, 1] - onehot[1]) / 2], dim=1
    )
    assert torch.allclose(a.grad[0, :, 0], expected, atol=1e-6)


def test_prediction_upsamples_without_aligned_corners() -> None:
    # class 0 ramps 0 -> 1 over 2 pixels, class 1 is 0.3: at width 4 align_corners=False gives class 0
    # 0, 0.25, 0.75, 1 (labels 1, 1, 0, 0); align_corners=True would give 0, 1/3, 2/3, 1 (1, 0, 0, 0)
    logits = torch.tensor([[0.0, 1.0], [0.3, 0.3]]).view(1, 2, 1, 2)
    assert predict_labels(logits, (1, 4)).tolist() == [[[1, 1, 0, 0]]]
