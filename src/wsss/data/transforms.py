"""albumentations pipelines per stage (SPEC.md "Classifier", "Segmentation").

Every pipeline takes an RGB uint8 image and returns it ImageNet-normalised (float32, H x W x 3).
Photometric steps run first (on uint8), then ``Normalize``, then the geometry, so padding with
``fill=0`` pads with the mean colour ("0 after mean subtraction", as DeepLab pads); masks are
padded with 255 (ignore).

- ``cls`` / ``refine`` training: with a ``squash_size`` (the release: 384 for the classifier), first a
  squash to ``squash_size`` x ``squash_size``; then colour jitter, pad to ``crop_size`` as needed, random
  crop ``crop_size`` (paper 321, release 320), horizontal flip. The paper names colour jitter without
  values; both protocols use the release's (0.3, 0.3, 0.3, 0.1). ``conf/protocol/`` sets the sizes.
  ``refine`` carries the stored maps as the extra target ``maps`` (H x W x 20 float): it gets the
  image's geometry exactly, is resized bilinearly, and is padded with 0 (no map evidence), not 255.
- ``seg`` training (both protocols): random scale from {0.5, 0.75, 1, 1.25, 1.5}, pad to
  ``crop_size`` (image 0, mask 255), random crop ``crop_size``, flip.
- ``eval`` and every stage with ``train=False``: normalisation only (original size).
- ``infer``: normalisation, then a squash to ``crop_size`` x ``crop_size`` when ``crop_size`` is given.

Targets: ``image`` and ``mask`` (class ids: nearest, padded with 255) everywhere; ``maps`` in ``refine``.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

from wsss.data.palette import IGNORE_INDEX

STAGES = ("cls", "refine", "seg", "eval", "infer")
JITTER = (0.3, 0.3, 0.3, 0.1)
"""Colour jitter (brightness, contrast, saturation, hue) of the authors' release."""
SEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
"""Random scales of the DeepLab training (SPEC.md)."""


def _jitter(jitter: Sequence[float] | None) -> list[A.BasicTransform]:
    if not jitter:
        return []
    if len(jitter) != 4 or min(jitter) < 0:
        raise ValueError(
            f"data.color_jitter={list(jitter)}: give four non-negative values [brightness, contrast, "
            "saturation, hue] (release: [0.3, 0.3, 0.3, 0.1]) or null for none"
        )
    b, c, s, h = (float(v) for v in jitter)
    return [A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=1.0)]


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


def build_transforms(
    stage: str,
    crop_size: int | None,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    squash_size: int | None = None,
    seg_scales: Sequence[float] = SEG_SCALES,
    color_jitter: Sequence[float] | None = JITTER,
) -> A.Compose:
    """The albumentations pipeline of ``stage`` (see module doc).

    Args:
        stage: cls, refine, seg, eval or infer.
        crop_size: training crop side; for ``infer`` the square side to squash to (None: original size).
        train: augment (True) or only normalise (False; ``infer`` still squashes).
        mean, std: per-channel normalisation in [0, 1] units (ImageNet).
        squash_size: cls/refine training: square side to squash to before the crop; None: no squash.
        seg_scales: the random scales of ``seg`` training.
        color_jitter: cls/refine training: (brightness, contrast, saturation, hue); None: no jitter.
    """
    if stage not in STAGES:
        raise ValueError(f"transforms stage={stage!r}; choose one of {', '.join(STAGES)}")
    targets = {"maps": "mask"} if stage == "refine" else {}
    normalize = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    steps: list[A.BasicTransform]
    if stage == "infer":
        steps = [normalize]
        if crop_size is not None:
            steps.append(A.Resize(int(crop_size), int(crop_size), interpolation=cv2.INTER_LINEAR))
    elif not train or stage == "eval":
        steps = [normalize]
    else:
        if crop_size is None or int(crop_size) <= 0:
            raise ValueError(f"{stage} training needs a positive crop_size, got {crop_size}")
        crop = int(crop_size)
        if stage == "seg":
            steps = [normalize, random_scale(seg_scales), *_pad_crop_flip(crop, IGNORE_INDEX)]
        else:
            # refine: the only mask-like target is the maps, padded with 0 and resized bilinearly.
            fill_mask = 0 if stage == "refine" else IGNORE_INDEX
            mask_interp = cv2.INTER_LINEAR if stage == "refine" else cv2.INTER_NEAREST
            steps = []
            if squash_size:
                side = int(squash_size)
                steps.append(
                    A.Resize(side, side, interpolation=cv2.INTER_LINEAR, mask_interpolation=mask_interp)
                )
            steps += [*_jitter(color_jitter), normalize, *_pad_crop_flip(crop, fill_mask)]
    return A.Compose(steps, additional_targets=targets)
