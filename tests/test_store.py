"""The shared artifact store: one entry per identity, reused across experiments, locked, listed, collected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_TOY, compose_config
from wsss.pipeline.runner import experiment, run_stages
from wsss.pipeline.store import Store, link
from wsss.pipeline.store import main as store_main

TINY = [
    *TINY_TOY,
    "pseudo.source=cls",
    "pseudo.workers=1",
    "pipeline.stages=[cls,maps_cls]",
    "stage=pipeline",
]


def _run(tmp_path: Path, *overrides: str) -> dict:
    return run_stages(compose_config([*TINY, *overrides], runs=tmp_path / "runs"))


def test_experiments_with_the_same_settings_share_one_entry(tmp_path: Path, capsys) -> None:
    _run(tmp_path, "exp=a")
    second = _run(tmp_path, "exp=b", "pipeline.stages=[cls,maps_cls,pseudo]")  # cls, maps reused
    _run(tmp_path, "exp=c", "drs.delta=0.9", "drs=fixed")  # another classifier: its own entries
    runs = tmp_path / "runs"
    store = Store(runs / "store")
    entries = {(e.stage, e.identity): e for e in store.entries(runs)}
    assert sorted({stage for stage, _ in entries}) == ["cls", "maps_cls", "pseudo"]
    assert sum(stage == "cls" for stage, _ in entries) == 2 and sum(s == "maps_cls" for s, _ in entries) == 2
    shared = next(e for (stage, _), e in entries.items() if stage == "cls" and len(e.users) == 2)
    assert sorted(str(u.relative_to(runs)) for u in shared.users) == ["a/cls", "b/cls"]
    assert (runs / "a" / "cls").is_symlink() and (runs / "a" / "cls" / "checkpoints" / "best.ckpt").is_file()
    assert os.readlink(runs / "a" / "cls") == os.path.join("..", "store", "cls", shared.identity)  # relative
    assert second["maps_cls/images"] == 8  # the reused artifact's metrics are the job's metrics
    for name in ("a", "b"):  # the maps b reused are drawn in b's own figures/ too
        assert (runs / name / "figures" / "figure1.png").is_file(), name
    store_main(["list", "--runs", str(runs)])
    listing = capsys.readouterr().out
    assert "a/cls, b/cls" in listing and "c/cls" in listing and "complete" in listing


def test_gc_removes_only_what_no_experiment_uses(tmp_path: Path, capsys) -> None:
    import shutil

    _run(tmp_path, "exp=a")
    _run(tmp_path, "exp=c", "drs=off")
    runs = tmp_path / "runs"
    shutil.rmtree(runs / "c")  # experiment c is deleted: its entries are unused now
    store = Store(runs / "store")
    assert {e.stage for e in store.gc(runs, dry_run=True, min_age_s=0)} == {"cls", "maps_cls"}
    assert len(store.entries(runs)) == 4  # a dry run removes nothing
    store_main(["gc", "--runs", str(runs), "--min-age", "0"])
    assert "removed 2 unused entries" in capsys.readouterr().out
    left = store.entries(runs)
    assert len(left) == 2 and all(e.users for e in left)
    assert (runs / "a" / "cls" / ".complete").is_file()


def test_force_remakes_here_and_keeps_what_other_experiments_use(tmp_path: Path) -> None:
    _run(tmp_path, "exp=a")
    _run(tmp_path, "exp=b")
    runs = tmp_path / "runs"
    old = (runs / "a" / "cls").resolve()
    _run(tmp_path, "exp=a", "stage=cls", "seed=1", "force=true")
    assert (
        runs / "a" / "cls"
    ).resolve() != old and old.is_dir()  # a's new classifier; b's stays in the store
    assert (runs / "b" / "cls").resolve() == old and (runs / "b" / "maps" / "cls" / ".complete").is_file()
    assert not (runs / "a" / "maps" / "cls").exists()  # a's maps were made from its old classifier


def test_an_experiment_inside_the_store_and_a_real_folder_in_the_way_are_refused(tmp_path: Path) -> None:
    from wsss.errors import ConfigError

    with pytest.raises(ConfigError, match="lies inside the artifact store"):
        experiment(compose_config([*TINY, "exp=store/x"], runs=tmp_path / "runs"))
    (tmp_path / "view").mkdir()
    with pytest.raises(FileExistsError, match="is a real folder"):
        link(tmp_path / "view", tmp_path / "entry")


def test_two_jobs_that_need_the_same_classifier_train_it_once(tmp_path: Path) -> None:
    args = [*TINY, "pipeline.stages=[cls]", "cls.epochs=4", "print_config=false"]
    args += [f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("WSSS_RUN_ID", None)
    subprocess.run(  # make the toy data first, so both jobs start training at once
        [
            sys.executable,
            str(REPO / "train.py"),
            *args,
            "exp=warm",
            "pipeline.stages=[cls]",
            "cls.epochs=1",
            "seed=9",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args, f"exp=job{i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    trained = [log.count("running stage cls") for log in logs]
    assert sorted(trained) == [0, 1], trained  # one trained it, the other waited and reused it
    assert "reusing the stored artifact" in logs[trained.index(0)]
    runs = tmp_path / "runs"
    assert (runs / "job0" / "cls").resolve() == (runs / "job1" / "cls").resolve()
