"""The authors' release's code paths, re-created from docs/protocol.md (the release's facts), as baselines.

These are what the release's scripts do around a network, written from the spec for the benchmarks
(never imported by wsss): the classifier's localization-map loop (``localization_map_gen.py``), its
training step (``train_cls.py``) and its pseudo-label loop (``pseudo_seg_label_gen.py``). They run on
whatever network they are given, so a benchmark compares code paths on the same network and tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss.tasks.classification import RELEASE_LR_MULT as LR_MULT

SCALES = (256, 320, 384)
"""The release's map scales: square input sides, after squashing the image to 320x320."""
SQUASH = 320
EPS = 1e-5


def class_maps(
    model: nn.Module, image: torch.Tensor, label: torch.Tensor, scales: Sequence[int] = SCALES
) -> np.ndarray:
    """One image's 20-channel uint8 maps, the release's way: batch 1, autograd on.

    ``image`` (1, 3, S, S) is the squashed, normalised image; ``label`` (1, 20) multi-hot. Per scale:
    resize the input (bilinear, ``align_corners=False``), score maps F, ReLU, upsample to S x S
    (bilinear, ``align_corners=True``), divide by the per-class max + 1e-5, times the label; fused by
    max over scales; stored as ``uint8(M * 255)`` (truncation).
    """
    size = tuple(image.shape[-2:])
    fused = None
    for s in scales:
        x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        maps = F.relu(model(x))
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
        maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + EPS)
        maps = maps * label[:, :, None, None]
        fused = maps if fused is None else torch.maximum(fused, maps)
    return (fused[0].detach().cpu().numpy() * 255).astype(np.uint8)


def map_loop(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, out_dir: Path | None = None, **kwargs
) -> None:
    """The release's map loop over (N, 3, S, S) images: one ``class_maps`` per image, each saved as a
    ``.npy`` in ``out_dir`` when given."""
    for i in range(images.shape[0]):
        maps = class_maps(model, images[i : i + 1], labels[i : i + 1], **kwargs)
        if out_dir is not None:
            np.save(out_dir / f"{i:05d}.npy", maps)


def optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.SGD:
    """The release's classifier optimizer: nesterov SGD, momentum 0.9, wd 5e-4, four lr groups.

    ``model.param_groups()`` (``wsss.models.classifier.DRSClassifier``) splits the parameters the way
    the release's ``get_parameter_groups`` does; the multipliers (x1 backbone weights, x2 backbone biases,
    x10 new weights and DRS FCs, x20 new biases) are ``wsss.tasks.classification.RELEASE_LR_MULT``.
    """
    groups = model.param_groups()
    return torch.optim.SGD(
        [{"params": groups[name], "lr": lr * mult} for name, mult in LR_MULT.items() if groups[name]],
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        nesterov=True,
    )


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """One release training step: GAP logits, multi-label soft margin, backward, step, ``loss.item()``."""
    logits = model(images).mean(dim=(2, 3))
    loss = F.multilabel_soft_margin_loss(logits, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()  # the release's running-loss meter syncs every step


def refined_maps(
    model: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    size: tuple[int, int],
    scales: Sequence[int] = SCALES,
) -> np.ndarray:
    """The refinement network's maps as the release's pseudo-label loop makes them: raw outputs of
    every scale, upsampled (``align_corners=True``) to ``size`` (the original image), times the
    label, max over scales; no ReLU, no normalisation. (20, H, W) float32, batch 1, autograd on."""
    fused = None
    for s in scales:
        x = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        fused = upsample_scale(model(x), label, size, fused)
    return fused[0].detach().cpu().numpy()


def upsample_scale(
    scores: torch.Tensor, label: torch.Tensor, size: tuple[int, int], fused: torch.Tensor | None
) -> torch.Tensor:
    """One scale's (1, 20, h, w) raw output upsampled to ``size``, times the label, max-fused."""
    maps = F.interpolate(scores, size=size, mode="bilinear", align_corners=True) * label[:, :, None, None]
    return maps if fused is None else torch.maximum(fused, maps)


def label_from_maps(maps: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The release's rule on (20, H, W) refined maps and a (H, W) uint8 saliency map."""
    maps = np.where(maps < 0.2, 0.0, maps).astype(np.float32)
    salient = (saliency > 50).astype(np.float32)
    scores = np.concatenate([(1.0 - salient)[None], maps])
    label = scores.argmax(axis=0).astype(np.uint8)  # first maximum: ties go to background
    label[(scores > 0.9).sum(axis=0) > 2] = 255
    label[(salient == 1) & (label == 0)] = 255
    return label


def save_label(path: Path, label: np.ndarray, palette: list[int]) -> None:
    """A palette PNG, as the release writes its pseudo labels."""
    img = Image.fromarray(label, mode="P")
    img.putpalette(palette)
    img.save(path)


def pseudo_label(
    scores: Sequence[torch.Tensor],
    label: torch.Tensor,
    saliency_path: Path,
    out_path: Path,
    palette: list[int],
) -> None:
    """The release's pseudo-label loop body after the network: read the saliency map, upsample and
    fuse the per-scale outputs ``scores`` to its size, apply the rule, write the PNG."""
    saliency = np.asarray(Image.open(saliency_path).convert("L"))
    fused = None
    for s in scores:
        fused = upsample_scale(s, label, saliency.shape, fused)
    save_label(out_path, label_from_maps(fused[0].detach().cpu().numpy(), saliency), palette)


def pseudo_loop(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    saliency_paths: Sequence[Path],
    out_dir: Path,
    palette: list[int],
    scales: Sequence[int] = SCALES,
) -> None:
    """The whole release pseudo-label loop: per image, the refiner at every scale, then ``pseudo_label``."""
    for i, sal in enumerate(saliency_paths):
        x = images[i : i + 1]
        scores = [model(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)) for s in scales]
        pseudo_label(scores, labels[i : i + 1], sal, out_dir / f"{Path(sal).stem}.png", palette)
