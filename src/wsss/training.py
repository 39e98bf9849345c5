"""Trainer, logger and callbacks built from the config; helpers to log figures, tables and metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from wsss.ddp import ReleaseSpawnedProcessGroup

log = logging.getLogger(__name__)

LOGGERS = ("wandb", "csv", "tensorboard", "none")


def _overrides_text() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return " ".join(HydraConfig.get().overrides.task)


def build_logger(cfg: DictConfig, stage: str) -> Logger | None:
    """The experiment logger for one stage (a W&B run per stage, grouped by experiment)."""
    lcfg = cfg.logger
    name = lcfg.get("name", "none")
    if name not in LOGGERS:
        raise ValueError(
            f"logger.name={name!r} is not one of {LOGGERS}; pick logger=wandb|csv|tensorboard|none"
        )
    if name == "none":
        return None
    save_dir = Path(lcfg.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if name == "csv":
        return CSVLogger(save_dir=str(save_dir / "logs"), name=stage)
    if name == "tensorboard":
        return TensorBoardLogger(save_dir=str(save_dir), name=stage)
    return WandbLogger(
        project=lcfg.project,
        entity=lcfg.get("entity"),
        group=lcfg.get("group") or str(cfg.exp),
        job_type=stage,
        name=f"{cfg.exp}/{stage}",
        notes=_overrides_text() or None,
        tags=list(lcfg.get("tags") or []),
        save_dir=str(save_dir),
        mode=lcfg.get("mode", "offline"),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_callbacks(
    cfg: DictConfig, out_dir: Path, monitor: str | None, mode: str, has_logger: bool, checkpoint: bool = True
) -> list[Callback]:
    ccfg = cfg.callbacks
    callbacks: list[Callback] = []
    if checkpoint:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(out_dir / "checkpoints"),
                filename="best",
                monitor=monitor,
                mode=mode,
                save_last=bool(ccfg.checkpoint.save_last),
                save_top_k=int(ccfg.checkpoint.save_top_k),
                enable_version_counter=False,
                auto_insert_metric_name=False,
            )
        )
    if ccfg.get("early_stopping") and monitor:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, **ccfg.early_stopping))
    if ccfg.get("lr_monitor") and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if ccfg.get("rich_progress"):
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
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
    **overrides: Any,
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with the stage's logger and checkpoints in ``out_dir/checkpoints``.

    ``overrides`` (e.g. ``max_epochs=15``) fill in what the stage decides; a non-null value in
    ``cfg.trainer`` for the same key wins, so ``trainer.max_epochs=1`` shortens any stage.
    ``checkpoint=False`` for stages that only run inference.
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
    return pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger or False,
        callbacks=all_callbacks,
        enable_checkpointing=checkpoint,
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
