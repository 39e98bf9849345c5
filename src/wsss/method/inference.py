"""Segmentation inference shared by ``stage=eval`` and ``stage=predict``.

For one image at its original size: every view (each scale of ``scales``, and with ``flip`` its
mirror) runs through the network - whole, or with ``tile`` in overlapping square windows whose
logits are averaged - and its logits are upsampled bilinearly to the image size. The views' softmax
probabilities are averaged; the label is their argmax, or, with a dense CRF, the argmax of the CRF
marginals (CRFs run in a pool of processes while the network moves on to the next images).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError
from wsss.method.crf import CRFParams, crf_executor, crf_labels

log = logging.getLogger(__name__)


class SplitImages(Protocol):
    """What eval/predict read (``wsss.data.voc.VOCDataset``): ids, RGB uint8 images, masks or None."""

    ids: Sequence[str]

    def image(self, index: int) -> np.ndarray: ...

    def mask(self, index: int) -> np.ndarray | None: ...


def to_input(
    image: np.ndarray,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float (1, 3, H, W), as the training transforms give it."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).to(device)
    mean = torch.tensor([float(v) for v in mean], device=device).view(3, 1, 1)
    std = torch.tensor([float(v) for v in std], device=device).view(3, 1, 1)
    return ((x.permute(2, 0, 1) / 255.0 - mean) / std).unsqueeze(0)


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of ``tile`` covering ``length`` (the last one flush with the end)."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def tiled_logits(model: nn.Module, x: torch.Tensor, tile: int | None, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits (1, C, H, W) at the input size: whole input, or averaged over overlapping ``tile`` windows."""
    height, width = x.shape[-2:]
    if tile is None or (height <= tile and width <= tile):
        return F.interpolate(model(x), size=(height, width), mode="bilinear", align_corners=False)
    stride = max(1, int(tile * (1 - overlap)))
    total: torch.Tensor | None = None
    count = x.new_zeros((1, 1, height, width))
    for top in window_starts(height, tile, stride):
        for left in window_starts(width, tile, stride):
            crop = x[..., top : top + tile, left : left + tile]
            logits = F.interpolate(model(crop), size=crop.shape[-2:], mode="bilinear", align_corners=False)
            if total is None:
                total = x.new_zeros((1, logits.shape[1], height, width))
            total[..., top : top + tile, left : left + tile] += logits
            count[..., top : top + tile, left : left + tile] += 1
    return total / count


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    x: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    tile: int | None = None,
) -> torch.Tensor:
    """Class probabilities (C, H, W) of one normalised image (1, 3, H, W), averaged over the views."""
    if not scales:
        raise ConfigError("no inference scales; give e.g. eval.scales=[1.0] or [0.5,0.75,1.0,1.25,1.5]")
    height, width = x.shape[-2:]
    total: torch.Tensor | None = None
    n_views = 0
    for s in scales:
        if float(s) <= 0:
            raise ConfigError(f"inference scale {s} must be positive")
        size = (max(1, round(height * float(s))), max(1, round(width * float(s))))
        xs = (
            x
            if size == (height, width)
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        )
        for mirrored in (False, True) if flip else (False,):
            view = xs.flip(-1) if mirrored else xs
            logits = tiled_logits(model, view, tile)
            if mirrored:
                logits = logits.flip(-1)
            logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)[0]
            total = probs if total is None else total + probs
            n_views += 1
    assert total is not None
    return total / n_views


def segment_images(
    model: nn.Module,
    dataset: SplitImages,
    indices: Sequence[int],
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    tile: int | None = None,
    crf: CRFParams | None = None,
    crf_workers: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, label (H, W) uint8)`` for ``indices`` in order (labels at the original image size)."""
    model = model.to(device).eval()
    executor = crf_executor(crf_workers) if crf is not None else None
    pending: deque[tuple[int, Future | np.ndarray]] = deque()
    limit = 2 * max(1, crf_workers)
    try:
        for index in indices:
            image = dataset.image(index)
            probs = predict_probs(model, to_input(image, device, mean, std), scales, flip, tile)
            if crf is None:
                result: Future | np.ndarray = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
            elif executor is None:
                result = crf_labels(image, probs.cpu().numpy(), crf)
            else:
                result = executor.submit(crf_labels, image, probs.cpu().numpy(), crf)
            pending.append((index, result))
            while pending and (len(pending) > limit or _ready(pending[0][1])):
                yield _resolve(pending.popleft())
        while pending:
            yield _resolve(pending.popleft())
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def _ready(result: Future | np.ndarray) -> bool:
    return not isinstance(result, Future) or result.done()


def _resolve(item: tuple[int, Future | np.ndarray]) -> tuple[int, np.ndarray]:
    index, result = item
    return index, result.result() if isinstance(result, Future) else result


def pick_device(accelerator: str | None) -> torch.device:
    """``cuda`` when available unless the trainer asks for the CPU."""
    if str(accelerator) != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
