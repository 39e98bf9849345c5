"""train.py end to end: single runs, multirun + DDP, and the optimized metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_train
from train import MetricNotFoundError, optimized_value


def test_optimized_metric_lookup() -> None:
    assert optimized_value({"eval/miou": 0.61}, "eval/miou") == pytest.approx(0.61)
    assert optimized_value({"eval/miou": 0.61}, None) is None
    with pytest.raises(MetricNotFoundError, match=r"Available metrics: eval/miou, pseudo/miou"):
        optimized_value({"pseudo/miou": 0.5, "eval/miou": 0.61}, "eval/mIoU")


def test_wrong_metric_name_fails_the_run_listing_names(tmp_path: Path) -> None:
    proc = run_train(["stage=probe", "logger=none", f"paths.runs={tmp_path}", "optimized_metric=probe/acc"])
    assert proc.returncode != 0
    assert "optimized_metric='probe/acc' was not produced by this run" in proc.stdout
    assert "probe/loss, probe/ranks, probe/samples_per_rank, probe/world_size" in proc.stdout


def test_multirun_with_ddp_gives_each_job_its_own_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_train(
        [
            "-m",
            "stage=probe",
            "trainer=ddp_sim",
            "logger=csv",
            "print_config=false",
            "seed=1,2",
            f"paths.runs={tmp_path / 'runs'}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    seeds = set()
    for job in jobs:
        configs = sorted(str(p.relative_to(sweep / job)) for p in (sweep / job).rglob("config.yaml"))
        assert configs == [".hydra/config.yaml"]  # rank 1 wrote no second config
        result = json.loads((sweep / job / "result.json").read_text())
        assert result["metrics"]["probe/world_size"] == 2
        assert result["metrics"]["probe/ranks"] == [0, 1]  # both ranks contributed
        assert result["metrics"]["probe/samples_per_rank"] == [16, 16]
        probe = json.loads((Path(result["exp_dir"]) / "probe" / "metrics.json").read_text())
        assert probe["ranks"] == [0, 1]
        seeds.add(next(o for o in result["overrides"] if o.startswith("seed=")))
    assert seeds == {"seed=1", "seed=2"}
    exp_dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(exp_dirs) == 2  # two jobs never share an experiment folder
