"""``stage=eval``: mIoU of the ``stage=seg`` network over a whole split (VOC val by default).

Every image of ``eval.split`` is segmented at its original size (``eval.scales`` x ``eval.flip``
views, softmax averaged; optional dense CRF with ``cfg.crf`` parameters), and the one scorer
(``wsss.method.metrics.ConfusionMatrix``, ground truth 255 ignored) accumulated over the split gives mIoU,
mean precision, mean recall and pixel accuracy. Writes ``eval/metrics.json``, ``per_class_iou.csv``,
``predictions/<id>.png`` (VOC palette; ``eval.save_predictions``) and the figure
``figures/segmentation.png`` (image | ground truth | prediction); logs a per-class IoU table.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from wsss.data.figures import save_grid
from wsss.data.palette import colorize, save_mask
from wsss.data.toy import ensure_toy
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, MaskSizeError, MissingArtifactError
from wsss.method.crf import CRFParams, require_pydensecrf
from wsss.method.inference import SplitImages, pick_device, segment_images
from wsss.method.metrics import ConfusionMatrix
from wsss.models.checkpoint import load_network
from wsss.pipeline.artifacts import PER_CLASS_CSV, write_per_class_iou
from wsss.pipeline.runner import StageContext
from wsss.tasks.trainer import build_logger, finalize_logger, log_image, log_metrics

log = logging.getLogger(__name__)

STAGE = "eval"


def checkpoint_path(seg_dir: Path) -> Path:
    """``seg/checkpoints/best.ckpt`` (``last.ckpt`` if there is no best) of a finished seg stage."""
    folder = seg_dir / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        if (folder / name).is_file():
            return folder / name
    raise MissingArtifactError(f"{folder} holds no best.ckpt or last.ckpt; rerun stage=seg with force=true")


def crf_settings(cfg: DictConfig, enabled: bool) -> CRFParams | None:
    """CRF parameters from ``cfg.crf`` when enabled (fails now if pydensecrf is missing)."""
    if not enabled:
        return None
    require_pydensecrf()
    return CRFParams.from_config(cfg.crf)


def split_dataset(cfg: DictConfig, split: str, require_masks: bool) -> SplitImages:
    """One split of ``data.root`` (``wsss.data.voc.VOCDataset``); the toy data is generated if absent."""

    ensure_toy(cfg.data)
    return VOCDataset(cfg.data.root, split, require_masks=require_masks)


def inference_settings(cfg: DictConfig, section: DictConfig) -> dict[str, Any]:
    """Keyword arguments of ``segment_images`` from ``cfg.eval`` or ``cfg.predict``."""
    tile = section.get("tile")
    return {
        "device": pick_device(cfg.trainer.get("accelerator")),
        "scales": [float(s) for s in section.scales],
        "flip": bool(section.flip),
        "tile": int(tile) if tile else None,
        "crf": crf_settings(cfg, bool(section.crf)),
        "crf_workers": int(cfg.crf.get("workers", 1)),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, out = ctx.cfg, ctx.out
    ecfg = cfg.eval
    settings = inference_settings(cfg, ecfg)
    checkpoint = checkpoint_path(ctx.input("seg"))
    model = load_network(checkpoint)
    split = str(ecfg.split)
    dataset = split_dataset(cfg, split, require_masks=True)
    pred_dir = out / "predictions"
    save = bool(ecfg.save_predictions)
    shutil.rmtree(pred_dir, ignore_errors=True)  # every prediction is made again; none left from another run
    n_fig = int(ecfg.get("figure_images", 4))
    scorer = ConfusionMatrix(int(cfg.data.seg_classes), getattr(dataset, "class_names", None))
    rows: list[list[np.ndarray]] = []
    log.info("eval on %s (%d images): %s", split, len(dataset.ids), {k: v for k, v in settings.items()})
    for index, label in segment_images(model, dataset, range(len(dataset.ids)), **settings):
        image_id = dataset.ids[index]
        mask = dataset.mask(index)
        if mask is None:
            raise ConfigError(
                f"{image_id} of eval.split={split} has no ground truth; use stage=predict for it"
            )
        if label.shape != mask.shape:
            raise MaskSizeError(
                f"{image_id}: prediction {label.shape} and ground truth {mask.shape} differ in size"
            )
        scorer.update(label, mask)
        if save:
            save_mask(pred_dir / f"{image_id}.png", label)
        if len(rows) < n_fig:
            rows.append([dataset.image(index), colorize(mask), colorize(label)])
    scores = scorer.compute()
    write_per_class_iou(out / PER_CLASS_CSV, scores["per_class_iou"])
    metrics: dict[str, Any] = {k: scores[k] for k in ("miou", "precision", "recall", "pixel_accuracy")}
    metrics |= {
        "images": len(dataset.ids),
        "split": split,
        "scales": ",".join(f"{s:g}" for s in settings["scales"]),
        "flip": settings["flip"],
        "crf": settings["crf"] is not None,
        "checkpoint": checkpoint.name,
    }

    logger = build_logger(cfg, STAGE)
    log_metrics(logger, metrics, prefix=STAGE)
    # the per-class table goes to W&B from per_class_iou.csv with the stage's artifact (wsss.pipeline.wandb_lineage)
    if rows:
        png = save_grid(
            rows,
            ctx.exp.root / "figures" / "segmentation.png",
            titles=["image", "ground truth", "prediction"],
        )
        log_image(logger, f"{STAGE}/figure", png)
    finalize_logger(logger)
    log.info(
        "eval: mIoU %.4f (precision %.4f, recall %.4f) on %d %s images",
        metrics["miou"],
        metrics["precision"],
        metrics["recall"],
        len(dataset.ids),
        split,
    )
    return metrics
