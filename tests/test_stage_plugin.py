"""A new stage is one declaration + one module (+ settings): the plug-in stage of tests/plugin_stage.py is
seen by the plan check, the data verification, the cost model and an end-to-end run without touching wsss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY_TOY, compose_config, run_train
from wsss.bench.costs import Work
from wsss.bench.plan import VOC, stage_work
from wsss.data.verify import SplitCheck, splits_read
from wsss.pipeline.registry import STAGES, unregister
from wsss.pipeline.runner import check_plan, experiment, pipeline_names

PLUGIN = ["plugins=[plugin_stage]", "stage=pipeline", "pipeline.stages=[label_counts]"]


@pytest.fixture
def plugin_cfg(tmp_path: Path):
    cfg = compose_config([*TINY_TOY, *PLUGIN], runs=tmp_path / "runs")
    yield cfg
    unregister("label_counts")


def test_the_declaration_is_read_by_the_plan_data_and_cost_model(plugin_cfg) -> None:
    assert pipeline_names(plugin_cfg) == ["label_counts"]  # loads the plug-in
    assert "label_counts" in STAGES
    steps = check_plan(plugin_cfg, experiment(plugin_cfg), ["label_counts"])
    assert [(s.name, s.action) for s in steps] == [("label_counts", "run")]
    assert splits_read(plugin_cfg, ["label_counts"]) == [SplitCheck("train_aug", labels=True)]
    voc = compose_config(["experiment=paper_vgg16", "data=voc", *PLUGIN])
    assert stage_work(voc, "label_counts", VOC) == Work("label_counts", images=10_582)


def test_a_missing_plugin_module_is_a_user_error(tmp_path: Path) -> None:
    out = run_train([*TINY_TOY, "plugins=[no_such_plugin]", f"paths.runs={tmp_path}"], tracebacks=False)
    assert out.returncode == 2, out.stdout[-2000:]
    assert "plugins: cannot import 'no_such_plugin'" in out.stdout and "PYTHONPATH" in out.stdout


def test_a_plugin_stage_runs_end_to_end_and_is_reused(tmp_path: Path, monkeypatch) -> None:
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    args = [*TINY_TOY, *PLUGIN, f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}", "exp=p"]
    first = run_train(args)
    assert first.returncode == 0, first.stdout[-3000:]
    folder = tmp_path / "runs" / "p" / "label_counts"
    counts = json.loads((folder / "counts.json").read_text())
    assert counts["images"] == 8 and len(counts["per_class"]) == 20 and sum(counts["per_class"]) >= 8
    record = json.loads((folder / "identity.json").read_text())
    assert record["stage"] == "label_counts" and record["config"]["data.train_split"] == "train_aug"
    again = run_train(args)
    assert again.returncode == 0 and "label_counts" in again.stdout and "skipping" in again.stdout, (
        again.stdout[-2000:]
    )
    other = run_train([*args, "data.train_split=val"], tracebacks=False)
    assert other.returncode == 2, other.stdout[-2000:]
    assert "data.train_split: made with 'train_aug', now 'val'" in other.stdout
