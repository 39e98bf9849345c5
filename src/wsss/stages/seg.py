"""``stage=seg``: train a DeepLab segmenter (``cfg.segmenter``, a ``_target_`` spec) on the pseudo labels.

Iteration-based (``seg.max_steps`` optimizer steps, ``seg.accumulate`` batches of ``seg.batch_size``
each), poly learning rate (``seg.poly_step``), loss ``seg.loss`` (``ce`` or the release's ``release_v2``),
validation mIoU on ``data.val_split`` every ``seg.val_every_n_steps`` steps. With
``seg.multi_scale_inputs`` the segmenter is wrapped in the release's multi-scale wrapper
(``wsss.models.deeplabv2.MultiScaleInputs``, scales ``seg.input_scales[1:]``): the wrapper is part of the
network spec the checkpoint keeps, so eval and predict fuse the scales by max as the release's test does.
``seg.precision`` / ``seg.sync_batchnorm`` set the Trainer's for this stage only (DeepLab-V3+: mixed
precision, BatchNorm synchronised over DDP processes). Writes ``checkpoints/{best,last}.ckpt`` and
``metrics.json``. ``best.ckpt`` is the final network
unless ``seg.monitor=val/miou`` asks to select on validation ground truth (the paper trains a fixed
number of iterations and selects nothing; a selected checkpoint is reported as such in metrics.json).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from wsss.data.datamodule import WSSSDataModule
from wsss.errors import ConfigError
from wsss.models.networks import build, segmenter_spec
from wsss.models.segmenter_weights import load_weights
from wsss.pipeline.runner import StageContext
from wsss.tasks.build import instantiate_task
from wsss.tasks.trainer import build_trainer, require_checkpoint, resume_checkpoint

STAGE = "seg"


class FinalCheckpoint(Callback):
    """Save the network as it is when training stops (``last.ckpt``, and ``best.ckpt`` without selection).

    Step-based validation need not fall on the last step, so ModelCheckpoint alone may miss the end.
    """

    def __init__(self, folder: Path, as_best: bool) -> None:
        self.folder = Path(folder)
        self.as_best = as_best

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)
        if self.as_best:
            trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=False)


def step_validation(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """``cfg`` and Trainer arguments for validation every ``seg.val_every_n_steps`` optimizer steps.

    Lightning counts ``val_check_interval`` in batches, across epochs once ``check_val_every_n_epoch``
    is None. A ``trainer.val_check_interval`` given on the command line wins.
    """
    every = cfg.seg.get("val_every_n_steps")
    if not every or cfg.trainer.get("val_check_interval") is not None:
        return cfg, {}
    staged = cfg.copy()
    with open_dict(staged):
        staged.trainer.check_val_every_n_epoch = None  # dropped by build_trainer; the override below applies
    return staged, {
        "check_val_every_n_epoch": None,
        "val_check_interval": int(every) * int(cfg.seg.accumulate),
    }


def trainer_settings(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``seg.precision`` (when set) and ``seg.sync_batchnorm`` put into ``trainer``.

    ``sync_batchnorm`` only acts under a multi-process strategy (``trainer=ddp``): Lightning converts the
    BatchNorm layers to ``SyncBatchNorm`` there (frozen BatchNorm, as in DeepLab-V2, is left alone).
    """
    scfg = cfg.seg
    staged = cfg.copy()
    with open_dict(staged):
        if scfg.get("precision") is not None:
            staged.trainer.precision = scfg.precision
        if scfg.get("sync_batchnorm"):
            staged.trainer.sync_batchnorm = True
    return staged


def build_datamodule(cfg: DictConfig, pseudo_dir: Path) -> pl.LightningDataModule:
    """Train batches of pseudo labels (crops), validation images with ground truth at original size."""

    scfg = cfg.seg
    scale_range = scfg.get("scale_range")
    return WSSSDataModule(
        cfg.data,
        STAGE,
        pseudo_dir=pseudo_dir,
        crop_size=scfg.get("crop_size"),
        batch_size=scfg.get("batch_size"),
        seg_scales=[float(s) for s in scfg.scales],
        seg_scale_range=None if scale_range is None else [float(s) for s in scale_range],
        seg_resize=str(scfg.scale_resize),
        image_labels=str(scfg.loss) == "release_v2",
    )


def network_spec(cfg: DictConfig) -> dict[str, Any]:
    """The segmenter's spec, inside the release's multi-scale wrapper when ``seg.multi_scale_inputs``."""

    spec = segmenter_spec(cfg)
    if not cfg.seg.multi_scale_inputs:
        return spec
    scales = [float(s) for s in cfg.seg.input_scales]
    if not scales or scales[0] != 1.0 or len(scales) < 2:
        raise ConfigError(
            f"seg.input_scales={scales}: give 1.0 (the full input) first, then the other scales, "
            "e.g. [1.0, 0.5, 0.75] (the release's)"
        )
    return {"_target_": "wsss.models.deeplabv2.MultiScaleInputs", "base": spec, "scales": scales[1:]}


def build_task(cfg: DictConfig) -> Any:

    scfg = cfg.seg
    spec = network_spec(cfg)
    model = build(spec)
    if cfg.segmenter.get("weights"):
        load_weights(model, cfg.segmenter.weights)
    if bool(scfg.get("compile", False)):
        model.compile()  # in place: parameter names (and checkpoint keys) stay the same
    return instantiate_task(scfg.task, "seg.task", model, network=spec)


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, out = ctx.cfg, ctx.out
    scfg = cfg.seg
    if int(scfg.accumulate) < 1:
        raise ConfigError(
            f"seg.accumulate={scfg.accumulate}; give 1 (no accumulation) or more batches per step"
        )
    pseudo_dir = ctx.input("pseudo")
    task = build_task(cfg)
    monitor = scfg.get("monitor") or None
    datamodule = build_datamodule(cfg, pseudo_dir)
    trainer_cfg, validation = step_validation(trainer_settings(cfg))
    trainer = build_trainer(
        trainer_cfg,
        STAGE,
        out,
        monitor=monitor,
        mode="max",
        callbacks=[FinalCheckpoint(out / "checkpoints", as_best=monitor is None)],
        record=ctx.record,
        max_steps=int(scfg.max_steps),
        max_epochs=-1,
        accumulate_grad_batches=int(scfg.accumulate),
        **validation,
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_checkpoint(out, ctx.resuming, STAGE))
    require_checkpoint(trainer, out, STAGE)
    if task.last_val_step != trainer.global_step and trainer.limit_val_batches != 0:
        trainer.validate(task, datamodule=datamodule, verbose=False)  # the final network's val mIoU
    values = trainer.callback_metrics
    metrics: dict[str, Any] = {
        key: float(values[f"val/{key}"]) if f"val/{key}" in values else math.nan
        for key in ("miou", "precision", "recall", "pixel_accuracy")
    }
    metrics |= {
        "steps": int(trainer.global_step),
        "max_steps": int(scfg.max_steps),
        "accumulate": int(scfg.accumulate),
        "selected_on": str(monitor) if monitor else "last step",
    }
    if monitor:
        ckpt = next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None) == monitor), None)
        if ckpt is not None and ckpt.best_model_score is not None:
            metrics["best_" + monitor.replace("/", "_")] = float(ckpt.best_model_score)
    return metrics
