"""G over training (``wsss.tasks.controller_log``) and the release's lr groups under the toy recipe."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_TOY, compose_config, make_classifier, run_stage
from wsss.method.drs import DRS
from wsss.pipeline.artifacts import Experiment
from wsss.tasks.classification import ClassifierTask
from wsss.tasks.controller_log import CSV, ControllerLog, final_summary, learnable_controllers, read_rows


def test_hook_measures_g_of_the_training_batches_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv, drs = nn.Conv2d(3, 4, 3, padding=1), DRS(4, block="layer1")
    model = nn.Sequential(conv, drs)
    log = ControllerLog(tmp_path)
    log.on_train_start(SimpleNamespace(current_epoch=0), model)
    batches = [torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
        model.eval()
        model(torch.randn(5, 3, 8, 8))  # validation forward passes are not counted
        g = torch.cat(
            [torch.sigmoid(torch.relu(conv(x)).mean(dim=(2, 3)) @ drs.fc[0].weight.T) for x in batches]
        )
    per_channel = g.mean(dim=0)
    (row,) = log._rows(0, 7)
    assert row["layer"] == "layer1" and row["channels"] == 4 and row["step"] == 7
    assert row["g_mean"] == pytest.approx(float(per_channel.mean()), abs=1e-6)
    assert row["g_sd"] == pytest.approx(float(per_channel.std(unbiased=False)), abs=1e-6)
    assert (row["g_min"], row["g_max"]) == pytest.approx((float(per_channel.min()), float(per_channel.max())))


def test_layer_names_number_the_convs_of_a_block() -> None:
    model = nn.Sequential(DRS(2, block="layer1"), DRS(2, block="layer1"), DRS(2, "fixed", block="layer2"))
    model.append(DRS(3, block="layer6"))
    assert list(learnable_controllers(model)) == ["layer1.1", "layer1.2", "layer6"]  # fixed G: not logged
    tiny = make_classifier("tiny", "learnable")
    assert list(learnable_controllers(tiny)) == [
        *(f"layer{b}" for b in range(1, 6)),
        "layer6.1",
        "layer6.2",
        "layer6.3",
    ]


def test_cls_stage_writes_g_per_layer_and_epoch(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY_TOY, "stage=cls", "exp=g", "cls.epochs=2", "logger=csv"], runs=tmp_path / "runs"
    )
    run_stage(cfg)
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    rows = read_rows(exp.stage_dir("cls") / CSV)
    layers = [*(f"layer{b}" for b in range(1, 6)), "layer6.1", "layer6.2", "layer6.3"]  # the head has 3 convs
    assert [(r["epoch"], r["layer"]) for r in rows] == [(e, n) for e in (-1, 0, 1) for n in layers]
    assert [r["channels"] for r in rows[:8]] == [8, 16, 32, 64, 64, 32, 32, 32]  # tiny width 8; head 32
    for r in rows:
        assert 0.0 < r["g_min"] <= r["g_mean"] <= r["g_max"] < 1.0 and r["g_sd"] >= 0.0
    assert all(abs(r["g_mean"] - 0.5) < 0.05 for r in rows[:8])  # FC ~ N(0, 0.01): G starts near 0.5
    steps = {r["epoch"]: r["step"] for r in rows}
    assert steps[-1] == 0 and steps[1] == 2 * steps[0] > 0  # the optimizer step at each epoch's end
    metrics = exp.metrics("cls")
    summary = final_summary(exp.stage_dir("cls") / CSV)
    assert metrics["controller_layer3_mean"] == pytest.approx(summary["layer3"]["mean"])
    assert metrics["controller_layer3_start"] == pytest.approx(rows[2]["g_mean"])
    (log,) = (exp.root / "logs" / "cls").glob("version_*/metrics.csv")
    logged = log.read_text().splitlines()[0].split(",")
    assert "controller/layer6.3_mean" in logged and "controller/layer1_sd" in logged


def test_no_controller_file_without_a_learnable_controller(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY_TOY, "stage=cls", "exp=off", "cls.epochs=1", "drs=off"], runs=tmp_path / "runs"
    )
    run_stage(cfg)
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    assert not (exp.stage_dir("cls") / CSV).exists()
    assert not [k for k in exp.metrics("cls") if k.startswith("controller_")]


def test_release_lr_groups_hold_every_parameter_once_at_its_rate() -> None:
    model = make_classifier("tiny", "learnable")
    adam = {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.0}
    task = ClassifierTask(model, optimizer=adam, lr_groups="release")
    optimizer = task.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: (g["lr"], sorted(names[id(p)] for p in g["params"])) for g in optimizer.param_groups}
    controllers = sorted(f"{n}.fc.0.weight" for n, m in model.named_modules() if isinstance(m, DRS))
    backbone_convs = [n for n in names.values() if n.startswith("backbone.") and ".fc." not in n]
    assert len(controllers) == 8
    assert groups["backbone_weight"] == (
        pytest.approx(1e-3),
        sorted(n for n in backbone_convs if n.endswith("weight")),
    )
    assert groups["backbone_bias"] == (
        pytest.approx(2e-3),
        sorted(n for n in backbone_convs if n.endswith("bias")),
    )
    head = sorted(n for n in names.values() if not n.startswith("backbone.") and ".fc." not in n)
    lr, new_weight = groups["new_weight"]
    assert lr == pytest.approx(1e-2)
    assert new_weight == sorted([*controllers, *(n for n in head if n.endswith("weight"))])  # all DRS FCs 10x
    assert groups["new_bias"] == (pytest.approx(2e-2), sorted(n for n in head if n.endswith("bias")))
    counted = sorted(n for _, members in groups.values() for n in members)
    assert counted == sorted(names.values())  # every parameter in exactly one group
