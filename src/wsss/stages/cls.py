"""``stage=cls``: train the DRS classifier on image-level labels.

Builds the classifier from ``model``/``backbone``/``drs`` (``_target_`` specs; ``model.weights``
continues from a whole classifier file, else ``backbone.weights`` gives the ImageNet init), trains it
with the settings of ``cls`` (wsss/conf/settings/cls.yaml; the protocol group sets augmentation sizes and
optimiser groups) on ``data``'s classification split, validates every ``cls.val_every_n_epochs`` epochs and writes
``checkpoints/{best,last}.ckpt``. ``best.ckpt`` is the last epoch, unless ``cls.select_on_map_miou``
keeps the epoch with the best validation map mIoU (the release's model selection, which uses
ground-truth masks: ``metrics.json`` says so). With learnable DRS, ``controller.csv`` holds G per layer
and epoch (``wsss.tasks.controller_log``) and ``metrics.json`` its last epoch (``controller_<layer>_{start,mean,sd}``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig, open_dict

from wsss.data.datamodule import WSSSDataModule
from wsss.errors import ConfigError
from wsss.models.networks import build, classifier_spec
from wsss.models.weights import init_score_network
from wsss.pipeline.runner import StageContext
from wsss.tasks.build import instantiate_task
from wsss.tasks.controller_log import CSV, ControllerLog, final_summary, learnable_controllers
from wsss.tasks.trainer import build_trainer, require_checkpoint, resume_checkpoint

log = logging.getLogger(__name__)


def map_miou_settings(ccfg: DictConfig) -> tuple[bool, bool]:
    """(compute val/map_miou, select the checkpoint on it) from ``cls.map_miou`` and ``cls.select_on_map_miou``."""

    select = bool(ccfg.get("select_on_map_miou", False))
    compute = ccfg.get("map_miou")
    compute = select if compute is None else bool(compute)
    if select and not compute:
        raise ConfigError("cls.select_on_map_miou=true needs the metric: set cls.map_miou=true (or null)")
    return compute, select


def epoch_validation(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """``cfg`` and Trainer arguments for validation every ``cls.val_every_n_epochs`` epochs (null: the
    trainer's ``check_val_every_n_epoch``); it must divide ``cls.epochs``, so the last epoch validates."""
    every = cfg.cls.get("val_every_n_epochs")
    if every is None:
        return cfg, {}
    every, epochs = int(every), int(cfg.cls.epochs)
    if every < 1 or epochs % every:
        raise ConfigError(
            f"cls.val_every_n_epochs={every} must be a positive divisor of cls.epochs={epochs}, so that the "
            f"last epoch validates (metrics.json holds its scores); e.g. cls.val_every_n_epochs={epochs}"
        )
    staged = cfg.copy()
    with open_dict(staged):
        staged.trainer.check_val_every_n_epoch = None  # dropped by build_trainer; the override below applies
    return staged, {"check_val_every_n_epoch": every}


def build_task(cfg: DictConfig) -> Any:
    """The classifier (weights from files) wrapped in its LightningModule, per ``cfg.cls``."""

    ccfg = cfg.cls
    compute_miou, _ = map_miou_settings(ccfg)
    spec = classifier_spec(cfg)
    model = build(spec)
    init_score_network(
        model, cfg.backbone.get("weights"), cfg.model.get("weights"), str(cfg.backbone.get("name", ""))
    )
    if bool(ccfg.get("compile", False)):
        model.compile()  # in place: parameter names (and checkpoint keys) stay the same
    return instantiate_task(ccfg.task, "cls.task", model, network=spec, map_miou=compute_miou)


def _value(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else math.nan


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, validation = epoch_validation(ctx.cfg)
    compute_miou, select = map_miou_settings(cfg.cls)
    task = build_task(cfg)
    datamodule = WSSSDataModule(cfg.data, "cls", crop_size=cfg.cls.crop_size, squash_size=cfg.cls.squash_size)
    monitor = "val/map_miou" if select else None
    every = validation.get("check_val_every_n_epoch") or cfg.trainer.get("check_val_every_n_epoch") or 1
    sparse = int(every) > 1  # cls.val_every_n_epochs, else the trainer's own interval
    controllers = bool(learnable_controllers(task.model))
    trainer = build_trainer(
        cfg,
        "cls",
        ctx.out,
        monitor=monitor,
        mode="max",
        record=ctx.record,
        callbacks=[ControllerLog(ctx.out)] if controllers else None,
        max_epochs=int(cfg.cls.epochs),
        # validating rarely, last.ckpt still follows every epoch (selection on map mIoU needs a validation)
        checkpoint_every_epoch=sparse and not select,
        **validation,
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_checkpoint(ctx.out, ctx.resuming, "cls"))
    require_checkpoint(trainer, ctx.out, "cls")
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
    for layer, g in final_summary(ctx.out / CSV).items():  # the learnable controller's last epoch
        metrics |= {f"controller_{layer}_{k}": g[k] for k in ("start", "mean", "sd")}
    checkpoint = trainer.checkpoint_callback
    if select and checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["best_map_miou"] = float(checkpoint.best_model_score)
    if trainer.is_global_zero:
        log.info("cls: %s", metrics)
    return metrics
