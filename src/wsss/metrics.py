"""The one segmentation scorer of wsss, and the multi-label exact-match accuracy.

Every stage that scores a segmentation (seed maps, pseudo labels, the segmenter's validation, eval,
predict, the classifier's validation map mIoU) counts pixels with ``confusion_counts`` and scores them
with ``scores_from_confusion``; ``ConfusionMatrix`` accumulates the counts over a split (a torchmetrics
``Metric``, so DDP ranks are summed).

The counting rule: a (C, C) matrix, rows = ground truth, columns = prediction, from the pixels whose
ground truth AND prediction are both a class 0..C-1. A ground-truth 255 (VOC boundary) is not scored;
a predicted 255 (an ignored pseudo-label pixel) is not scored either. (A stage that wants to count an
ignored prediction as background, as the WSSS convention does for pseudo labels, maps it to 0 first.)
mIoU follows VOC: IoU_c = TP / (TP + FP + FN) over the whole split; a class absent from both the truth
and the prediction has an undefined IoU and is left out of the mean, as are its precision and recall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from wsss.constants import SEG_CLASSES

__all__ = [
    "ConfusionMatrix",
    "SEG_CLASSES",
    "confusion_counts",
    "exact_match_accuracy",
    "scores_from_confusion",
]


def _as_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.reshape(-1).long()
    return torch.from_numpy(np.ascontiguousarray(values).reshape(-1).astype(np.int64, copy=False))


def _both_uint8_arrays(pred: object, gt: object) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a in (pred, gt))


def _uint8_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> torch.Tensor:
    """``confusion_counts`` of label images (masks, PNG labels): values that are not classes (255,
    21..254) go to one extra row/column by table look-up, dropped after a single bincount."""
    if pred.size != gt.size:
        raise ValueError(f"prediction has {pred.size} pixels but ground truth has {gt.size}")
    n = num_classes + 1
    lookup = np.full(256, num_classes, dtype=np.uint16)
    lookup[:num_classes] = np.arange(num_classes, dtype=np.uint16)
    cell = lookup[gt.reshape(-1)] * np.uint16(n) + lookup[pred.reshape(-1)]
    counts = np.bincount(cell, minlength=n * n).reshape(n, n)[:num_classes, :num_classes]
    return torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64))


def confusion_counts(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, num_classes: int = 21
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of the pixels whose truth and prediction are both classes."""
    if _both_uint8_arrays(pred, gt) and num_classes < 256:
        return _uint8_counts(pred, gt, num_classes)
    p, g = _as_tensor(pred), _as_tensor(gt)
    if p.numel() != g.numel():
        raise ValueError(f"prediction has {p.numel()} pixels but ground truth has {g.numel()}")
    keep = (g >= 0) & (g < num_classes) & (p >= 0) & (p < num_classes)
    flat = g[keep] * num_classes + p[keep]
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(
    cm: np.ndarray | torch.Tensor, class_names: tuple[str, ...] = SEG_CLASSES
) -> dict[str, Any]:
    """mIoU, mean precision, mean recall, pixel accuracy and per-class IoU from a confusion matrix."""
    cm = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt_total = cm.sum(axis=1)
    pred_total = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_total + pred_total - tp)
        precision = tp / pred_total
        recall = tp / gt_total

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    total = cm.sum()
    return {
        "miou": mean(iou),
        "precision": mean(precision),
        "recall": mean(recall),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, iou, strict=False)},
    }


class ConfusionMatrix(Metric):
    """Confusion counts accumulated over a split (numpy or torch inputs; summed over DDP ranks)."""

    full_state_update = False

    def __init__(self, num_classes: int = 21, class_names: tuple[str, ...] = SEG_CLASSES) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.class_names = class_names[: self.num_classes]
        self.add_state("counts", torch.zeros(self.num_classes, self.num_classes, dtype=torch.long), "sum")

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        if tuple(np.shape(pred)) != tuple(np.shape(gt)):
            raise ValueError(
                f"prediction {tuple(np.shape(pred))} and ground truth {tuple(np.shape(gt))} differ"
            )
        self.counts += confusion_counts(pred, gt, self.num_classes).to(self.counts.device)

    def compute(self) -> dict[str, Any]:
        return scores_from_confusion(self.counts, self.class_names)


def exact_match_accuracy(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Share of samples whose whole multi-hot label is predicted exactly at ``sigmoid >= threshold``."""
    pred = torch.sigmoid(logits) >= threshold
    return (pred == targets.bool()).all(dim=1).float().mean()


PER_CLASS_CSV = "per_class_iou.csv"
"""The per-class IoU file of a stage that scores segmentations (maps, pseudo, eval): ``class,iou`` rows."""


def write_per_class_iou(path: str | Path, per_class: dict[str, float]) -> None:
    """``class,iou`` rows, written atomically (a class absent from truth and prediction: nan)."""
    from wsss.artifacts import atomic_path

    lines = ["class,iou"] + [f"{name},{iou:.6f}" for name, iou in per_class.items()]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def read_per_class_iou(path: str | Path) -> list[list[Any]]:
    """The ``[class, iou]`` rows of a file ``write_per_class_iou`` wrote."""
    rows = Path(path).read_text().splitlines()[1:]
    return [[name, float(iou)] for name, iou in (row.rsplit(",", 1) for row in rows if row)]
