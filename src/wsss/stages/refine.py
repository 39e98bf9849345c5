"""``stage=refine``: train the refinement network (DRS-dagger) on the classifier's maps.

Reads ``maps/cls`` through the DataModule, which gives each image's maps the image's geometric
augmentation; trains the classifier's architecture with plain ReLUs (``backbone.weights`` as its
init) to regress them with MSE (``refine.top_class_only``: the release keeps each pixel's top class);
writes ``checkpoints/{best,last}.ckpt`` (best = the last epoch: no selection on ground truth).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from omegaconf import DictConfig

from wsss.data.datamodule import WSSSDataModule
from wsss.models.networks import build, refiner_spec
from wsss.models.weights import init_score_network
from wsss.pipeline.runner import StageContext
from wsss.tasks.build import instantiate_task
from wsss.tasks.trainer import build_trainer, require_checkpoint, resume_checkpoint

log = logging.getLogger(__name__)


def build_task(cfg: DictConfig) -> Any:
    """The refinement network (``backbone.weights`` as its init) wrapped in its LightningModule, per
    ``cfg.refine`` (``refine.compile``: ``torch.compile`` in place; ``refine.channels_last``)."""

    rcfg = cfg.refine
    spec = refiner_spec(cfg)
    net = build(spec)
    init_score_network(net, cfg.backbone.get("weights"))
    if bool(rcfg.get("compile", False)):
        net.compile()  # in place: parameter names (and checkpoint keys) stay the same
    return instantiate_task(rcfg.task, "refine.task", net, network=spec)


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, rcfg = ctx.cfg, ctx.cfg.refine
    task = build_task(cfg)
    datamodule = WSSSDataModule(
        cfg.data,
        "refine",
        crop_size=rcfg.crop_size,
        squash_size=rcfg.squash_size,
        maps_dir=ctx.input("maps_cls"),
    )
    trainer = build_trainer(
        cfg, "refine", ctx.out, monitor=None, record=ctx.record, max_epochs=int(rcfg.epochs)
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume_checkpoint(ctx.out, ctx.resuming, "refine"))
    require_checkpoint(trainer, ctx.out, "refine")
    loss = trainer.callback_metrics.get("train/loss_epoch")
    metrics: dict[str, Any] = {
        "loss": float(loss) if loss is not None else math.nan,
        "epochs": int(trainer.current_epoch),
        "top_class_only": bool(rcfg.top_class_only),
    }
    if trainer.is_global_zero:
        log.info("refine: %s", metrics)
    return metrics
