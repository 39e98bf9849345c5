"""Tasks and optimizers by ``_target_`` (wsss.tasks.build): a custom optimizer trains through train.py,
a bad one is refused before any work, and the task node is part of the stage's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from test_troubleshooting import assert_one_block

from conftest import TINY_TOY, compose_config, run_train
from wsss.errors import ConfigError
from wsss.pipeline.provenance import stage_config
from wsss.tasks.build import check_tasks, instantiate_task

ADAMW = "+cls.optimizers.adamw={_target_: torch.optim.AdamW, lr: 0.002, weight_decay: 0.01}"


def _paths(tmp_path: Path) -> list[str]:
    return [f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}", "print_config=false"]


def test_an_optimizer_added_by_target_trains_the_classifier(tmp_path: Path) -> None:
    args = [*TINY_TOY, *_paths(tmp_path), "stage=cls", "exp=e", "cls.epochs=1", ADAMW, "cls.optimizer=adamw"]
    proc = run_train(args, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ckpt = torch.load(tmp_path / "runs/e/cls/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["hyper_parameters"]["optimizer"] == {
        "_target_": "torch.optim.AdamW",
        "lr": 0.002,
        "weight_decay": 0.01,
    }
    state = ckpt["optimizer_states"][0]
    assert state["param_groups"][0]["weight_decay"] == 0.01 and "amsgrad" in state["param_groups"][0]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "cls.optimizers.adam._target_=torch.optim.Adamw",
            "cls.task.optimizer._target_=torch.optim.Adamw: cannot be imported",
        ),
        (
            "+cls.optimizers.adam.nesterov=true",
            "cls.task.optimizer: torch.optim.Adam does not take these arguments",
        ),
        (
            "+cls.task.warmup=5",
            "cls.task: wsss.tasks.classification.ClassifierTask does not take these arguments",
        ),
    ],
)
def test_a_task_or_optimizer_that_does_not_fit_is_refused_before_any_work(
    tmp_path: Path, override: str, says: str
) -> None:
    proc = run_train(
        [*TINY_TOY, *_paths(tmp_path), "stage=cls", "exp=e", override], timeout=120, tracebacks=False
    )
    assert_one_block(proc, "ConfigError", says)
    assert not (tmp_path / "runs" / "e" / "cls").exists()


def test_the_task_node_is_the_stages_arguments_and_part_of_its_identity(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=toy"], runs=tmp_path / "runs")
    check_tasks(cfg, ["cls", "refine", "seg"])
    task = instantiate_task(cfg.seg.task, "seg.task", torch.nn.Identity(), network={})
    assert task.optimizer_spec == {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9}
    assert task.max_steps == cfg.seg.max_steps and task.num_classes == 21
    sgd = compose_config(["experiment=toy", "cls.optimizer=sgd"], runs=tmp_path / "runs")
    before, after = stage_config(cfg, "cls"), stage_config(sgd, "cls")
    assert before["cls.task.optimizer._target_"] == "torch.optim.Adam"
    assert after["cls.task.optimizer._target_"] == "torch.optim.SGD"
    assert not any(k.startswith("cls.optimizers.") for k in after)  # the chosen one counts, not the menu
    with open_dict(cfg):
        OmegaConf.update(
            cfg, "seg.task.optimizer", {"_target_": "torch.optim.SGD", "lr": 0.01, "momentm": 0.9}
        )
    with pytest.raises(
        ConfigError, match=r"seg.task.optimizer: torch.optim.SGD does not take these arguments"
    ):
        check_tasks(cfg, ["seg"])
