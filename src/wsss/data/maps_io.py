"""The on-disk format of localization maps: one compressed .npz per image.

Keys: ``classes`` (int16, 0-based foreground class indices present in the image label) and ``maps``
((K, H, W): uint8 = value x 255, rounded or truncated; or float16 / float32 as computed). Only present
classes are stored. uint8 needs maps in [0, 1] (normalised maps); raw maps (the release's refined maps,
which can be negative or above 1) are stored as float.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from wsss.errors import CorruptArtifactError
from wsss.pipeline.artifacts import save_npz

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


def _fix(path: str | Path) -> str:
    return (
        f"remove it (and {Path(path).parent}/.complete if present), then rerun the maps stage: it resumes and "
        "makes only the missing files"
    )


def load_maps(path: str | Path, num_classes: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Return (classes, maps) with maps as float32 (uint8 files divided by 255).

    The file is checked on read: it must decode, hold ``classes`` (distinct ids 0..num_classes-1) and
    ``maps`` (K, H, W) of a stored dtype with finite values; anything else is a ``CorruptArtifactError``
    naming the file and the fix.
    """
    read = _read(path, num_classes)
    if isinstance(read, str):
        raise CorruptArtifactError(
            f"{path}: {read}; remove it (and {Path(path).parent}/.complete if present), then rerun the maps "
            "stage: it resumes and makes only the missing files"
        )
    classes, maps = read
    maps = maps.astype(np.float32) / 255.0 if maps.dtype == np.uint8 else maps.astype(np.float32)
    return classes.astype(np.int64), maps


def maps_file_problem(path: str | Path, num_classes: int = 20) -> str | None:
    """Why an existing maps file cannot be kept (a resumed run remakes it), or None when it is sound."""
    read = _read(path, num_classes)
    return read if isinstance(read, str) else None


def _read(path: str | Path, num_classes: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The stored arrays, or what is wrong with the file."""
    try:
        with np.load(path) as data:
            classes = data["classes"]
            maps = data["maps"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        return f"not a readable maps file ({type(err).__name__}: {err})"
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        return f"classes must be a 1-d integer array, got {classes.dtype} {classes.shape}"
    if maps.ndim != 3 or maps.shape[0] != classes.size or min(maps.shape[1:], default=0) < 1:
        return f"maps of shape {maps.shape} for {classes.size} classes (expected (K={classes.size}, H, W))"
    if maps.dtype.name not in MAP_DTYPES:
        return f"maps stored as {maps.dtype}; wsss writes {', '.join(MAP_DTYPES)}"
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        return f"class ids {classes.tolist()} outside 0..{num_classes - 1}"
    if np.unique(classes).size != classes.size:
        return f"class ids {classes.tolist()} repeat"
    if maps.dtype != np.uint8 and not np.isfinite(maps).all():
        return "maps hold NaN or infinite values (the network that made them diverged?)"
    return classes, maps


def dense_maps(classes: np.ndarray, maps: np.ndarray, num_classes: int = 20) -> np.ndarray:
    """Expand stored maps to (num_classes, H, W), zeros for absent classes."""
    out = np.zeros((num_classes, *maps.shape[1:]), dtype=np.float32)
    out[np.asarray(classes, dtype=np.int64)] = maps
    return out


class MapsFolder:
    """The maps files of one folder by image id: ``folder(id)`` is ``(classes, maps)`` or None."""

    def __init__(self, folder: str | Path, num_classes: int = 20) -> None:
        self.folder = Path(folder)
        self.num_classes = num_classes

    def __call__(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.folder / f"{image_id}.npz"
        return load_maps(path, self.num_classes) if path.is_file() else None

    def __str__(self) -> str:
        return str(self.folder)
