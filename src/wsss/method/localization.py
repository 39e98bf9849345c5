"""Localization maps from class score maps: the map maths, and the one map resize of wsss.

For the class score maps F (B, C, h, w) of a network at output stride 8, one view's map of class c is

- ``relu="after"`` (the paper's formula, wsss's reading): ``M_c = ReLU(up(F_c)) / (max ReLU(up(F_c)) + 1e-5)``;
- ``relu="before"`` (the authors' release): ``M_c = up(ReLU(F_c)) / (max up(ReLU(F_c)) + 1e-5)``;
- ``relu="none"`` with ``normalize=False``: ``M_c = up(F_c)``, raw;
- ``relu="after"`` with ``normalize=False`` (the release's refined maps): ``M_c = ReLU(up(F_c))``: the
  release fuses raw outputs into an array that starts at zero, ``max(0, views...)``, which is the max of
  the ReLU'd views;

where ``up`` is bilinear upsampling to the map size (``align_corners`` as configured: the release uses
True). Views (each scale of the input, and with ``flip`` its mirror) are fused by element-wise max;
classes absent from the image label are 0 (or not computed at all: ``present_class_maps``).

``resize_maps`` is the one function that resizes maps anywhere in wsss (pseudo labels, seed
evaluation, refinement targets): bilinear, half-pixel centres unless ``align_corners``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError

EPS = 1e-5
"""Added to the per-class max before dividing (as the release does), so an all-zero map stays 0."""

ABSOLUTE_MIN = 16
"""Scales >= this are absolute square sizes in pixels; smaller ones are factors of the input size."""

RELU_MODES = ("after", "before", "none")


@dataclass(frozen=True)
class MapMaths:
    """How one view's scores become a map (see the module docstring)."""

    relu: str = "after"
    normalize: bool = True
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.relu not in RELU_MODES:
            raise ConfigError(f"maps relu={self.relu!r}; choose one of {', '.join(RELU_MODES)}")

    @classmethod
    def from_config(cls, node: object) -> MapMaths:
        get = node.get if hasattr(node, "get") else lambda k, d=None: getattr(node, k, d)
        return cls(
            relu=str(get("relu", "after")),
            normalize=bool(get("normalize", True)),
            align_corners=bool(get("align_corners", False)),
        )


PAPER_MATHS = MapMaths()
"""The paper's formula: ReLU after the upsampling, per-class normalisation, half-pixel centres."""


def resize_maps(
    maps: np.ndarray | torch.Tensor, size: Sequence[int], align_corners: bool = False
) -> np.ndarray | torch.Tensor:
    """Bilinear resize of (K, h, w) or (B, K, h, w) maps to ``size`` = (H, W); same type out as in.

    numpy input gives float32 numpy output. A no-op when the maps already have that size. Each plane
    is resized on its own, so a class's map is the same whatever other classes are resized with it.
    """
    size = (int(size[0]), int(size[1]))
    is_numpy = isinstance(maps, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)) if is_numpy else maps
    if x.ndim not in (3, 4):
        raise ValueError(f"maps must be (K, H, W) or (B, K, H, W), got shape {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != size and x.shape[-3] > 0:
        # one plane at a time: torch's CPU kernel takes a vectorised path for exactly 3 channels that
        # rounds differently, and a class's map must not depend on how many classes the image has
        planes = x.reshape(-1, 1, *x.shape[-2:])
        planes = F.interpolate(planes, size=size, mode="bilinear", align_corners=align_corners)
        x = planes.reshape(*x.shape[:-2], *size)
    elif tuple(x.shape[-2:]) != size:  # no classes: an empty stack of the new size
        x = x.new_zeros((*x.shape[:-2], *size))
    return x.numpy() if is_numpy else x


def scale_sizes(scales: Sequence[float], base_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Input sizes (h, w) for each scale: a factor (< 16) of ``base_hw`` or an absolute square side."""
    if not scales:
        raise ConfigError("maps.scales is empty; give at least one scale, e.g. [1.0] or [256, 320, 384]")
    sizes = []
    for s in scales:
        s = float(s)
        if s <= 0:
            raise ConfigError(f"maps.scales holds {s}; scales must be positive factors or sizes in pixels")
        if s >= ABSOLUTE_MIN:
            sizes.append((int(round(s)), int(round(s))))
        else:
            sizes.append((max(1, int(round(base_hw[0] * s))), max(1, int(round(base_hw[1] * s)))))
    return sizes


def view_maps(scores: torch.Tensor, size: Sequence[int], maths: MapMaths = PAPER_MATHS) -> torch.Tensor:
    """One view's maps (B, C, H, W) at ``size`` from its scores (B, C, h, w), per ``maths``."""
    scores = scores.float()
    if maths.relu == "before":
        scores = F.relu(scores)
    maps = resize_maps(scores, size, maths.align_corners)
    if maths.relu == "after":
        maps = F.relu(maps)
    if maths.normalize:
        maps = maps / (maps.amax(dim=(-2, -1), keepdim=True) + EPS)
    return maps


def view_scores(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> list[torch.Tensor]:
    """Raw class scores (B, C, h, w) of every view: each scale, and its mirror image with ``flip``.

    Each scale runs as one batch (both orientations together); mirrored scores are flipped back.
    """
    base = tuple(images.shape[-2:])
    views = []
    for size in scale_sizes(scales, base):
        x = images if size == base else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        scores = model(x).float()
        if flip:
            plain, mirrored = scores.chunk(2)
            views += [plain, mirrored.flip(-1)]
        else:
            views.append(scores)
    return views


def fuse_views(
    views: Sequence[torch.Tensor], size: Sequence[int], maths: MapMaths = PAPER_MATHS
) -> torch.Tensor:
    """Every view's maps at ``size`` (each normalised on its own per ``maths``), fused by max."""
    fused: torch.Tensor | None = None
    for scores in views:
        maps = view_maps(scores, size, maths)
        fused = maps if fused is None else torch.maximum(fused, maps)
    if fused is None:
        raise ValueError("no views to fuse")
    return fused


def multiscale_maps(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    labels: torch.Tensor | None = None,
    maths: MapMaths = PAPER_MATHS,
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Fused maps (B, C, H, W) at ``size`` (default: the size of ``images``); absent classes 0."""
    size = tuple(size) if size is not None else tuple(images.shape[-2:])
    fused = fuse_views(view_scores(model, images, scales, flip), size, maths)
    if labels is not None:
        fused = fused * (labels[:, :, None, None] > 0).to(fused.dtype)
    return fused


def present_class_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    maths: MapMaths = PAPER_MATHS,
    sizes: Sequence[Sequence[int]] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (present class indices (K,), their fused maps (K, H, W)).

    Same values as ``multiscale_maps``, but only the K present classes of each image are upsampled
    and normalised (about 1.5 of 20 on VOC), which is most of the work after the forward passes.
    ``sizes`` gives each image's map size (default: the input size).
    """
    views = view_scores(model, images, scales, flip)
    out = []
    for i in range(images.shape[0]):
        size = tuple(sizes[i]) if sizes is not None else tuple(images.shape[-2:])
        present = torch.nonzero(labels[i] > 0).flatten()
        if present.numel() == 0:
            out.append((present, images.new_zeros((0, *size))))
            continue
        maps = fuse_views([v[i : i + 1, present] for v in views], size, maths)[0]
        out.append((present, maps))
    return out


def class_maps(scores: torch.Tensor, labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Single-view maps (B, C, H, W) of ``scores`` at ``size`` (paper maths), zero for absent classes."""
    maps = view_maps(scores, size)
    return maps * (labels > 0).to(maps.dtype)[:, :, None, None]
