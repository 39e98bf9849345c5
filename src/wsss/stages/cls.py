"""``stage=cls``: train the DRS classifier on image-level labels.

Builds the classifier from ``backbone``/``drs``/``model`` (``model.weights`` continues from a whole
classifier file, else ``backbone.weights`` gives the ImageNet init), trains it with the settings of
``cls`` (conf/settings/cls.yaml) on ``data``'s classification split, validates every epoch and writes
``<exp>/cls/checkpoints/{best,last}.ckpt`` and ``metrics.json``. ``best.ckpt`` is the last epoch,
unless ``cls.select_on_map_miou`` keeps the epoch with the best validation map mIoU (the release's
model selection, which uses ground-truth masks: ``metrics.json`` says so).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig

from wsss.artifacts import Experiment
from wsss.maps import barrier
from wsss.models.classifier import build_classifier
from wsss.tasks.classifier import IMAGENET_MEAN, IMAGENET_STD, ClassifierTask
from wsss.training import build_trainer

log = logging.getLogger(__name__)


def map_miou_settings(ccfg: DictConfig) -> tuple[bool, bool]:
    """(compute val/map_miou, select the checkpoint on it) from ``cls.map_miou`` and ``cls.select_on_map_miou``."""
    select = bool(ccfg.get("select_on_map_miou", False))
    compute = ccfg.get("map_miou")
    compute = select if compute is None else bool(compute)
    if select and not compute:
        raise ValueError("cls.select_on_map_miou=true needs the metric: set cls.map_miou=true (or null)")
    return compute, select


def build_task(cfg: DictConfig) -> ClassifierTask:
    """The classifier (weights from files) wrapped in its LightningModule, per ``cfg.cls``."""
    ccfg = cfg.cls
    compute_miou, _ = map_miou_settings(ccfg)
    model = build_classifier(
        cfg.backbone,
        cfg.drs,
        int(cfg.data.num_classes),
        head_channels=cfg.model.get("head_channels"),
        weights=cfg.model.get("weights"),
    )
    if bool(ccfg.get("compile", False)):
        model.compile()  # in place: parameter names (and checkpoint keys) stay the same
    return ClassifierTask(
        model,
        protocol=str(cfg.protocol),
        optimizer=str(ccfg.get("optimizer", "sgd")),
        lr=float(ccfg.lr),
        momentum=float(ccfg.momentum),
        weight_decay=float(ccfg.weight_decay),
        lr_steps=[int(s) for s in ccfg.lr_steps],
        lr_gamma=float(ccfg.lr_gamma),
        num_classes=int(cfg.data.num_classes),
        map_miou=compute_miou,
        map_threshold=float(ccfg.get("map_threshold", 0.2)),
        log_images=int(ccfg.get("log_images", 4)),
        channels_last=bool(ccfg.get("channels_last", False)),
        mean=tuple(cfg.data.get("mean") or IMAGENET_MEAN),  # to draw the validation images of the map grid
        std=tuple(cfg.data.get("std") or IMAGENET_STD),
    )


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


def run(cfg: DictConfig, exp: Experiment) -> dict[str, Any]:
    from wsss.data.datamodule import WSSSDataModule

    compute_miou, select = map_miou_settings(cfg.cls)
    out = exp.begin("cls")
    task = build_task(cfg)
    datamodule = WSSSDataModule(cfg.data, "cls", str(cfg.protocol))
    monitor = "val/map_miou" if select else None
    trainer = build_trainer(cfg, "cls", out, monitor=monitor, mode="max", max_epochs=int(cfg.cls.epochs))
    trainer.fit(task, datamodule=datamodule)
    logged = trainer.callback_metrics
    metrics: dict[str, Any] = {
        "accuracy": _value(logged, "val/accuracy"),
        "map": _value(logged, "val/map"),
        "loss": _value(logged, "val/loss"),
        "train_loss": _value(logged, "train/loss_epoch"),
        "epochs": int(trainer.current_epoch),
        "model_selection_uses_ground_truth": select,
    }
    if compute_miou:
        metrics["map_miou"] = _value(logged, "val/map_miou")
    checkpoint = trainer.checkpoint_callback
    if select and checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["best_map_miou"] = float(checkpoint.best_model_score)
    if trainer.is_global_zero:
        log.info("cls: %s", metrics)
        exp.finish("cls", metrics)
    barrier()  # other ranks continue only once .complete exists
    return metrics
