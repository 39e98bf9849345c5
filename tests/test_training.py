"""Loggers and callbacks from their _target_ configs, atomic checkpoints, provenance in checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from conftest import TINY_TOY, compose_config, run_stage
from wsss.pipeline.provenance import staged_config
from wsss.tasks.trainer import AtomicCheckpointIO, build_callbacks, build_logger


def _staged(tmp_path: Path, *overrides: str, stage: str = "cls"):
    return staged_config(compose_config(["exp=group/e1", *overrides], runs=tmp_path / "runs"), stage)


def test_loggers_come_from_their_config_and_name_the_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb = build_logger(_staged(tmp_path, "logger=wandb", stage="maps_cls"), "maps_cls")
    assert isinstance(wandb, WandbLogger)
    init = wandb._wandb_init
    assert (init["name"], init["job_type"], init["group"], init["mode"]) == (
        "group/e1/maps_cls",
        "maps_cls",
        "group/e1",
        "disabled",
    )
    assert init["config"]["drs"]["_target_"] == "wsss.method.drs.make_activation"  # the config, not networks
    assert "hydra" not in init["config"]
    csv = build_logger(_staged(tmp_path, "logger=csv"), "cls")
    assert isinstance(csv, CSVLogger) and Path(csv.log_dir).parent == tmp_path / "runs/group/e1/logs/cls"
    assert build_logger(_staged(tmp_path, "logger=none"), "cls") is None


def test_callbacks_come_from_their_config_with_what_the_stage_knows(tmp_path: Path) -> None:
    cfg = _staged(tmp_path, "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping")
    found = build_callbacks(cfg, tmp_path / "cls", monitor="val/map_miou", mode="max", has_logger=True)
    kinds = {type(c): c for c in found}
    ckpt = kinds[ModelCheckpoint]
    assert Path(ckpt.dirpath) == tmp_path / "cls" / "checkpoints" and ckpt.monitor == "val/map_miou"
    assert kinds[EarlyStopping].monitor == "val/map_miou" and LearningRateMonitor in kinds
    bare = build_callbacks(cfg, tmp_path, monitor=None, mode="max", has_logger=False, checkpoint=False)
    assert bare == []  # no checkpoint, no monitor for early stopping, no logger for the lr monitor


def test_a_checkpoint_that_fails_half_way_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert target.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in target.parent.iterdir()] == ["best.ckpt"]  # no temporary file left


def test_how_often_a_stage_validates_leaves_its_training_unchanged(tmp_path: Path) -> None:
    """Validation frequency is not part of a stage's identity, so it must not change the weights: the
    evaluation loaders draw from their own generator, not torch's global one."""
    weights = []
    for every in (1, 3):
        cfg = compose_config(
            [
                *TINY_TOY,
                "stage=cls",
                f"exp=v{every}",
                "cls.epochs=3",
                "data.batch_size=2",  # four batches an epoch: their order counts
                f"cls.val_every_n_epochs={every}",
            ],
            runs=tmp_path / f"runs{every}",  # apart: one store would hand the second run the first's weights
        )
        run_stage(cfg)
        ckpt = Path(cfg.paths.exp_dir) / "cls" / "checkpoints" / "last.ckpt"
        weights.append(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_a_validation_interval_that_skips_the_last_epoch_is_refused(tmp_path: Path) -> None:
    from wsss.errors import ConfigError
    from wsss.stages.cls import epoch_validation

    cfg = compose_config([*TINY_TOY, "stage=cls", "cls.epochs=10", "cls.val_every_n_epochs=4"], runs=tmp_path)
    with pytest.raises(
        ConfigError, match=r"cls.val_every_n_epochs=4 must be a positive divisor of cls.epochs=10"
    ):
        epoch_validation(cfg)
    staged, kwargs = epoch_validation(
        compose_config([*TINY_TOY, "cls.epochs=10", "cls.val_every_n_epochs=5"])
    )
    assert kwargs == {"check_val_every_n_epoch": 5} and staged.trainer.check_val_every_n_epoch is None
