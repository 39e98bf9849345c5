"""Trainer, logger and callbacks built from the config; helpers to log figures, tables and metrics.

Loggers and callbacks are ``_target_`` nodes (``wsss/conf/logger``, ``wsss/conf/callbacks``) built with
``hydra.utils.instantiate``; the stage supplies what only it knows (the checkpoint folder, the metric
to select on). Checkpoints are written atomically, carry the stage's provenance record, and are never
written with non-finite weights; a non-finite loss stops training (``StopOnNonFiniteLoss``). A stage
resumed by the runner continues from its ``last.ckpt`` (``resume_checkpoint``) and its W&B run.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from wsss.ddp.sync import ReleaseSpawnedProcessGroup
from wsss.errors import CorruptArtifactError, DivergedTrainingError, TrainingError, UnknownKeyError
from wsss.models.checkpoint import last_good_checkpoint
from wsss.models.torch_files import load_torch_file, non_finite_tensors
from wsss.pipeline.artifacts import Experiment, atomic_path, write_text
from wsss.pipeline.registry import STAGES
from wsss.tasks.memory import retain_freed_memory
from wsss.tasks.preemption import STATE as PREEMPTION
from wsss.tasks.preemption import PreemptionCheckpoint, trainer_plugins
from wsss.tasks.rank_faults import RankWatch

log = logging.getLogger(__name__)

LAST = "last.ckpt"
BEST = "best.ckpt"
WANDB_ID = "wandb_run_id"
"""File in a stage folder holding its W&B run id, so a resumed stage continues the same run."""


def _lr_key(stage: str) -> str:
    return f"{stage}.lr" if stage in ("cls", "refine", "seg") else "the learning rate"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written under a temporary name and renamed: a crash or a full disk never leaves a
    half-written ``.ckpt`` behind. A checkpoint whose weights hold NaN or inf is refused (not written)."""

    def __init__(self, stage: str = "this stage") -> None:
        super().__init__()
        self.stage = stage

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            raise DivergedTrainingError(
                f"stage {self.stage}: training diverged: the weights hold NaN or infinite values "
                f"({len(bad)} tensors, e.g. {bad[0]}) at step {checkpoint.get('global_step')}; refusing to "
                f"write {path}. {last_good_checkpoint(Path(path).parent)} Lower {_lr_key(self.stage)} (or check the "
                "data), then start the stage again with force=true."
            )
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class StopOnNonFiniteLoss(Callback):
    """Stops training with ``DivergedTrainingError`` at the first NaN or infinite training loss (before
    its backward pass, so the weights stay those of the last good step) or validation loss (before the
    epoch's checkpoint is saved: Lightning runs checkpoint callbacks last).

    Under DDP the ranks agree first (one tiny all-reduce per step), so they stop together."""

    def __init__(self, stage: str, checkpoint_dir: str | Path) -> None:
        self.stage = stage
        self.checkpoint_dir = Path(checkpoint_dir)

    def _stop(self, trainer: pl.Trainer, what: str, value: float) -> None:
        raise DivergedTrainingError(
            f"stage {self.stage}: training diverged: the {what} is {value} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}). {last_good_checkpoint(self.checkpoint_dir)} Lower "
            f"{_lr_key(self.stage)} (or check the data), then start the stage again with force=true."
        )

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._stop(
                trainer, "training loss", float(loss.detach().float().mean()) if loss.numel() else math.nan
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for key, value in trainer.callback_metrics.items():  # already reduced over ranks
            if (
                key.endswith("loss")
                and isinstance(value, torch.Tensor)
                and not bool(torch.isfinite(value).all())
            ):
                self._stop(trainer, key, float(value))


class RecordProvenance(Callback):
    """Stores the stage's provenance record (``wsss.pipeline.provenance``) in every checkpoint it saves."""

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
    extra: dict[str, Any] = {}
    if str(spec.get("_target_", "")).endswith("WandbLogger"):
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        extra = {"config": OmegaConf.to_container(job, resolve=True), "notes": _overrides_text() or None}
        if not spec.get("id"):
            spec["id"] = wandb_run_id(cfg, stage)
    if spec.get("save_dir"):
        Path(spec["save_dir"]).mkdir(parents=True, exist_ok=True)
    # The run config goes to the constructor as plain dicts, after instantiate: passed through it, it would
    # come back as an OmegaConf container (which wandb cannot serialise) with its strings re-interpolated.
    factory = instantiate({**spec, "_partial_": True, "_convert_": "all"})
    return factory(**extra)


def wandb_run_id(cfg: DictConfig, stage: str) -> str | None:
    """The W&B run id of a stage: read from ``<stage folder>/wandb_run_id`` when the folder holds one (a
    resumed run continues the same W&B run), else a new id, stored there by rank 0."""

    if stage not in STAGES:
        return None
    path = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs).stage_dir(stage) / WANDB_ID
    if path.is_file() and path.read_text().strip():
        run_id = path.read_text().strip()
        log.info("stage %s: continuing W&B run %s", stage, run_id)
        return run_id
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        write_text(path, run_id + "\n")
    return run_id


def build_callbacks(
    cfg: DictConfig,
    out_dir: Path,
    monitor: str | None,
    mode: str,
    has_logger: bool,
    checkpoint: bool = True,
    checkpoint_every_epoch: bool = False,
) -> list[Callback]:
    """The callbacks of ``cfg.callbacks`` (``_target_`` nodes; null entries are off) for one stage.

    ``checkpoint_every_epoch``: the checkpoints are saved at the end of every training epoch, not only
    after a validation (a stage that validates rarely still resumes from its last epoch)."""
    callbacks: list[Callback] = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        if key == "model_checkpoint":
            if checkpoint:
                every_epoch = {"save_on_train_epoch_end": True} if checkpoint_every_epoch else {}
                callbacks.append(
                    instantiate(
                        node, dirpath=str(out_dir / "checkpoints"), monitor=monitor, mode=mode, **every_epoch
                    )
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
    checkpoint_every_epoch: bool = False,
    **overrides: Any,
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer`` with the stage's logger and checkpoints in ``out_dir/checkpoints``.

    ``overrides`` (e.g. ``max_epochs=15``) fill in what the stage decides; a non-null value in
    ``cfg.trainer`` for the same key wins, so ``trainer.max_epochs=1`` shortens any stage.
    ``checkpoint=False`` for stages that only run inference. ``record`` goes into every checkpoint;
    ``checkpoint_every_epoch``: see ``build_callbacks``. On the CPU, freed tensor memory is kept for
    reuse (``wsss.tasks.memory.retain_freed_memory``).
    """
    out_dir = Path(out_dir)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    check_trainer_arguments(list(kwargs))
    for key, value in overrides.items():
        kwargs.setdefault(key, value)
    if logger is True:
        logger = build_logger(cfg, stage)
    all_callbacks = build_callbacks(
        cfg,
        out_dir,
        monitor,
        mode,
        has_logger=bool(logger),
        checkpoint=checkpoint,
        checkpoint_every_epoch=checkpoint_every_epoch,
    )
    all_callbacks += [
        *(callbacks or []),
        ReleaseSpawnedProcessGroup(),
        StopOnNonFiniteLoss(stage, out_dir / "checkpoints"),
    ]
    if record is not None:
        all_callbacks.append(RecordProvenance(record))

    if PREEMPTION.enabled and checkpoint:
        all_callbacks.append(PreemptionCheckpoint(stage, out_dir / "checkpoints"))

    faults = cfg.get("ddp") or {}
    all_callbacks.append(  # last: it may raise in on_exception
        RankWatch(
            stage,
            out_dir,
            out_dir / "checkpoints",
            grace_s=float(faults.get("fault_grace_s", 10)),
            stale_s=float(faults.get("heartbeat_timeout_s", 120)),
        )
    )
    trainer = pl.Trainer(
        default_root_dir=str(out_dir),
        logger=logger or False,
        callbacks=all_callbacks,
        enable_checkpointing=checkpoint,
        plugins=[AtomicCheckpointIO(stage), *trainer_plugins()],
        **kwargs,
    )
    if isinstance(trainer.accelerator, CPUAccelerator):
        retain_freed_memory()  # big activations reuse freed heap memory (see wsss.tasks.memory)
    return trainer


def check_trainer_arguments(names: list[str]) -> None:
    """Every ``trainer.*`` key must be a ``lightning.pytorch.Trainer`` argument (a typo is named)."""
    import difflib

    accepted = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, accepted, n=2, cutoff=0.7)
            hints.append(
                f"trainer.{name}"
                + (f" (did you mean {' or '.join('trainer.' + c for c in close)}?)" if close else "")
            )
        raise UnknownKeyError(
            f"{', '.join(hints)}: not an argument of lightning.pytorch.Trainer; the trainer node passes its keys "
            "to the Trainer unchanged (see wsss/conf/trainer/default.yaml for the usual ones)"
        )


def resume_checkpoint(out_dir: str | Path, resuming: bool, stage: str) -> str | None:
    """``ckpt_path`` for ``trainer.fit``: the stage's ``checkpoints/last.ckpt`` when the runner resumes an
    unfinished run (``StageContext.resuming``) and the file is there, else None (train from the start).

    The file is read first: a damaged one is named with the fix, and the epoch and step it continues
    from are logged."""
    if not resuming:
        return None
    path = Path(out_dir) / "checkpoints" / LAST
    if not path.is_file():
        log.warning(
            "stage %s: resuming, but %s does not exist: training starts from the beginning", stage, path
        )
        return None
    fix = "delete it to train from the beginning, or start the stage over with resume=false"
    ckpt = load_torch_file(path, error=CorruptArtifactError, what="cannot resume from it", fix=fix, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        raise CorruptArtifactError(f"{path}: not a full Lightning checkpoint to resume from; {fix}")
    bad = non_finite_tensors(ckpt["state_dict"])
    if bad:
        raise DivergedTrainingError(f"{path}: its weights hold NaN or infinite values ({bad[0]}, ...); {fix}")
    log.warning(
        "stage %s: resuming training from %s: continues after step %s (epoch %s); resume=false starts over",
        stage,
        path,
        ckpt.get("global_step"),
        ckpt.get("epoch"),
    )
    return str(path)


def require_checkpoint(trainer: pl.Trainer, out_dir: str | Path, stage: str) -> Path:
    """The stage's ``checkpoints/best.ckpt`` after ``fit``; a run that kept none (or a debug run of one
    batch, ``trainer.fast_dev_run``) is refused, so the runner does not mark the stage complete."""
    path = Path(out_dir) / "checkpoints" / BEST
    if trainer.fast_dev_run:
        raise TrainingError(
            f"stage {stage}: trainer.fast_dev_run (debug=fdr) ran one batch of each loop: the wiring works. "
            "Such a run makes no usable network, so the stage is not marked complete; run without debug=fdr "
            "(debug=limit makes a short real run)"
        )
    if trainer.is_global_zero and not path.is_file():
        raise TrainingError(
            f"stage {stage}: training ran {trainer.global_step} steps and kept no {path} "
            f"(trainer.limit_train_batches={trainer.limit_train_batches}, callbacks.model_checkpoint="
            f"{'on' if trainer.checkpoint_callback else 'off'}); the stage is not marked complete"
        )
    return path


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


def finalize_logger(logger: Logger | None) -> None:
    """Flush a logger a stage built itself (stages that run no Trainer)."""
    if logger:
        logger.finalize("success")
        logger.save()
