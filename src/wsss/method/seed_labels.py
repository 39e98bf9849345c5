"""Seed evaluation: how well localization maps alone segment images, over a background-threshold sweep.

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

from wsss.constants import NUM_CLASSES
from wsss.errors import ConfigError
from wsss.method.localization import resize_maps
from wsss.method.metrics import confusion_counts, scores_from_confusion
from wsss.pipeline.artifacts import write_per_class_iou

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(20))
"""0, 0.05, ..., 0.95: maps are in [0, 1]; compact maps (CAM) can peak at 0 (object = where any map is
positive), maps that spread (DRS) late (0.6-0.95)."""


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
        if maps.shape[0]:
            top = maps.max(axis=0)
            top_class = (np.asarray(classes, dtype=np.int64) + 1).astype(np.uint8)[maps.argmax(axis=0)]
        else:
            top = np.zeros(gt.shape, np.float32)
            top_class = np.zeros(gt.shape, np.uint8)
        background = np.uint8(0)
        for k, t in enumerate(self.thresholds):
            labels = np.where(top > t, top_class, background)
            self.cms[k] += confusion_counts(labels, gt, self.num_classes).numpy()
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
