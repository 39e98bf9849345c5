"""Test-only re-creation of the release's map, pseudo-label and refinement-target formulas (docs/protocol.md,
"Localization maps", "Refinement", "Pseudo labels"), written from the facts. Not used by wsss itself.

- ``release_input``: ``transforms.Resize(320)`` (PIL bilinear on the RGB image), ``ToTensor`` (/255),
  ``Normalize`` (ImageNet mean/std), in torch float32.
- ``release_cls_maps``: for s in 256, 320, 384: the input resized to s x s (bilinear, no aligned corners),
  scores F; ReLU, bilinear upsampling to 320 x 320 with aligned corners, / (per-class max + 1e-5), x label;
  fused by ``np.maximum`` into an array of zeros; stored as ``np.uint8(M * 255)``.
- ``release_refined_maps``: the same scales, the raw scores upsampled (aligned corners) to the original
  size, x label, ``np.maximum`` into zeros.
- ``release_pseudo_label``: ``pseudo_seg_label_gen.py``'s rule.
- ``release_refine_target``: ``train_refine.py``'s target from a stored uint8 map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALES = (256, 320, 384)


def release_input(rgb: np.ndarray, side: int = 320) -> torch.Tensor:
    """(1, 3, side, side) network input from an RGB uint8 (H, W, 3) image."""
    squashed = np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))
    x = torch.from_numpy(squashed.copy()).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return x[None]


def _views(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [
            net(F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)).float() for s in SCALES
        ]


def release_cls_maps(net: torch.nn.Module, x: torch.Tensor, label: torch.Tensor) -> np.ndarray:
    """(20, 320, 320) float32 fused classifier maps of one image (before the uint8 storage)."""
    size = tuple(x.shape[-2:])
    fused = np.zeros((label.numel(), *size), dtype=np.float32)
    for scores in _views(net, x):
        cam = F.relu(scores)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=True)
        cam /= F.adaptive_max_pool2d(cam, 1) + 1e-5
        cam = cam * label[None, :, None, None]
        fused = np.maximum(fused, cam[0].numpy())
    return fused


def release_store(maps: np.ndarray) -> np.ndarray:
    return np.uint8(maps * 255)


def release_refined_maps(
    net: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, size: tuple[int, int]
) -> np.ndarray:
    """(20, H, W) float32 fused raw refined maps at the original image size."""
    fused = np.zeros((label.numel(), *size), dtype=np.float32)
    for scores in _views(net, x):
        up = F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
        fused = np.maximum(fused, (up * label[None, :, None, None])[0].numpy())
    return fused


def release_pseudo_label(maps: np.ndarray, saliency: np.ndarray, alpha: float = 0.2) -> np.ndarray:
    """The release's label (H, W) uint8 from fused maps (20, H, W) and a saliency PNG (H, W) uint8."""
    maps = maps.copy()
    sal = (saliency > 50).astype(np.float32)
    maps[maps < alpha] = 0
    pred = np.concatenate([np.zeros((1, *maps.shape[1:]), np.float32), maps], axis=0)
    pred[0] = 1.0 - sal
    confident = np.sum(np.array(pred > 0.9, dtype=np.uint8), axis=0)
    label = pred.argmax(0).astype(np.uint8)
    label[confident > 2] = 255
    label[((sal == 1).astype(np.uint8) * (label == 0).astype(np.uint8)) > 0] = 255
    return label


def release_refine_target(stored: np.ndarray, flipped: bool) -> torch.Tensor:
    """(20, 320, 320) float target from the stored uint8 maps: / 255, flipped with the image, top class."""
    target = torch.from_numpy(stored).float() / 255.0
    if flipped:
        target = torch.flip(target, [2])
    top = (target == target.max(0, keepdim=True)[0]).float()
    return target * top
