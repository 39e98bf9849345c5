"""train.py end to end: single runs, multirun + DDP, and the optimized metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_train
from wsss.cli import MetricNotFoundError, optimized_value


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


def _cli_env(monkeypatch, full_error: str | None = None) -> None:
    """A fresh decision on tracebacks; the variables cli() sets are restored after the test."""
    monkeypatch.setenv("WSSS_TRACEBACKS", "x")
    monkeypatch.delenv("WSSS_TRACEBACKS")
    monkeypatch.setenv("HYDRA_FULL_ERROR", full_error or "")
    if full_error is None:
        monkeypatch.delenv("HYDRA_FULL_ERROR")


def test_user_errors_print_one_block_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    from wsss import cli as train
    from wsss.errors import ConfigError

    def fails_with(err: Exception):
        def main() -> None:
            raise err

        return main

    _cli_env(monkeypatch)
    monkeypatch.setattr(train, "main", fails_with(ConfigError("drs.delta=2 must be in (0, 1]")))
    assert train.cli([]) == 2
    err = capsys.readouterr().err
    assert "Error (ConfigError):\n  drs.delta=2 must be in (0, 1]\n" in err and "Traceback" not in err
    for bug in (RuntimeError("a bug"), TypeError("__init__() got an unexpected keyword argument 'x'")):
        monkeypatch.setattr(train, "main", fails_with(bug))
        assert train.cli([]) == 1  # a crash: its traceback, then the line that says it is a bug
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and f"{type(bug).__name__}: {bug}" in err
        assert "This is a crash of wsss, not a problem with your command: a bug in wsss" in err
        assert "Error (" not in err and "not a crash of wsss" not in err
    for env, argv in (("1", []), (None, ["debug_errors=true"])):
        _cli_env(monkeypatch, env)
        monkeypatch.setattr(train, "main", fails_with(ConfigError("shown with its traceback")))
        with pytest.raises(ConfigError):
            train.cli(argv)


def test_errors_from_constructors_and_data_loader_workers_read_as_their_message() -> None:
    from hydra.errors import InstantiationException

    from wsss.cli import user_error
    from wsss.errors import ConfigError, CorruptArtifactError

    try:
        try:
            raise ValueError("backbone.width=0 must be a positive channel count")
        except ValueError as cause:
            raise InstantiationException(
                "Error in call to target 'wsss.models.tiny.TinyBackbone':\nValueError(...)"
            ) from cause
    except InstantiationException as err:
        assert user_error(err) is None  # a builtin error inside a constructor is a crash (wsss's checks
        # refuse bad values before instantiate: tests/test_networks_combinations.py)
    for cause in (RuntimeError("a bug"), TypeError("unexpected keyword argument 'output_stride'")):
        try:
            raise InstantiationException("Error in call to target 'x'") from cause
        except InstantiationException as err:
            assert user_error(err) is None  # a bug inside a constructor keeps its traceback
    try:
        raise InstantiationException("Error in call to target 'x'") from ConfigError("drs.delta=2 ...")
    except InstantiationException as err:
        assert user_error(err) == ("ConfigError", "Error in call to target 'x':\ndrs.delta=2 ...")
    # torch's DataLoader re-raises a worker's error with the worker's traceback prepended
    text = (
        "Caught CorruptArtifactError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nwsss.errors.CorruptArtifactError: /m/a.npz: not a readable maps file; remove it'
    )
    assert user_error(CorruptArtifactError(text)) == (
        "CorruptArtifactError",
        "/m/a.npz: not a readable maps file; remove it",
    )


def test_a_bare_command_names_the_recipes_instead_of_training_vgg16_on_toy_data(tmp_path: Path) -> None:
    """Bare ``python train.py`` (stage=cls) would train a random VGG-16 for 15 epochs on 96 px toy images:
    training on the toy data needs a recipe; a command that trains nothing (stage=probe above) does not,
    nor one on VOC (the root config is the paper's VGG-16 schedule)."""
    proc = run_train([f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}"], tracebacks=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert (
        "Error (ConfigError):\n  this command trains cls on the toy data but names no recipe: add experiment=<name>"
        in proc.stdout
    )
    assert "paper_vgg16" in proc.stdout and "toy" in proc.stdout and "Traceback" not in proc.stdout
    assert not (tmp_path / "data").exists()  # refused before the toy data was generated


def test_a_config_file_that_is_not_yaml_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    bad = tmp_path / "experiment" / "mine.yaml"
    bad.write_text("segmenter:\n  new_head: true\n  - rates\n")  # a list item inside a mapping
    proc = run_train(
        ["--config-dir", str(tmp_path), "experiment=mine", "stage=probe", "logger=none"], tracebacks=False
    )
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "Error (ConfigFileError):" in proc.stdout and f'in "{bad}", line 3' in proc.stdout
    assert "Traceback" not in proc.stdout and "a bug in wsss" not in proc.stdout
