"""albumentations pipelines per stage (docs/protocol.md "Classifier", "Refinement", "Segmentation").

Every pipeline takes an RGB uint8 image and returns it ImageNet-normalised (float32, H x W x 3).
Photometric steps run first (on uint8), then ``Normalize``, then the geometry, so padding with
``fill=0`` pads with the mean colour ("0 after mean subtraction", as DeepLab pads); masks are
padded with 255 (ignore).

- ``cls`` / ``refine`` training: with a ``squash_size`` (the release: 384 for the classifier, 320 for the
  refiner), first a squash to ``squash_size`` x ``squash_size`` (``Squash``: PIL bilinear on the uint8
  image, as the release's ``transforms.Resize``; cv2's linear resize does not antialias and differs by up
  to 64 grey levels when shrinking a VOC image to 320); then colour jitter, pad to ``crop_size`` as
  needed, random crop ``crop_size`` (paper 321, release 320), horizontal flip. The paper names colour
  jitter without values; both protocols use the release's (0.3, 0.3, 0.3, 0.1). ``wsss/conf/protocol/`` sets
  the sizes. ``refine`` carries the stored maps as the extra target ``maps`` (H x W x 20 float): it gets
  the image's geometry exactly and is padded with 0 (no map evidence), not 255. Maps already stored at
  the squash size (the release's 320 x 320 maps) are not resized at all; others are resized once,
  bilinearly (``wsss.method.localization.resize_maps``).
- ``seg`` training: random scale (``seg_scales`` choices or a uniform ``seg_scale_range``), pad to
  ``crop_size`` (image 0, mask 255), random crop ``crop_size``, flip. ``seg_resize`` says how the
  scale resizes: ``cv2`` (albumentations: cv2 linear image, cv2 nearest label; wsss's default),
  ``cv2_pil_labels`` (cv2 linear image, PIL nearest label: the release's DeepLab-V2 code) or ``pil``
  (PIL bilinear image before normalisation, PIL nearest label: the release's DeepLab-V3+ code).
- ``eval`` and every stage with ``train=False``: normalisation only (original size).
- ``infer``: normalisation only, or with ``crop_size`` the release's preprocessing: ``Squash`` to
  ``crop_size`` x ``crop_size`` then ``TorchNormalize`` (ToTensor + Normalize in torchvision's float32
  order, bit-equal to the release's input; albumentations' ``Normalize`` differs by up to 1 ulp, which
  flips some truncated uint8 maps). The unsquashed path keeps ``Normalize`` (its maps are unchanged).

Targets: ``image`` and ``mask`` (class ids: nearest, padded with 255) everywhere; ``maps`` in ``refine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError
from wsss.method.localization import resize_maps

STAGES = ("cls", "refine", "seg", "eval", "infer")
SEG_RESIZES = ("cv2", "cv2_pil_labels", "pil")
"""How ``seg`` training's random scale resizes image and label (see the module doc)."""
JITTER = (0.3, 0.3, 0.3, 0.1)
"""Colour jitter (brightness, contrast, saturation, hue) of the authors' release."""
SEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
"""Random scales of the DeepLab training (docs/protocol.md)."""


def _jitter(jitter: Sequence[float] | None) -> list[A.BasicTransform]:
    if not jitter:
        return []
    if len(jitter) != 4 or min(jitter) < 0:
        raise ConfigError(
            f"data.color_jitter={list(jitter)}: give four non-negative values [brightness, contrast, "
            "saturation, hue] (release: [0.3, 0.3, 0.3, 0.1]) or null for none"
        )
    b, c, s, h = (float(v) for v in jitter)
    return [A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=1.0)]


def pil_resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """PIL's resize of a uint8 (H, W[, 3]) array to ``size`` = (h, w) (a copy when the size is unchanged)."""
    h, w = int(size[0]), int(size[1])
    if array.dtype != np.uint8:
        raise ValueError(f"PIL resizes uint8 images and class masks here, got {array.dtype}")
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((w, h), resample=resample))


class Squash(A.DualTransform):
    """Resize to ``side`` x ``side`` as the release's ``transforms.Resize`` does: PIL bilinear on the uint8
    image, PIL nearest on class masks. Float maps (H, W, C) already of that size pass unchanged; others
    are resized once, bilinearly (``resize_maps``). Runs before ``Normalize`` (it needs uint8)."""

    def __init__(self, side: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.side = int(side)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f"Squash takes the uint8 image (before Normalize), got {img.dtype}")
        return pil_resize(img, (self.side, self.side), Image.BILINEAR)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        if mask.shape[:2] == (self.side, self.side):
            return mask
        if np.issubdtype(mask.dtype, np.floating):  # refine maps (H, W, C)
            maps = resize_maps(np.moveaxis(mask, -1, 0), (self.side, self.side))
            return np.ascontiguousarray(np.moveaxis(maps, 0, -1))
        return pil_resize(mask, (self.side, self.side), Image.NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("side",)


class TorchNormalize(A.ImageOnlyTransform):
    """uint8 RGB -> ``(x / 255 - mean) / std`` in float32, in the order (and so with the rounding) of
    torchvision's ``ToTensor`` + ``Normalize``: the release's input to the last bit."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f"TorchNormalize takes a uint8 image, got {img.dtype}")
        return (img.astype(np.float32) / np.float32(255.0) - self.mean) / self.std

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std")


class SegScale(A.DualTransform):
    """Random rescale of image and label by one factor: drawn from ``choices`` or, with ``span`` =
    (low, high), uniformly from that range. Sizes ``int(h * s), int(w * s)`` (both releases).

    ``resize``: ``cv2_pil_labels`` (cv2 linear image, PIL nearest label; the release's DeepLab-V2) or
    ``pil`` (PIL bilinear uint8 image, PIL nearest label; the release's DeepLab-V3+).
    """

    def __init__(
        self,
        choices: Sequence[float] = SEG_SCALES,
        span: Sequence[float] | None = None,
        resize: str = "cv2_pil_labels",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if resize not in SEG_RESIZES[1:]:
            raise ConfigError(f"SegScale resize={resize!r}; choose cv2_pil_labels or pil")
        self.choices = [float(s) for s in choices]
        self.span = None if span is None else (float(span[0]), float(span[1]))
        self.resize = resize

    def get_params(self) -> dict[str, Any]:
        if self.span is not None:
            return {"scale": self.py_random.uniform(*self.span)}
        return {"scale": self.py_random.choice(self.choices)}

    @staticmethod
    def _size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
        return max(1, int(shape[0] * scale)), max(1, int(shape[1] * scale))

    def apply(self, img: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        h, w = self._size(img.shape, scale)
        if self.resize == "pil":
            return pil_resize(img, (h, w), Image.BILINEAR)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, scale: float = 1.0, **params: Any) -> np.ndarray:
        return pil_resize(mask, self._size(mask.shape, scale), Image.NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("choices", "span", "resize")


def _pad_crop_flip(crop_size: int, fill_mask: float) -> list[A.BasicTransform]:
    return [
        A.PadIfNeeded(
            crop_size,
            crop_size,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=fill_mask,
        ),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
    ]


def random_scale(scales: Sequence[float] = SEG_SCALES) -> A.BasicTransform:
    """Rescale by one factor drawn uniformly from ``scales`` (bilinear image, nearest masks)."""
    return A.OneOf(
        [
            A.RandomScale(scale_limit=(s - 1.0, s - 1.0), mask_interpolation=cv2.INTER_NEAREST, p=1.0)
            for s in scales
        ],
        p=1.0,
    )


def seg_scale(
    resize: str = "cv2", choices: Sequence[float] = SEG_SCALES, span: Sequence[float] | None = None
) -> A.BasicTransform:
    """The random scale of ``seg`` training for ``resize`` (``SEG_RESIZES``; see the module doc)."""
    if resize not in SEG_RESIZES:
        raise ConfigError(f"seg.scale_resize={resize!r}; choose one of {', '.join(SEG_RESIZES)}")
    if span is not None and (len(span) != 2 or not 0 < float(span[0]) <= float(span[1])):
        raise ConfigError(f"seg.scale_range={list(span)}: give [low, high] with 0 < low <= high, or null")
    if resize == "cv2":
        if span is not None:
            raise ConfigError("seg.scale_range needs seg.scale_resize=cv2_pil_labels or pil")
        return random_scale(choices)
    return SegScale(choices, span, resize)


def build_transforms(
    stage: str,
    crop_size: int | None,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    squash_size: int | None = None,
    seg_scales: Sequence[float] = SEG_SCALES,
    color_jitter: Sequence[float] | None = JITTER,
    seg_scale_range: Sequence[float] | None = None,
    seg_resize: str = "cv2",
) -> A.Compose:
    """The albumentations pipeline of ``stage`` (see module doc).

    Args:
        stage: cls, refine, seg, eval or infer.
        crop_size: training crop side; for ``infer`` the square side to squash to (None: original size).
        train: augment (True) or only normalise (False; ``infer`` still squashes).
        mean, std: per-channel normalisation in [0, 1] units (ImageNet).
        squash_size: cls/refine training: square side to squash to before the crop; None: no squash.
        seg_scales: the random scale choices of ``seg`` training.
        color_jitter: cls/refine training: (brightness, contrast, saturation, hue); None: no jitter.
        seg_scale_range: ``seg`` training: (low, high) of a uniform random scale instead of the choices.
        seg_resize: ``seg`` training: how the random scale resizes (``SEG_RESIZES``).
    """
    if stage not in STAGES:
        raise ValueError(f"transforms stage={stage!r}; choose one of {', '.join(STAGES)}")
    targets = {"maps": "mask"} if stage == "refine" else {}
    normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    steps: list[A.BasicTransform]
    if stage == "infer":
        steps = [normalize]
        if crop_size is not None:
            steps = [Squash(int(crop_size)), TorchNormalize(mean, std)]
    elif not train or stage == "eval":
        steps = [normalize]
    else:
        if crop_size is None or int(crop_size) <= 0:
            raise ConfigError(f"{stage} training needs a positive crop_size, got {crop_size}")
        crop = int(crop_size)
        if stage == "seg":
            scale = seg_scale(seg_resize, seg_scales, seg_scale_range)
            # PIL resizes the uint8 image, before the normalisation; cv2 the normalised float image
            steps = [scale, normalize] if seg_resize == "pil" else [normalize, scale]
            steps += _pad_crop_flip(crop, IGNORE_INDEX)
        else:
            # refine: the only mask-like target is the maps, padded with 0.
            fill_mask = 0 if stage == "refine" else IGNORE_INDEX
            steps = [Squash(int(squash_size))] if squash_size else []
            steps += [*_jitter(color_jitter), normalize, *_pad_crop_flip(crop, fill_mask)]
    # refine maps stored at the squash size come with an image of another size (Squash aligns them)
    squashes_maps = stage == "refine" and train and bool(squash_size)
    return A.Compose(steps, additional_targets=targets, is_check_shapes=not squashes_maps)
