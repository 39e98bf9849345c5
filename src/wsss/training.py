"""Trainer, logger and callbacks built from the config; helpers to log figures, tables and metrics.

Loggers and callbacks are ``_target_`` nodes (``conf/logger``, ``conf/callbacks``) built with
``hydra.utils.instantiate``; the stage supplies what only it knows (the checkpoint folder, the metric
to select on). Checkpoints are written atomically and carry the stage's provenance record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from wsss.artifacts import atomic_path
from wsss.ddp.sync import ReleaseSpawnedProcessGroup

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written under a temporary name and renamed: a crash or a full disk never leaves a
    half-written ``.ckpt`` behind."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class RecordProvenance(Callback):
    """Stores the stage's provenance record (``wsss.provenance``) in every checkpoint it saves."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["provenance"] = self.record


def _overrides_text() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return " ".join(HydraConfig.get().overrides.task)


def build_logger(cfg: DictConfig, stage: str) -> Logger | None:
    """The experiment logger of one stage (``cfg.logger``; null: none). W&B runs get the whole config."""
    node = cfg.get("logger")
    if not node:
        return None
    spec = OmegaConf.to_container(node, resolve=True)
    if str(spec.get("_target_", "")).endswith("WandbLogger"):
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        spec |= {"config": OmegaConf.to_container(job, resolve=True), "notes": _overrides_text() or None}
    if spec.get("save_dir"):
        Path(spec["save_dir"]).mkdir(parents=True, exist_ok=True)
    return instantiate({**spec, "_recursive_": False})  # the run config it carries holds _target_ nodes


def build_callbacks(
    cfg: DictConfig, out_dir: Path, monitor: str | None, mode: str, has_logger: bool, checkpoint: bool = True
) -> list[Callback]:
    """The callbacks of ``cfg.callbacks`` (``_target_`` nodes; null entries are off) for one stage."""
    callbacks: list[Callback] = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        if key == "model_checkpoint":
            if checkpoint:
                callbacks.append(
                    instantiate(node, dirpath=str(out_dir / "checkpoints"), monitor=monitor, mode=mode)
                )
        elif key == "early_stopping":
            if monitor:
                callbacks.append(instantiate(node, monitor=monitor, mode=mode))
        elif key == "lr_monitor":
            if has_logger:
                callbacks.append(instantiate(node))
        else:
            callbacks.append(instantiate(node))
    return callbacks


def build_trainer(
    cfg: DictConfig,
    stage: str,
    out_dir: str | Path,
    monitor: str | None = None,
    mode: str = "max",
    logger: Logger | None | bool = True,
    callbacks: list[Callback] | None = None,
    checkpoint: bool = True,
    record: dict[str, Any] | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with the stage's logger and checkpoints in ``out_dir/checkpoints``.

    ``overrides`` (e.g. ``max_epochs=15``) fill in what the stage decides; a non-null value in
    ``cfg.trainer`` for the same key wins, so ``trainer.max_epochs=1`` shortens any stage.
    ``checkpoint=False`` for stages that only run inference. ``record`` goes into every checkpoint.
    """
    out_dir = Path(out_dir)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    for key, value in overrides.items():
        kwargs.setdefault(key, value)
    if logger is True:
        logger = build_logger(cfg, stage)
    all_callbacks = build_callbacks(
        cfg, out_dir, monitor, mode, has_logger=bool(logger), checkpoint=checkpoint
    )
    all_callbacks += [*(callbacks or []), ReleaseSpawnedProcessGroup()]
    if record is not None:
        all_callbacks.append(RecordProvenance(record))
    return pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger or False,
        callbacks=all_callbacks,
        enable_checkpointing=checkpoint,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )


def log_metrics(logger: Logger | None, metrics: dict[str, Any], prefix: str, step: int | None = None) -> None:
    """Log the numeric entries of a flat metrics dict as ``<prefix>/<key>``."""
    if not logger:
        return
    numeric = {
        f"{prefix}/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float | np.number) and not isinstance(v, bool)
    }
    if numeric:
        logger.log_metrics(numeric, step=step)


def log_image(logger: Logger | None, key: str, png_path: str | Path, step: int | None = None) -> None:
    """Send a saved PNG to the logger (W&B image panel, TensorBoard image); CSV keeps the file only."""
    if not logger:
        return
    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[str(png_path)], step=step)
    elif isinstance(logger, TensorBoardLogger):
        with Image.open(png_path) as img:
            logger.experiment.add_image(
                key, np.asarray(img.convert("RGB")), global_step=step or 0, dataformats="HWC"
            )


def log_table(logger: Logger | None, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Send a table to W&B; other loggers rely on the CSV the stage writes."""
    if isinstance(logger, WandbLogger):
        logger.log_table(key=key, columns=columns, data=rows)


def finalize_logger(logger: Logger | None) -> None:
    """Flush a logger a stage built itself (stages that run no Trainer)."""
    if logger:
        logger.finalize("success")
        logger.save()


def finish_wandb() -> None:
    """Close the current W&B run (if wandb was imported), so the next stage or sweep job gets its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
