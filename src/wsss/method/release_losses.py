"""The release's DeepLab-V2 maths around the network: label resizing, the two-term training loss, prediction.

From the release's ``DeepLab-V2-PyTorch/main.py``:

- Labels are resized to each output's size with PIL's ``Image.NEAREST`` (``resize_labels_nearest``
  picks the same source pixels; torch's ``nearest`` and ``nearest-exact`` do not, see there).
- Loss, for every output of the multi-scale model (full, 0.5, 0.75, max), summed:
  ``CE(logit, labels, ignore 255) + CE(logit, argmax(logit.detach() * cls))``, ``cls`` the 21-way image
  label with background 1 (``release_deeplabv2_loss``). Cross-entropies are means over pixels; a batch
  whose labels are all 255 gives NaN there, as in the release.
- Test: logits upsampled to the image size (bilinear, ``align_corners=False``), softmax, argmax
  (``predict_labels``).

Not a module of ``wsss.models`` (which holds networks): these are functions of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


@lru_cache(maxsize=1024)
def pil_nearest_indices(size_in: int, size_out: int) -> tuple[int, ...]:
    """Source index of each output pixel of PIL's nearest resize along one axis.

    PIL walks the output with a double ``x = step / 2, 3 * step / 2, ...`` (``step = size_in / size_out``)
    accumulated by repeated addition, and takes ``int(x)``. That is ``floor((i + 0.5) * step)`` except
    where the sum lands a rounding error below an integer (e.g. 2 -> 7 pixels: output 3 reads source 0,
    not 1), so the addition is replayed here. torch's ``nearest`` takes ``floor(i * step)`` instead.
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"cannot resize {size_in} pixels to {size_out}; both sizes must be positive")
    step = size_in / size_out
    x = step * 0.5
    out = []
    for _ in range(size_out):
        out.append(min(int(x), size_in - 1))
        x += step
    return tuple(out)


def resize_labels_nearest(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, H, W) class ids -> (B, h, w) as PIL's ``Image.NEAREST`` resize to ``size = (h, w)`` picks them.

    (The release calls ``Image.resize(size=(H, W))`` with the logits' (H, W), which PIL reads as
    (width, height); its crops are square, so that only matters for non-square inputs, where the
    release would fail. Here ``size`` is (height, width).)
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W) class ids, got shape {tuple(labels.shape)}")
    h, w = (int(s) for s in size)
    rows = torch.tensor(pil_nearest_indices(labels.shape[1], h), device=labels.device)
    cols = torch.tensor(pil_nearest_indices(labels.shape[2], w), device=labels.device)
    return labels.index_select(1, rows).index_select(2, cols)


def with_background(image_labels: torch.Tensor) -> torch.Tensor:
    """(B, C) 0/1 image labels of the object classes -> (B, C + 1) with background (index 0) always 1."""
    if image_labels.ndim != 2:
        raise ValueError(f"image labels must be (B, classes), got shape {tuple(image_labels.shape)}")
    ones = image_labels.new_ones(image_labels.shape[0], 1)
    return torch.cat([ones, image_labels], dim=1)


def self_labels(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The release's second target: ``argmax(logits.detach() * cls[:, :, None, None])``.

    The logits are multiplied by the 0/1 label, not masked: where every present class scores below 0, an
    absent class (product 0; the first such index) wins.
    """
    return (logits.detach() * cls.to(logits.dtype)[:, :, None, None]).argmax(dim=1)


def release_deeplabv2_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, cls: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Sum over the outputs of ``CE(o, labels at o's size) + CE(o, self_labels(o, cls))``.

    Args:
        outputs: the multi-scale model's training outputs, each (B, C, h, w) at its own size.
        labels: (B, H, W) pseudo labels (``ignore_index`` ignored), resized to each output's size
            with ``resize_labels_nearest``.
        cls: (B, C) image labels with background 1 (``with_background``).
    """
    if cls.ndim != 2 or cls.shape[0] != labels.shape[0] or cls.shape[1] != outputs[0].shape[1]:
        raise ValueError(
            f"cls must be (B, {outputs[0].shape[1]}) image labels with background (see with_background), "
            f"got shape {tuple(cls.shape)} for {labels.shape[0]} images"
        )
    total = outputs[0].new_zeros(())
    for logits in outputs:
        target = resize_labels_nearest(labels.long(), logits.shape[-2:])
        total = total + F.cross_entropy(logits, target, ignore_index=ignore_index)
        total = total + F.cross_entropy(logits, self_labels(logits, cls))
    return total


def predict_labels(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The release's test-time labels: (B, C, h, w) logits upsampled (bilinear, ``align_corners=False``) to
    ``size`` = (H, W), softmax over classes, argmax -> (B, H, W)."""
    up = F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return F.softmax(up, dim=1).argmax(dim=1)
