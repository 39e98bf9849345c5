"""Seed labels from localization maps, and how well they segment images over a background-threshold sweep.

The one home of the seed rule: a pixel is background where no map exceeds the threshold t, else the
class of its highest map (``top_of`` + ``seed_label``; ``maps_to_segmentation`` is the same rule on
torch tensors for the classifier's validation mIoU). ``stage=maps`` sweeps t; the pseudo stage's
no-saliency rule (``pseudo.background=fallback``) applies one t.

For a threshold t, a pixel's label is the argmax over [t (background), maps of the present classes],
ties going to background; i.e. the top present class where its map value exceeds t, else background.
One 21x21 confusion matrix per threshold is accumulated over the split (255 ignored), and the
threshold with the best mIoU is reported with that mIoU, mean precision and mean recall. When that
threshold is the highest of the sweep, or its lowest above 0 (``best_threshold_at_edge``), the optimum
may lie outside it: the metrics say so and a warning names the fix (widen ``maps.thresholds``). A best
threshold of 0 is a true optimum (maps are >= 0: no lower threshold labels differently but "all object").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from wsss.constants import NUM_CLASSES
from wsss.errors import ConfigError
from wsss.method.localization import resize_maps
from wsss.method.metrics import confusion_counts, scores_from_confusion
from wsss.pipeline.artifacts import write_per_class_iou

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(20))
"""0, 0.05, ..., 0.95: maps are in [0, 1]; compact maps (CAM) can peak at 0 (object = where any map is
positive), maps that spread (DRS) late (0.6-0.95)."""


def channels_above(maps: np.ndarray, floor: float, inclusive: bool = False) -> np.ndarray:
    """Sorted indices of the channels of ``maps`` (K, H, W) that exceed ``floor`` somewhere (or reach
    it, ``inclusive=True``): the others cannot win a maximum above it."""
    peak = maps.reshape(maps.shape[0], -1).max(axis=1) if maps.shape[0] else np.zeros(0, np.float32)
    return np.flatnonzero(peak >= floor if inclusive else peak > floor)


def top_of(
    maps: np.ndarray, class_ids: np.ndarray, floor: float = float("-inf")
) -> tuple[np.ndarray, np.ndarray]:
    """Highest map value per pixel of ``maps`` (K, H, W) and the class id (uint8, ``class_ids[k]``) of
    its channel; the first channel wins ties. Exact wherever the highest value exceeds ``floor``:
    channels that never exceed it are skipped (they cannot win there), which saves most of the work on
    dense 20-class maps."""
    keep = channels_above(maps, floor)
    if keep.size == 0:
        return np.zeros(maps.shape[1:], np.float32), np.zeros(maps.shape[1:], np.uint8)
    sub = maps[keep]
    ids = np.asarray(class_ids, dtype=np.int64)[keep]
    return sub.max(axis=0), ids.astype(np.uint8)[sub.argmax(axis=0)]


def seed_label(top: np.ndarray, top_class: np.ndarray, threshold: float) -> np.ndarray:
    """The seed label (uint8): background (0) where ``top <= threshold``, else ``top_class``."""
    return np.where(top > threshold, top_class, np.uint8(0)).astype(np.uint8)


def maps_to_segmentation(
    maps: torch.Tensor, threshold: float, saliency: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, H, W) labels 0..C from (B, C, H, W) maps; background score = threshold or 1 - saliency.

    Ties go to background. With saliency (B, H, W) in [0, 1], maps below ``threshold`` are zeroed first.
    """
    if saliency is None:
        background = torch.full_like(maps[:, :1], float(threshold))
    else:
        maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
        background = (1.0 - saliency.float())[:, None]
    return torch.cat([background, maps], dim=1).argmax(dim=1)


class SeedSweep:
    """Accumulates one confusion matrix per background threshold."""

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, num_classes: int = 21) -> None:
        if not thresholds:
            raise ConfigError("maps.thresholds is empty; give e.g. [0.0, 0.05, ..., 0.95]")
        self.thresholds = [float(t) for t in thresholds]
        self.num_classes = num_classes
        self.cms = np.zeros((len(self.thresholds), num_classes, num_classes), dtype=np.int64)
        self.images = 0

    def update(self, classes: np.ndarray, maps: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: present classes (0-based), their maps (K, h, w) and its mask (H, W)."""
        gt = np.asarray(gt)
        maps = resize_maps(np.asarray(maps, dtype=np.float32), gt.shape)
        top, top_class = top_of(maps, np.asarray(classes, dtype=np.int64) + 1)
        if not maps.shape[0]:
            top, top_class = np.zeros(gt.shape, np.float32), np.zeros(gt.shape, np.uint8)
        for k, t in enumerate(self.thresholds):
            self.cms[k] += confusion_counts(seed_label(top, top_class, t), gt, self.num_classes).numpy()
        self.images += 1

    def curve(self) -> list[dict[str, float]]:
        """Per threshold: threshold, miou, precision, recall."""
        rows = []
        for t, cm in zip(self.thresholds, self.cms, strict=True):
            s = scores_from_confusion(cm)
            rows.append(
                {"threshold": t, "miou": s["miou"], "precision": s["precision"], "recall": s["recall"]}
            )
        return rows

    def per_class_iou(self) -> dict[str, float]:
        """Per-class IoU at the best threshold (``compute``'s)."""
        best = self.thresholds.index(float(self.compute()["best_threshold"]))
        return scores_from_confusion(self.cms[best])["per_class_iou"]

    def compute(self) -> dict[str, float | bool]:
        """The best threshold (highest mIoU; the lowest such threshold on ties) and its scores.

        ``best_threshold_at_edge`` is true when it is the highest threshold of the sweep or its lowest
        (unless that is 0, below which nothing is left to search): the true optimum may then lie outside
        the swept range. A single positive threshold searched nothing, and is flagged.
        """
        if self.images == 0:
            raise ConfigError("no image was scored; the seed evaluation needs maps for images with masks")
        rows = self.curve()
        best = max(range(len(rows)), key=lambda k: (np.nan_to_num(rows[k]["miou"], nan=-1.0), -k))
        t = rows[best]["threshold"]
        return {
            "best_threshold": t,
            "best_threshold_at_edge": t == max(self.thresholds) or 0 < t == min(self.thresholds),
            "miou": rows[best]["miou"],
            "precision": rows[best]["precision"],
            "recall": rows[best]["recall"],
            "seed_images": self.images,
        }


def evaluate_seeds(
    read_maps: Callable[[str], tuple[np.ndarray, np.ndarray] | None],
    ids: Sequence[str],
    mask: Callable[[int], np.ndarray | None],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    num_classes: int = NUM_CLASSES,
    per_class_csv: str | Path | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Score the maps ``read_maps(id)`` (None: no maps; ``str(read_maps)`` names where they are, as
    ``wsss.data.maps_io.MapsFolder`` does) against ``mask(i)`` for the ids (index i) that have both.

    ``mask(i)`` returns None for an image without ground truth; such images are skipped. Returns the
    flat metrics (with ``seed_missing``: images with a mask but no maps) and the sweep curve;
    ``per_class_csv``: also write the per-class IoU at the best threshold there.
    """
    where = str(read_maps)
    sweep = SeedSweep(thresholds, num_classes + 1)
    missing = 0
    for i, image_id in enumerate(ids):
        read = read_maps(image_id)
        if read is None:
            missing += 1
            continue
        gt = mask(i)
        if gt is None:
            continue
        sweep.update(*read, gt)
    if sweep.images == 0:
        raise ConfigError(
            f"none of the {len(ids)} evaluation images has both a mask and maps in {where}; "
            "data.eval_split must be a split with masks inside maps.split (VOC: train within train_aug)"
        )
    if missing:
        log.warning(
            "seed evaluation: %d of %d images have no maps in %s and were left out",
            missing,
            len(ids),
            where,
        )
    metrics = sweep.compute()
    if metrics["best_threshold_at_edge"]:
        log.warning(
            "seed evaluation: the best background threshold %.2f is at the edge of the sweep [%.2f, %.2f], "
            "so the optimum may lie outside it; widen maps.thresholds",
            metrics["best_threshold"],
            min(sweep.thresholds),
            max(sweep.thresholds),
        )
    metrics["seed_missing"] = missing
    if per_class_csv is not None:
        write_per_class_iou(per_class_csv, sweep.per_class_iou())
    return metrics, sweep.curve()
