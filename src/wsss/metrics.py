"""Segmentation and multi-label scores computed from a confusion matrix.

mIoU follows the VOC convention: a (C, C) confusion matrix (rows = ground truth, columns =
prediction) accumulated over a whole split from pixels whose ground truth is a valid class
(255 ignored); IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the
prediction of the whole split has an undefined IoU (0/0) and is left out of the mean, as are its
precision and recall.
"""

from __future__ import annotations

import numpy as np
import torch

from wsss.data.palette import IGNORE_INDEX, VOC_CLASSES

SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = 21) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; pixels with gt outside 0..C-1 (e.g. 255) are ignored.

    Predicted values outside 0..C-1 (e.g. an ignore label in a pseudo label) are ignored too.
    """
    pred = np.asarray(pred, dtype=np.int64).ravel()
    gt = np.asarray(gt, dtype=np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels but ground truth has {gt.size}")
    keep = (gt >= 0) & (gt < num_classes) & (pred >= 0) & (pred < num_classes)
    flat = gt[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray | torch.Tensor, class_names: tuple[str, ...] = SEG_CLASSES) -> dict:
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
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "precision": float(np.nanmean(precision)) if np.isfinite(precision).any() else float("nan"),
        "recall": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": {name: float(v) for name, v in zip(class_names, iou, strict=False)},
    }


class ConfusionAccumulator:
    """Accumulate a confusion matrix over many (prediction, ground truth) pairs."""

    def __init__(self, num_classes: int = 21) -> None:
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.cm += confusion_matrix(pred, gt, self.num_classes)

    def compute(self) -> dict:
        return scores_from_confusion(self.cm)


def ignore_ratio(label: np.ndarray) -> float:
    """Fraction of pixels of a (pseudo) label that carry the ignore index."""
    label = np.asarray(label)
    return float((label == IGNORE_INDEX).mean()) if label.size else 0.0


def exact_match_accuracy(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Share of samples whose whole multi-hot label is predicted exactly at ``sigmoid >= threshold``."""
    pred = torch.sigmoid(logits) >= threshold
    return (pred == targets.bool()).all(dim=1).float().mean()
