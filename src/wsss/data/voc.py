"""PASCAL VOC 2012 (and its SBD train_aug extension) in the official on-disk layout.

``VOCDataset(root, split)`` reads ``<root>/VOCdevkit/VOC2012`` (or ``root`` itself when it is that
folder): images from ``JPEGImages/<id>.jpg``, the ids of a split from
``ImageSets/Segmentation/<split>.txt``, masks from ``SegmentationClassAug/<id>.png`` when present,
else ``SegmentationClass/<id>.png`` (index PNGs: 0 background, 1..20 classes, 255 ignore), and
saliency maps from ``<saliency_dir>/<id>.png`` (8-bit grayscale).

Image-level labels are the classes 1..20 present in each mask, as a 20-dim multi-hot vector (class
``c`` at index ``c - 1``); ids listed in a ``labels_file`` (``<id> <0-based class indices>`` per line,
the authors' format) take their labels from it instead. Labels are derived once per dataset object
and optionally cached as ``.npz`` in a ``cache_dir``; nothing is ever written into the data folder.

Another dataset in this layout (``python -m wsss.data.folder``, ``python -m wsss.data.coco``) names its
classes in ``classes.txt`` beside ``JPEGImages`` (one name per line, background not listed): its labels,
masks and scores then have that many classes. Without the file the classes are VOC's 20.

Layout problems raise a ``DatasetLayoutError`` subclass whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.constants import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES
from wsss.data.palette import read_index_png
from wsss.errors import (
    CorruptImageError,
    DatasetLayoutError,
    MaskSizeError,
    MaskValueError,
    MissingFolderError,
    MissingImageError,
    MissingLabelsError,
    MissingListError,
    MissingRootError,
    MissingSaliencyError,
)
from wsss.pipeline.artifacts import save_npz

__all__ = [
    "DatasetLayoutError",
    "NUM_CLASSES",
    "VOCDataset",
    "check_mask",
    "index_png_problem",
    "label_from_mask",
    "pending_labels",
    "read_index_png",
    "read_labels_file",
    "read_saliency",
    "read_split",
    "resolve_voc_root",
]
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
"""Mask folders in order of preference."""
LIST_DIR = Path("ImageSets") / "Segmentation"
CLASSES_FILE = "classes.txt"
"""The dataset's foreground class names, one per line, beside ``JPEGImages`` (absent: VOC's)."""


def resolve_voc_root(root: str | Path) -> Path:
    """The ``VOC2012`` folder of ``root``: ``root/VOCdevkit/VOC2012``, ``root/VOC2012`` or ``root`` itself."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingRootError(
            f"data.root={str(root)!r} does not exist. Set data.root to the folder holding VOCdevkit/VOC2012 "
            "(or to that VOC2012 folder itself), or use data=toy for the generated toy dataset."
        )
    for candidate in (base / "VOCdevkit" / "VOC2012", base / "VOC2012", base):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise MissingFolderError(
        f"data.root={str(root)!r} holds no VOC2012 layout: expected {base}/VOCdevkit/VOC2012/JPEGImages "
        f"(or {base}/JPEGImages). Extract VOCtrainval_11-May-2012.tar there, or point data.root at the "
        "folder that holds VOCdevkit/."
    )


def read_split(voc: Path, split: str) -> list[str]:
    """Ids of ``ImageSets/Segmentation/<split>.txt`` (first token per line; path-style lines allowed)."""
    path = voc / LIST_DIR / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in (voc / LIST_DIR).glob("*.txt"))
        hint = (
            " Build it from SBD with: python -m wsss.data.sbd --sbd <benchmark_RELEASE> --voc " + str(voc)
            if split == "train_aug"
            else ""
        )
        raise MissingListError(
            f"split {split!r}: list file {path} not found (lists there: {found or 'none'}).{hint}"
        )
    ids = [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise MissingListError(
            f"split {split!r}: list file {path} is empty; it should name one image id per line"
        )
    return ids


def read_class_names(voc: Path) -> tuple[str, ...]:
    """The foreground class names of the dataset folder ``voc`` (``classes.txt``; VOC's without one)."""
    path = voc / CLASSES_FILE
    if not path.is_file():
        return VOC_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names or len(set(names)) != len(names) or len(names) > 254:
        raise MissingLabelsError(
            f"{path}: give 1..254 distinct class names, one per line (background not listed); got {len(names)}"
        )
    return names


def read_labels_file(path: str | Path, num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Parse ``<id> <0-based class indices>`` lines into id -> float32 (num_classes,) multi-hot."""
    path = Path(path)
    if not path.is_file():
        raise MissingLabelsError(
            f"data.labels_file={str(path)!r} does not exist; give a file of '<id> <0-based class ids>' lines "
            "or null to derive labels from the masks"
        )
    labels: dict[str, np.ndarray] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            classes = [int(p) for p in parts[1:]]
        except ValueError as err:
            raise MissingLabelsError(
                f"{path}:{n}: expected '<id> <0-based class ids>', got {line!r}"
            ) from err
        if any(not 0 <= c < num_classes for c in classes):
            raise MissingLabelsError(f"{path}:{n}: class ids must be 0..{num_classes - 1}, got {classes}")
        vec = np.zeros(num_classes, dtype=np.float32)
        vec[classes] = 1.0
        labels[Path(parts[0]).stem] = vec
    return labels


def label_from_mask(mask: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Multi-hot (num_classes,) of the classes 1..num_classes present in ``mask`` (0 and 255 excluded)."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)
    return (counts[1 : num_classes + 1] > 0).astype(np.float32)


def check_mask(
    mask: np.ndarray, path: Path, image_size: tuple[int, int] | None, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Raise MaskSizeError / MaskValueError unless ``mask`` has ``image_size`` (H, W) and values
    0..num_classes, 255."""
    if image_size is not None and mask.shape != tuple(image_size):
        raise MaskSizeError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
            f"{image_size[1]}x{image_size[0]}; masks must match their JPEG pixel for pixel - "
            "regenerate this mask (python -m wsss.data.sbd for SegmentationClassAug) or remove it"
        )
    bad = np.unique(mask[(mask > num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise MaskValueError(
            f"{path}: mask holds values {bad[:10].tolist()} outside 0..{num_classes} and {IGNORE_INDEX}; "
            "masks must be index PNGs of class ids (an RGB-coloured mask saved as grayscale gives this) - "
            "convert it to class ids with the VOC palette"
        )
    return mask


def index_png_problem(path: str | Path, image_size: tuple[int, int]) -> str | None:
    """Why a written class-id PNG (pseudo label, prediction) cannot be kept, or None when it can: it must
    decode, be an index PNG of ``image_size`` (H, W) and hold only 0..20 and 255."""
    try:
        check_mask(read_index_png(path), Path(path), image_size)
    except DatasetLayoutError as err:
        return str(err)
    return None


def pending_labels(folder: str | Path, dataset: VOCDataset, overwrite: bool = False) -> list[int]:
    """Indices of ``dataset`` whose ``<folder>/<id>.png`` is missing or cannot be kept (checked with
    ``index_png_problem`` against the image's size: a damaged file is made again, with a warning)."""
    import logging

    folder = Path(folder)
    todo = []
    for k, image_id in enumerate(dataset.ids):
        path = folder / f"{image_id}.png"
        if overwrite or not path.is_file():
            todo.append(k)
            continue
        problem = index_png_problem(path, dataset.image_size(k))
        if problem:
            logging.getLogger(__name__).warning("%s; making it again", problem)
            todo.append(k)
    return todo


def read_saliency(path: str | Path) -> np.ndarray:
    """A saliency PNG as (H, W) uint8 0..255 (colour PNGs are converted to grayscale)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(
            f"{path}: saliency map cannot be decoded ({err}); recompute it with your saliency detector"
        ) from err


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptImageError(
            f"{path}: cannot be decoded as an image ({err}); the file is corrupt or truncated - "
            "re-extract it from the VOC archive"
        ) from err


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix)}


def preview_ids(items: Sequence[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return f"{head}, ... ({len(items)} in all)" if len(items) > n else head


class VOCDataset:
    """One split of VOC2012: ids, images, masks, saliency maps and image-level labels.

    Args:
        root: the folder holding ``VOCdevkit/VOC2012``, or that ``VOC2012`` folder itself.
        split: a list name in ``ImageSets/Segmentation`` (train, val, test, train_aug, ...).
        saliency_dir: folder of ``<id>.png`` grayscale saliency maps (None: no saliency).
        require_masks: fail now unless every image of the split has a mask.
        require_saliency: fail now unless every image has a saliency map.
        labels_file: optional ``<id> <0-based class ids>`` list; its ids take their labels from it.
        cache_dir: optional folder (outside the data) for the derived labels of this split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        saliency_dir: str | Path | None = None,
        require_masks: bool = False,
        require_saliency: bool = False,
        labels_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.root = resolve_voc_root(root)
        self.split = str(split)
        self.ids: list[str] = read_split(self.root, self.split)
        self.class_names = read_class_names(self.root)
        self.num_classes = len(self.class_names)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.labels_file = Path(labels_file) if labels_file else None
        self._file_labels = read_labels_file(self.labels_file, self.num_classes) if self.labels_file else {}
        self._labels: np.ndarray | None = None

        image_dir = self.root / "JPEGImages"
        missing = [i for i in self.ids if i not in _stems(image_dir, ".jpg")]
        if missing:
            raise MissingImageError(
                f"split {self.split!r}: {len(missing)} of {len(self.ids)} images listed in "
                f"{self.root / LIST_DIR / (self.split + '.txt')} are not in {image_dir}: {preview_ids(missing)}. "
                "Extract the missing images (the VOC2012 test images come in their own archive) or fix the list."
            )

        self._mask_paths: list[Path | None] = [None] * len(self.ids)
        for folder in reversed(MASK_DIRS):  # the preferred folder is applied last and wins
            stems = _stems(self.root / folder, ".png")
            for k, image_id in enumerate(self.ids):
                if image_id in stems:
                    self._mask_paths[k] = self.root / folder / f"{image_id}.png"
        self.has_masks = all(p is not None for p in self._mask_paths)
        if require_masks and not self.has_masks:
            no_mask = [i for i, p in zip(self.ids, self._mask_paths, strict=True) if p is None]
            folders = " or ".join(str(self.root / f) for f in MASK_DIRS)
            if not any((self.root / f).is_dir() for f in MASK_DIRS):
                raise MissingFolderError(
                    f"split {self.split!r} needs masks but neither {folders} exists. Extract VOC2012 "
                    "SegmentationClass, or build SegmentationClassAug with python -m wsss.data.sbd."
                )
            raise MissingImageError(
                f"split {self.split!r} needs masks but {len(no_mask)} images have none in {folders}: "
                f"{preview_ids(no_mask)}. Build SegmentationClassAug with python -m wsss.data.sbd, or use a split "
                "with ground truth."
            )

        self.saliency_dir = None if saliency_dir is None else Path(saliency_dir).expanduser()
        if require_saliency:
            if self.saliency_dir is None:
                raise MissingSaliencyError(
                    "saliency maps are required but data.saliency_dir is null; set it to a folder of "
                    "<id>.png grayscale maps (e.g. PoolNet outputs)"
                )
            if not self.saliency_dir.is_dir():
                raise MissingFolderError(
                    f"data.saliency_dir={str(self.saliency_dir)!r} does not exist; point it at the folder of "
                    "<id>.png saliency maps"
                )
            have = _stems(self.saliency_dir, ".png")
            lacking = [i for i in self.ids if i not in have]
            if lacking:
                raise MissingSaliencyError(
                    f"split {self.split!r}: {len(lacking)} images have no saliency map in {self.saliency_dir}: "
                    f"{preview_ids(lacking)}. Compute them with your saliency detector (one <id>.png each)."
                )

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"VOCDataset({str(self.root)!r}, split={self.split!r}, n={len(self)}, masks={self.has_masks})"

    def image_path(self, i: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[i]}.jpg"

    def mask_path(self, i: int) -> Path | None:
        return self._mask_paths[i]

    def saliency_path(self, i: int) -> Path:
        if self.saliency_dir is None:
            raise MissingSaliencyError(
                "saliency asked for but data.saliency_dir is null; set it to a folder of <id>.png maps"
            )
        return self.saliency_dir / f"{self.ids[i]}.png"

    def image(self, i: int) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        path = self.image_path(i)
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise CorruptImageError(
                f"{path}: cannot be decoded as an image ({err}); the file is corrupt or truncated - "
                "re-extract it from the VOC archive"
            ) from err

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` from its header."""
        return _image_size(self.image_path(i))

    def mask(self, i: int) -> np.ndarray | None:
        """Class ids uint8 (H, W) (0..num_classes, 255 ignore), or None when the image has no mask."""
        path = self._mask_paths[i]
        if path is None:
            return None
        return check_mask(read_index_png(path), path, self.image_size(i), self.num_classes)

    def saliency(self, i: int) -> np.ndarray:
        """Saliency uint8 (H, W), 0 = background, 255 = salient."""
        path = self.saliency_path(i)
        if not path.is_file():
            raise MissingSaliencyError(
                f"{path}: saliency map of image {self.ids[i]!r} is missing; compute it with your saliency "
                "detector or set data.saliency_dir to the folder that holds it"
            )
        sal = read_saliency(path)
        size = self.image_size(i)
        if sal.shape != size:
            raise MaskSizeError(
                f"{path}: saliency map is {sal.shape[1]}x{sal.shape[0]} (WxH) but its image is "
                f"{size[1]}x{size[0]}; saliency maps must have their image's size - recompute it"
            )
        return sal

    def label(self, i: int) -> np.ndarray:
        """float32 (num_classes,) multi-hot image-level label."""
        if self._labels is not None:
            return self._labels[i].copy()
        return self._label_one(i)

    def _label_one(self, i: int) -> np.ndarray:
        image_id = self.ids[i]
        if image_id in self._file_labels:
            return self._file_labels[image_id].copy()
        path = self._mask_paths[i]
        if path is None:
            raise MissingLabelsError(
                f"image {image_id!r} of split {self.split!r} has no mask to derive its label from; pass "
                "data.labels_file=<file of '<id> <0-based class ids>' lines> (e.g. the authors' "
                "train_aug list), or build SegmentationClassAug with python -m wsss.data.sbd"
            )
        mask = check_mask(read_index_png(path), path, self.image_size(i), self.num_classes)
        return label_from_mask(mask, self.num_classes)

    def labels(self, threads: int = 4) -> np.ndarray:
        """All labels as float32 (N, 20): derived once (in threads), then kept in memory and ``cache_dir``."""
        if self._labels is not None:
            return self._labels
        cache = self._cache_path()
        if cache is not None and cache.is_file():
            with np.load(cache) as data:
                if list(data["ids"]) == self.ids:
                    self._labels = data["labels"].astype(np.float32)
                    return self._labels
        with ThreadPoolExecutor(max(1, threads)) as pool:
            rows = list(pool.map(self._label_one, range(len(self.ids))))
        labels = np.stack(rows) if rows else np.zeros((0, self.num_classes), np.float32)
        if cache is not None:
            save_npz(cache, ids=np.array(self.ids), labels=labels.astype(np.uint8))
        self._labels = labels
        return labels

    def _cache_path(self) -> Path | None:
        """A cache file keyed by the dataset folder, split, labels file and the mask folders' mtimes."""
        if self.cache_dir is None:
            return None
        key = [str(self.root.resolve()), self.split]
        if (self.root / CLASSES_FILE).is_file():
            key.append(f"classes:{self.num_classes}")
        if self.labels_file is not None:
            key.append(f"{self.labels_file.resolve()}:{self.labels_file.stat().st_mtime_ns}")
        for folder in MASK_DIRS:
            if (self.root / folder).is_dir():
                key.append(f"{folder}:{(self.root / folder).stat().st_mtime_ns}")
        digest = hashlib.sha1("|".join(key).encode()).hexdigest()[:16]
        return self.cache_dir / f"labels-{self.split}-{digest}.npz"
