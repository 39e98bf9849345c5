"""Training faults: divergence stops training and never completes a stage, debug runs are not complete,
a killed stage resumes from its last.ckpt (and its W&B run), damaged checkpoints are named on read."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from conftest import TINY_TOY, compose_config, run_stage, run_train
from wsss.errors import CorruptArtifactError, DivergedTrainingError, TrainingError
from wsss.pipeline.artifacts import Experiment
from wsss.tasks.trainer import AtomicCheckpointIO, build_logger, build_trainer

CLS = [*TINY_TOY, "stage=cls", "exp=e", "cls.epochs=3"]


def _cls_cfg(tmp_path: Path, *extra: str):
    return compose_config([*CLS, *extra], runs=tmp_path / "runs")


def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_diverged_classifier_fails_in_one_block_and_is_never_complete(tmp_path: Path) -> None:
    """Finding 3: cls.lr=1e9 exited 0 with .complete, an all-NaN best.ckpt and NaN tokens in metrics.json.
    Finding 6: run from a scratch folder, nothing is written outside paths.runs and paths.data."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [*CLS, f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}", "print_config=false"]
    proc = run_train([*args, "cls.lr=1e9"], cwd=cwd, timeout=300, tracebacks=False)
    out = proc.stdout
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "Error (DivergedTrainingError):" in out and "training diverged: the" in out
    assert " is nan at step " in out and "Lower cls.lr" in out and "force=true" in out
    folder = tmp_path / "runs" / "e" / "cls"
    assert not (folder / ".complete").exists() and not (folder / "metrics.json").exists()
    assert all(_finite(p) for p in folder.rglob("*.ckpt"))  # no NaN checkpoint is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "data", "runs"]
    assert list(cwd.iterdir()) == []


class NanTask(pl.LightningModule):
    """A one-weight regression whose loss becomes NaN at optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.at = at

    def training_step(self, batch, batch_idx):
        loss = ((self.w * batch[0] - 2.0) ** 2).mean()
        return loss * math.nan if self.global_step == self.at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(batches: int):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(torch.ones(batches, 1)), batch_size=1)


def test_a_non_finite_loss_stops_at_its_step_and_names_the_last_checkpoint(tmp_path: Path) -> None:
    cfg = _cls_cfg(tmp_path)
    trainer = build_trainer(cfg, "refine", tmp_path / "stage", logger=False, max_epochs=3)
    task = NanTask(at=3)
    with pytest.raises(DivergedTrainingError) as err:
        trainer.fit(task, _loader(2))  # 2 steps an epoch: the NaN comes in the second epoch
    text = str(err.value)
    assert "stage refine: training diverged: the training loss is nan at step 3 (epoch 1)" in text
    assert (
        f"{tmp_path / 'stage' / 'checkpoints' / 'last.ckpt'} (epoch 0, step 2)" in text
        and "Lower refine.lr" in text
    )
    # stopped before the NaN's backward pass: the weights stay finite
    assert math.isfinite(float(task.w.detach()))
    assert _finite(tmp_path / "stage" / "checkpoints" / "last.ckpt")


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path: Path) -> None:
    io = AtomicCheckpointIO("cls")
    target = tmp_path / "checkpoints" / "best.ckpt"
    with pytest.raises(
        DivergedTrainingError, match=r"stage cls: .*weights hold NaN .*model\.b.*refusing to write"
    ):
        io.save_checkpoint(
            {"state_dict": {"model.a": torch.ones(2), "model.b": torch.tensor([1.0, math.inf])}}, target
        )
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_a_stage_never_loads_a_network_with_nan_weights(tmp_path: Path) -> None:
    from wsss.models.checkpoint import load_network

    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1}
    state = {f"model.{k}": v for k, v in nn.Conv2d(3, 2, 1).state_dict().items()}
    state["model.bias"] = torch.tensor([0.0, math.nan])
    torch.save({"state_dict": state, "hyper_parameters": {"network": spec}}, tmp_path / "best.ckpt")
    with pytest.raises(
        CorruptArtifactError,
        match=r"best\.ckpt: the network's weights hold NaN or infinite values \(1 tensors, e\.g\. bias\)",
    ):
        load_network(tmp_path / "best.ckpt")
    state["model.bias"] = torch.zeros(3)  # the wrong shape for its network
    torch.save({"state_dict": state, "hyper_parameters": {"network": spec}}, tmp_path / "odd.ckpt")
    with pytest.raises(
        CorruptArtifactError, match=r"odd\.ckpt: its weights do not fit the network it records"
    ):
        load_network(tmp_path / "odd.ckpt")


def test_debug_fdr_checks_the_wiring_but_never_completes_a_training_stage(tmp_path: Path) -> None:
    cfg = _cls_cfg(tmp_path, "debug=fdr")
    with pytest.raises(TrainingError, match=r"stage cls: trainer\.fast_dev_run \(debug=fdr\) ran one batch"):
        run_stage(cfg)
    assert not Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs).is_complete("cls")


@pytest.mark.parametrize(
    "validation",
    [[], ["cls.val_every_n_epochs=3"], ["trainer.check_val_every_n_epoch=3"]],
    ids=["every_epoch", "at_the_end", "at_the_end_by_the_trainer"],
)
def test_a_killed_classifier_resumes_from_last_ckpt_and_says_so(
    tmp_path: Path, monkeypatch, caplog, validation: list[str]
) -> None:
    """Finding 5: a classifier killed after epoch 1 restarted from epoch 0 with no message. Validating
    only at the last epoch, last.ckpt must still follow every epoch."""
    from wsss.tasks.classification import ClassifierTask

    started: list[int] = []
    kill_at = {"epoch": 2}

    def on_train_epoch_start(self) -> None:
        started.append(self.current_epoch)
        if self.current_epoch == kill_at["epoch"]:
            raise RuntimeError("killed")

    monkeypatch.setattr(ClassifierTask, "on_train_epoch_start", on_train_epoch_start)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(_cls_cfg(tmp_path, *validation))
    assert started == [0, 1, 2]
    kill_at["epoch"] = None
    started.clear()
    with caplog.at_level(logging.WARNING):
        metrics = run_stage(_cls_cfg(tmp_path, *validation))
    assert started == [2]  # epochs 0 and 1 were not trained again
    assert metrics["epochs"] == 3
    last = tmp_path / "runs" / "e" / "cls" / "checkpoints" / "last.ckpt"
    assert f"resuming training from {last}: continues after step 2 (epoch 1)" in caplog.text


def test_resume_false_starts_a_killed_stage_over(tmp_path: Path, monkeypatch) -> None:
    from wsss.tasks.classification import ClassifierTask

    started: list[int] = []

    def on_train_epoch_start(self) -> None:
        started.append(self.current_epoch)
        if self.current_epoch == 1 and len(started) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(ClassifierTask, "on_train_epoch_start", on_train_epoch_start)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(_cls_cfg(tmp_path, "cls.epochs=2"))
    run_stage(_cls_cfg(tmp_path, "cls.epochs=2", "resume=false"))
    assert started == [0, 1, 0, 1]


def test_a_damaged_last_ckpt_is_named_when_resuming(tmp_path: Path) -> None:
    from wsss.tasks.trainer import resume_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    assert resume_checkpoint(tmp_path, resuming=False, stage="cls") is None
    with pytest.raises(CorruptArtifactError, match=r"last\.ckpt: cannot resume from it .*resume=false"):
        resume_checkpoint(tmp_path, resuming=True, stage="cls")
    (folder / "last.ckpt").unlink()
    assert (
        resume_checkpoint(tmp_path, resuming=True, stage="cls") is None
    )  # nothing saved yet: from the start


def test_a_resumed_stage_continues_its_wandb_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = _cls_cfg(tmp_path, "logger=wandb")
    first = build_logger(cfg, "cls")._wandb_init
    stored = tmp_path / "runs" / "e" / "cls" / "wandb_run_id"
    assert stored.read_text().strip() == first["id"] and first["resume"] == "allow"
    assert build_logger(cfg, "cls")._wandb_init["id"] == first["id"]  # the folder's run continues
    Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs).clear("cls")  # what starting over does
    assert build_logger(cfg, "cls")._wandb_init["id"] != first["id"]


def test_metrics_json_stays_valid_json_and_flags_non_finite_values(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "e", runs=tmp_path)
    exp.begin("cls")
    exp.finish("cls", {"loss": math.nan, "accuracy": 0.5, "map": math.inf})

    def refuse(token: str) -> float:
        raise AssertionError(f"{token} is not JSON")

    data = json.loads((exp.stage_dir("cls") / "metrics.json").read_text(), parse_constant=refuse)
    assert data == {"loss": None, "accuracy": 0.5, "map": None, "non_finite": ["loss", "map"]}
