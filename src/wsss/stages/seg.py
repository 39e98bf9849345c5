"""``stage=seg``: train a DeepLab segmenter (``cfg.segmenter``) on the pseudo labels of ``<exp>/pseudo``.

Iteration-based (``seg.max_steps`` optimizer steps, ``seg.accumulate`` batches each), poly learning
rate, validation mIoU on ``data.val_split`` every ``seg.val_every_n_steps`` steps. Writes
``<exp>/seg/checkpoints/{best,last}.ckpt`` and ``metrics.json``. ``best.ckpt`` is the final network
unless ``seg.monitor=val/miou`` asks to select on validation ground truth (the paper trains a fixed
number of iterations and selects nothing; a selected checkpoint is reported as such in metrics.json).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from wsss.artifacts import Experiment
from wsss.tasks.segmenter import SegmenterTask
from wsss.training import build_trainer

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


def build_datamodule(cfg: DictConfig, pseudo_dir: Path) -> pl.LightningDataModule:
    """Train batches of pseudo labels (crops), validation images with ground truth at original size."""
    from wsss.data.datamodule import WSSSDataModule

    return WSSSDataModule(cfg.data, STAGE, str(cfg.protocol), pseudo_dir=pseudo_dir)


def build_task(cfg: DictConfig) -> SegmenterTask:
    from wsss.models.deeplab import build_segmenter

    scfg = cfg.seg
    settings: dict[str, Any] = OmegaConf.to_container(cfg.segmenter, resolve=True)  # type: ignore[assignment]
    num_classes = int(cfg.data.num_classes) + 1
    return SegmenterTask(
        build_segmenter(settings, num_classes),
        num_classes=num_classes,
        lr=float(scfg.lr),
        momentum=float(scfg.momentum),
        weight_decay=float(scfg.weight_decay),
        poly_power=float(scfg.poly_power),
        max_steps=int(scfg.max_steps),
        multi_scale_inputs=bool(scfg.multi_scale_inputs),
        input_scales=[float(s) for s in scfg.input_scales],
        model_config={**settings, "weights": None},
    )


def run(cfg: DictConfig, exp: Experiment) -> dict[str, Any]:
    from wsss.maps import barrier

    scfg = cfg.seg
    if int(scfg.accumulate) < 1:
        raise ValueError(
            f"seg.accumulate={scfg.accumulate}; give 1 (no accumulation) or more batches per step"
        )
    pseudo_dir = exp.require("pseudo")
    task = build_task(cfg)
    out = exp.begin(STAGE)
    monitor = scfg.get("monitor") or None
    datamodule = build_datamodule(cfg, pseudo_dir)
    trainer_cfg, validation = step_validation(cfg)
    trainer = build_trainer(
        trainer_cfg,
        STAGE,
        out,
        monitor=monitor,
        mode="max",
        callbacks=[FinalCheckpoint(out / "checkpoints", as_best=monitor is None)],
        max_steps=int(scfg.max_steps),
        max_epochs=-1,
        accumulate_grad_batches=int(scfg.accumulate),
        **validation,
    )
    trainer.fit(task, datamodule=datamodule)
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
    if trainer.is_global_zero:
        exp.finish(STAGE, metrics)
    barrier()  # other ranks continue only once .complete exists
    return metrics
