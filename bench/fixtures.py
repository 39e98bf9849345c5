"""The real VOC files the benchmarks read, and what they send to worker processes.

Imports nothing heavy (no torch): pool workers unpickle functions from here, as the pseudo stage's
workers import only ``wsss.stages.pseudo_rules``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WSSS_SHARED_DATA") or REPO.parent / "shared" / "data")
"""The real VOC fixtures: ``$WSSS_SHARED_DATA``, else the ``shared/data`` folder beside the checkout."""
SAMPLE = SHARED / "voc_sample" / "VOCdevkit" / "VOC2012"
SALIENCY = SAMPLE / "saliency_isnet_imgly"
MASKS_ALL = SHARED / "voc_masks_all" / "SegmentationClassAug"
NUM_CLASSES = 20


def sample_ids() -> list[str]:
    """The ids of the 46 real VOC sample images (``SHARED/voc_sample``)."""
    if not SAMPLE.is_dir():
        raise FileNotFoundError(f"real VOC sample not found at {SAMPLE}; set WSSS_SHARED_DATA=<folder>")
    return sorted(p.stem for p in (SAMPLE / "JPEGImages").glob("*.jpg"))


def mask_classes(mask: np.ndarray) -> np.ndarray:
    """0-based indices (int64) of the classes 1..20 present in a VOC mask."""
    values = np.unique(mask).astype(np.int64)
    return values[(values >= 1) & (values <= NUM_CLASSES)] - 1


def stand_in_maps(mask: np.ndarray, classes: np.ndarray, stride: int = 8) -> np.ndarray:
    """Maps (K, H, W) in [0, 1] shaped like a network's: each present class's ground-truth region,
    area-averaged to ``stride`` and bilinearly upsampled back (smooth blobs, as trained maps are)."""
    import cv2

    h, w = mask.shape
    small = (max(1, w // stride), max(1, h // stride))
    maps = [
        cv2.resize(
            cv2.resize((mask == c + 1).astype(np.float32), small, interpolation=cv2.INTER_AREA), (w, h)
        )
        for c in classes
    ]
    return np.clip(np.stack(maps), 0, 1) if maps else np.zeros((0, h, w), np.float32)


def read_sample(image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8, mask (H, W) uint8 and saliency (H, W) uint8 of one sample image."""
    from PIL import Image

    from wsss.data.palette import read_index_png
    from wsss.data.voc import read_saliency

    rgb = np.array(Image.open(SAMPLE / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    mask = read_index_png(SAMPLE / "SegmentationClassAug" / f"{image_id}.png")
    return rgb, mask, read_saliency(SALIENCY / f"{image_id}.png")


class Ids:
    """What ``wsss.stages.pseudo_rules.label_image`` asks of its dataset without a CRF: ids and sizes."""

    def __init__(self, ids: list[str], sizes: list[tuple[int, int]]) -> None:
        self.ids, self.sizes = ids, sizes

    def image_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]


def noop(index: int) -> int:
    """A task that does nothing: timing a pool of it times the pool's start-up."""
    return index


def crf_sample(image_id: str) -> int:
    """The pseudo stage's CRF on one real image: paper rule scores from stand-in maps and the real
    saliency, then the dense CRF (``make_label`` with ``crf_params``, docs/protocol.md's parameters). Returns the
    labelled pixels."""
    from wsss.method.crf import CRFParams
    from wsss.stages.pseudo_rules import PseudoRule, make_label

    rgb, mask, saliency = read_sample(image_id)
    classes = mask_classes(mask)
    label = make_label(
        PseudoRule(rule="paper"), stand_in_maps(mask, classes), saliency, mask.shape, rgb, CRFParams()
    )
    return int((label != 255).sum())


def spin(index: int, loops: int = 3_000_000) -> int:
    """Pure CPU work (~0.1-0.3 s): timing a pool of it measures how many cores are free right now."""
    total = 0
    for k in range(loops):
        total += k ^ index
    return total
