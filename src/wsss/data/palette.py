"""The VOC colour palette and index-PNG reading/writing (masks, pseudo labels, predictions).

``read_index_png`` is the one reader of class-id PNGs in wsss: it accepts palette (``P``) and
grayscale (``L``) PNGs and raises a named error for anything else or for a file that cannot be decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.constants import IGNORE_INDEX, VOC_CLASSES
from wsss.errors import CorruptImageError, MaskValueError
from wsss.pipeline.artifacts import atomic_path

__all__ = ["IGNORE_INDEX", "VOC_CLASSES", "colorize", "read_index_png", "save_mask", "voc_palette"]


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


def read_index_png(path: str | Path) -> np.ndarray:
    """An index PNG (palette or grayscale) as a (H, W) uint8 array of class ids."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise MaskValueError(
                    f"{path}: PNG mode {img.mode!r}; expected an index PNG (mode P or L) of class ids "
                    "0..20 and 255 - convert it (colour masks: map the VOC palette colours to ids)"
                )
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(
            f"{path}: cannot be decoded ({err}); re-extract or regenerate this file"
        ) from err


def save_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a (H, W) class-id array as a VOC-palette PNG, atomically (temp name, then rename)."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().flatten().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def colorize(mask: np.ndarray) -> np.ndarray:
    """Map a (H, W) class-id array to an RGB (H, W, 3) uint8 image with the VOC palette."""
    return voc_palette()[np.asarray(mask, dtype=np.uint8)]
