"""Artifacts carry the config that made them: records, refusals naming the keys, force, plan checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_TOY, compose_config, finish_as_made, run_stage, run_train
from wsss.errors import ArtifactMismatchError, MissingArtifactError, PlanError, StageCompleteError
from wsss.pipeline.artifacts import Experiment
from wsss.pipeline.provenance import expected_record, stage_config
from wsss.pipeline.runner import check_plan, pipeline_names

BASE = ["experiment=toy", "exp=e", "drs=fixed", "drs.delta=0.55", "seed=0"]


def _cfg(tmp_path: Path, *overrides: str):
    return compose_config([*BASE, *overrides], runs=tmp_path / "runs")


def _refusal(tmp_path: Path, *changed: str) -> str:
    """The message of stage=maps over a classifier made with BASE, run with ``changed`` settings."""
    finish_as_made(_cfg(tmp_path), "cls")
    cfg = _cfg(tmp_path, "stage=maps", *changed)
    with pytest.raises(ArtifactMismatchError) as err:
        check_plan(cfg, Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs), pipeline_names(cfg))
    return str(err.value)


@pytest.mark.parametrize(
    ("changed", "line"),
    [
        (("drs=learnable",), "cls: drs.mode: made with 'fixed', now 'learnable'"),
        (("drs.delta=0.9",), "cls: drs.delta: made with 0.55, now 0.9"),
        (
            ("drs.placement=[layer6]",),
            "cls: drs.placement: made with ['layer1', 'layer2', 'layer3', 'layer4', 'layer5', 'layer6'], now ['layer6']",
        ),
        (
            ("backbone=vgg16",),
            "cls: backbone._target_: made with 'wsss.models.tiny.TinyBackbone', now 'wsss.models.vgg.VGG16Backbone'",
        ),
        (("protocol=release",), "cls: protocol: made with 'paper', now 'release'"),
        (("seed=1",), "cls: seed: made with 0, now 1"),
    ],
)
def test_each_defining_key_is_refused_with_both_values_and_the_ways_out(
    tmp_path: Path, changed: tuple[str, ...], line: str
) -> None:
    text = _refusal(tmp_path, *changed)
    assert "stage maps_cls reads cls, but" in text and line in text
    assert "add exp=<new name>" in text
    assert "python train.py stage=cls " in text and "force=true" in text and "experiment=toy" in text


def test_the_data_folder_is_not_part_of_any_identity(tmp_path: Path) -> None:
    """Data is named by content (tests/test_data_content.py): another folder is no refusal by itself."""
    record = expected_record(_cfg(tmp_path, f"data.root={tmp_path / 'other_toy'}"), "cls")
    assert record == expected_record(_cfg(tmp_path), "cls")
    assert not any("root" in key for key in record["config"])


def test_a_num_classes_change_in_the_record_is_refused(tmp_path: Path) -> None:
    """A classifier recorded with other classes (e.g. made by a fork for another dataset) is refused."""
    cfg = _cfg(tmp_path)
    finish_as_made(cfg, "cls")
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    record = exp.record("cls")
    record["config"]["data.num_classes"] = 21
    record["identity"] = "0" * 16
    (exp.stage_dir("cls") / "identity.json").write_text(json.dumps(record))
    staged = _cfg(tmp_path, "stage=maps")
    with pytest.raises(ArtifactMismatchError, match="cls: data.num_classes: made with 21, now 20"):
        check_plan(staged, exp, pipeline_names(staged))


def test_settings_that_do_not_change_the_artifact_are_not_defining(tmp_path: Path) -> None:
    learnable = _cfg(tmp_path, "drs=learnable")
    assert "drs.delta" not in stage_config(learnable, "cls")  # unused by the learnable controller
    assert expected_record(learnable, "cls") == expected_record(
        _cfg(tmp_path, "drs=learnable", "drs.delta=0.9"), "cls"
    )
    no_drs = expected_record(_cfg(tmp_path, "drs=fixed", "drs.placement=[]"), "cls")["identity"]
    assert no_drs == expected_record(_cfg(tmp_path, "drs=off"), "cls")["identity"]  # DRS on no layer = CAM
    speed = _cfg(
        tmp_path,
        "cls.log_images=0",
        "cls.channels_last=true",
        "trainer.devices=2",
        "maps.batch_size=1",
        "data.cache_mb=0",
    )
    assert expected_record(speed, "maps_cls") == expected_record(_cfg(tmp_path), "maps_cls")
    fast = ("refine.channels_last=true", "refine.compile=true", "seg.channels_last=true", "seg.compile=true")
    for name in ("refine", "seg"):
        assert expected_record(_cfg(tmp_path, *fast), name) == expected_record(_cfg(tmp_path), name)
    pseudo = expected_record(_cfg(tmp_path, "pseudo.source=cls"), "pseudo")
    assert list(pseudo["upstream"]) == ["maps_cls"] and list(pseudo["upstream"]["maps_cls"]["upstream"]) == [
        "cls"
    ]
    assert pseudo["upstream"]["maps_cls"]["upstream"]["cls"]["config"]["drs.delta"] == 0.55  # the whole chain


def test_a_finished_stage_is_refused_without_force_and_a_partial_run_is_resumed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "stage=cls")
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    (exp.stage_dir("cls") / "checkpoints").mkdir(parents=True)
    (exp.stage_dir("cls") / "checkpoints" / "last.ckpt").write_bytes(b"x")
    finish_as_made(cfg, "cls")
    with pytest.raises(
        StageCompleteError, match=r"(?s)already complete.*python train.py stage=cls .*force=true"
    ):
        check_plan(cfg, exp, ["cls"])
    (exp.stage_dir("cls") / ".complete").unlink()
    assert [s.action for s in check_plan(cfg, exp, ["cls"])] == ["resume"]
    cfg.force = True
    assert [s.action for s in check_plan(cfg, exp, ["cls"])] == ["run"]


def test_the_plan_is_checked_before_any_work(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "stage=pipeline", "pipeline.stages=[cls,maps_cls,pseudo]", "pseudo.source=refine")
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    with pytest.raises(
        MissingArtifactError,
        match=r"(?s)stage pseudo reads maps_refine.*pipeline.stages=\[refine,maps_refine\]",
    ):
        check_plan(cfg, exp, pipeline_names(cfg))
    assert not exp.root.exists()  # nothing was started
    twice = _cfg(tmp_path, "stage=pipeline", "pipeline.stages=[cls,cls]")
    with pytest.raises(PlanError, match="names a stage twice"):
        pipeline_names(twice)


def test_a_broken_plan_fails_before_torch_is_imported(tmp_path: Path, monkeypatch) -> None:
    args = ["stage=pipeline", "pipeline.stages=[cls,maps_cls,pseudo]", "pseudo.source=refine", *BASE]
    args += [f"paths.runs={tmp_path / 'runs'}", f"paths.data={tmp_path / 'data'}", "print_config=false"]
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import is listed on stderr
    proc = run_train(args, timeout=120)
    assert proc.returncode != 0 and "stage pseudo reads maps_refine" in proc.stdout
    assert not (tmp_path / "runs" / "e" / "cls").exists()  # no training started
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in proc.stdout.splitlines()
        if line.startswith("import time:")
    }
    assert (
        "wsss.pipeline.runner" in imported and "torch" not in imported
    )  # a refused plan costs about a second


TINY = [*TINY_TOY, "pseudo.source=cls", "pseudo.workers=1"]


def test_force_on_the_classifier_makes_the_pipeline_redo_what_was_made_from_it(tmp_path: Path) -> None:
    pipeline = ["stage=pipeline", "pipeline.stages=[cls,maps_cls,pseudo]", *TINY]
    from wsss.pipeline.runner import run_stages

    first = run_stages(_cfg(tmp_path, *pipeline))
    exp = Experiment(tmp_path / "runs" / "e", runs=tmp_path / "runs")
    old = {s: exp.record(s)["identity"] for s in ("cls", "maps_cls", "pseudo")}
    with pytest.raises(ArtifactMismatchError, match="cls: seed: made with 0, now 1"):
        run_stage(_cfg(tmp_path, "stage=cls", "seed=1", *TINY))
    run_stage(_cfg(tmp_path, "stage=cls", "seed=1", "force=true", *TINY))
    assert (
        not exp.stage_dir("maps_cls").exists() and not exp.stage_dir("pseudo").exists()
    )  # made from the old cls
    again = run_stages(_cfg(tmp_path, "seed=1", *pipeline))
    new = {s: exp.record(s)["identity"] for s in ("cls", "maps_cls", "pseudo")}
    assert all(new[s] != old[s] for s in new)  # maps and pseudo labels were made again, not reused
    assert exp.record("pseudo")["upstream"]["maps_cls"]["upstream"]["cls"]["identity"] == new["cls"]
    assert again["maps_cls/images"] == first["maps_cls/images"] == 8


def test_one_scorer_gives_the_same_counts_in_every_stage(tmp_path: Path) -> None:
    """Prediction [0, 1, 255, 2] vs truth [0, 1, 1, 255]: 2 pixels count (a predicted 255 and a true 255 do not)."""
    from conftest import make_classifier, make_segmenter
    from wsss.data.palette import save_mask
    from wsss.method.metrics import ConfusionMatrix, confusion_counts
    from wsss.stages.pseudo import evaluate
    from wsss.tasks.classification import ClassifierTask
    from wsss.tasks.segmentation import SegmenterTask

    pred, gt = np.array([[0, 1, 255, 2]], np.uint8), np.array([[0, 1, 1, 255]], np.uint8)
    counts = confusion_counts(pred, gt)
    assert int(counts.sum()) == 2 and counts[0, 0] == 1 and counts[1, 1] == 1
    scorers = [
        ClassifierTask(make_classifier("tiny")).val_confusion,  # cls validation map mIoU
        SegmenterTask(make_segmenter("largefov_tiny")).val_confusion,  # seg validation
        ConfusionMatrix(),  # eval, predict
    ]
    for scorer in scorers:
        scorer.update(pred, gt)
        scores = scorer.compute()
        assert scores["pixels"] == 2 and scores["miou"] == 1.0
    save_mask(tmp_path / "a.png", pred)

    class Truth:
        ids = ["a"]

        def mask(self, i: int) -> np.ndarray:
            return gt

    metrics, _ = evaluate(tmp_path, Truth())  # pseudo labels: the labelled-only reading is the scorer's
    assert metrics["miou_labeled"] == 1.0 and metrics["ignore_ratio"] == 0.25
    assert metrics["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # 255 as background: 3 pixels count
