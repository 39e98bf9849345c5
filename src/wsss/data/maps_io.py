"""The on-disk format of localization maps: one compressed .npz per image.

Keys: ``classes`` (int16, 0-based foreground class indices present in the image label) and ``maps``
((K, H, W): uint8 = value x 255, rounded or truncated; or float16 / float32 as computed). Only present
classes are stored. uint8 needs maps in [0, 1] (normalised maps); raw maps (the release's refined maps,
which can be negative or above 1) are stored as float.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from wsss.artifacts import save_npz
from wsss.errors import CorruptArtifactError

MAP_DTYPES = ("uint8", "float16", "float32")
QUANTIZE = ("round", "truncate")


def save_maps(
    path: str | Path, classes: np.ndarray, maps: np.ndarray, dtype: str = "uint8", quantize: str = "round"
) -> None:
    """Store the maps of the given classes, atomically (uint8: clipped to [0, 1], then x255)."""
    if dtype not in MAP_DTYPES:
        raise ValueError(f"maps dtype must be one of {MAP_DTYPES}, got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"maps quantize must be one of {QUANTIZE}, got {quantize!r}")
    maps = np.asarray(maps, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int16).reshape(-1)
    if maps.ndim != 3 or maps.shape[0] != classes.size:
        raise ValueError(f"expected maps of shape (K={classes.size}, H, W), got {maps.shape}")
    if dtype == "uint8":
        scaled = np.clip(maps, 0.0, 1.0) * 255
        stored = (np.round(scaled) if quantize == "round" else scaled).astype(np.uint8)
    else:
        stored = maps.astype(dtype)
    save_npz(path, classes=classes, maps=stored)


def load_maps(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (classes, maps) with maps as float32 (uint8 files divided by 255)."""
    try:
        with np.load(path) as data:
            classes = data["classes"].astype(np.int64)
            maps = data["maps"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CorruptArtifactError(
            f"{path}: not a readable maps file ({type(err).__name__}: {err}); delete it and rerun the maps stage "
            "(finished files are kept, only the missing ones are made)"
        ) from err
    if maps.ndim != 3 or maps.shape[0] != classes.size:
        raise CorruptArtifactError(
            f"{path}: maps of shape {maps.shape} for {classes.size} classes; delete it and rerun the maps stage"
        )
    maps = maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)
    return classes, maps


def dense_maps(classes: np.ndarray, maps: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """Expand stored maps to (num_classes, H, W), zeros for absent classes."""
    out = np.zeros((num_classes, *maps.shape[1:]), dtype=np.float32)
    out[np.asarray(classes, dtype=np.int64)] = maps
    return out
