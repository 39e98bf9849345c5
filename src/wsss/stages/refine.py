"""``stage=refine``: train the refinement network (DRS-dagger) on the classifier's maps.

Reads ``<exp>/maps/cls`` (made by ``stage=maps maps.source=cls``) through the DataModule, which
applies the image's geometric augmentation to its maps; writes ``<exp>/refine/checkpoints/{best,last}.ckpt``
(best = the last epoch: no selection on ground truth) and ``metrics.json`` with the final training loss.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig

from wsss.artifacts import Experiment
from wsss.maps import barrier
from wsss.tasks.refiner import RefinerTask
from wsss.training import build_trainer

log = logging.getLogger(__name__)


def top_class_only(cfg: DictConfig) -> bool:
    """``refine.top_class_only``; null follows the protocol (release: yes, paper: no)."""
    value = cfg.refine.get("top_class_only")
    return str(cfg.protocol) == "release" if value is None else bool(value)


def run(cfg: DictConfig, exp: Experiment) -> dict[str, Any]:
    from wsss.data.datamodule import WSSSDataModule
    from wsss.models.classifier import build_refiner

    rcfg = cfg.refine
    maps_dir = exp.require("maps_cls")
    out = exp.begin("refine")
    task = RefinerTask(
        build_refiner(cfg.backbone, int(cfg.data.num_classes), head_channels=cfg.model.get("head_channels")),
        lr=float(rcfg.lr),
        lr_steps=[int(s) for s in rcfg.lr_steps],
        lr_gamma=float(rcfg.lr_gamma),
        top_class_only=top_class_only(cfg),
    )
    datamodule = WSSSDataModule(cfg.data, "refine", str(cfg.protocol), maps_dir=maps_dir)
    trainer = build_trainer(cfg, "refine", out, monitor=None, max_epochs=int(rcfg.epochs))
    trainer.fit(task, datamodule=datamodule)
    loss = trainer.callback_metrics.get("train/loss_epoch")
    metrics: dict[str, Any] = {
        "loss": float(loss) if loss is not None else math.nan,
        "epochs": int(trainer.current_epoch),
        "top_class_only": top_class_only(cfg),
    }
    if trainer.is_global_zero:
        log.info("refine: %s", metrics)
        exp.finish("refine", metrics)
    barrier()  # other ranks continue only once .complete exists
    return metrics
