"""The on-disk format of localization maps: one compressed .npz per image.

Keys: ``classes`` (int16, 0-based foreground class indices present in the image label) and
``maps`` ((K, H, W), uint8 scaled by 255 or float16 in [0, 1]); only present classes are stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.artifacts import save_npz

MAP_DTYPES = ("uint8", "float16")


def save_maps(path: str | Path, classes: np.ndarray, maps: np.ndarray, dtype: str = "uint8") -> None:
    """Store maps in [0, 1] for the given classes, atomically."""
    if dtype not in MAP_DTYPES:
        raise ValueError(f"maps dtype must be one of {MAP_DTYPES}, got {dtype!r}")
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)
    classes = np.asarray(classes, dtype=np.int16).reshape(-1)
    if maps.ndim != 3 or maps.shape[0] != classes.size:
        raise ValueError(f"expected maps of shape (K={classes.size}, H, W), got {maps.shape}")
    stored = np.round(maps * 255).astype(np.uint8) if dtype == "uint8" else maps.astype(np.float16)
    save_npz(path, classes=classes, maps=stored)


def load_maps(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (classes, maps) with maps as float32 in [0, 1]."""
    try:
        with np.load(path) as data:
            classes = data["classes"].astype(np.int64)
            maps = data["maps"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a readable maps file ({err}); delete it and rerun stage=maps") from err
    maps = maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)
    return classes, maps


def dense_maps(classes: np.ndarray, maps: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """Expand stored maps to (num_classes, H, W), zeros for absent classes."""
    out = np.zeros((num_classes, *maps.shape[1:]), dtype=np.float32)
    out[np.asarray(classes, dtype=np.int64)] = maps
    return out
