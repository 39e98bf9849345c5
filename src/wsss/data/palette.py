"""VOC class names, the VOC colour palette, and index-PNG reading/writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from wsss.artifacts import atomic_path

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 foreground classes in VOC order (class id = index + 1; 0 is background)."""

IGNORE_INDEX = 255


def voc_palette() -> np.ndarray:
    """The standard VOC colour map as a (256, 3) uint8 array (bit-interleaved label colours)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        r = g = b = 0
        code = label
        for shift in range(7, -1, -1):
            r |= ((code >> 0) & 1) << shift
            g |= ((code >> 1) & 1) << shift
            b |= ((code >> 2) & 1) << shift
            code >>= 3
        palette[label] = (r, g, b)
    return palette


def read_mask(path: str | Path) -> np.ndarray:
    """Read an index PNG (palette or grayscale) as a (H, W) uint8 array of class ids."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: mask PNG has mode {img.mode!r}; expected an index PNG (mode 'P' or 'L') "
                "holding class ids 0..20 and 255."
            )
        return np.array(img, dtype=np.uint8)


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a (H, W) class-id array as a VOC-palette PNG, atomically (temp name, then rename)."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().flatten().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def colorize(mask: np.ndarray) -> np.ndarray:
    """Map a (H, W) class-id array to an RGB (H, W, 3) uint8 image with the VOC palette."""
    return voc_palette()[np.asarray(mask, dtype=np.uint8)]
