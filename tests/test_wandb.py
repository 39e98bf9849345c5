"""The default logger as a user gets it: W&B (offline) on a real short pipeline through train.py.

The suite otherwise runs with ``WANDB_MODE=disabled`` (Makefile TEST_ENV, conftest); this module turns
it back on (``WANDB_MODE=offline``, every W&B folder in a tmp dir) and reads the offline runs' files
(``tests/wandb_offline.py``): one run per stage grouped by experiment, the run config, scalars, images,
the per-class IoU tables, and the artifacts with their lineage (references to the store, no copies).
The same run checks the one-line-per-event log and the pipeline's closing metrics table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from wandb_offline import OfflineRun, read_run, references

from conftest import REPO, TINY_TOY, run_train

STAGES = ["cls", "maps_cls", "pseudo", "seg", "eval"]
UPSTREAM = {"cls": None, "maps_cls": "cls", "pseudo": "maps_cls", "seg": "pseudo", "eval": "seg"}
FIGURES = {
    "cls": "val/maps",
    "maps_cls": "maps_cls/figure1",
    "pseudo": "pseudo/figure",
    "eval": "eval/figure",
}
TABLES = ("maps_cls", "pseudo", "eval")
"""Stages that score segmentations and log their per-class IoU table."""
ARGS = [
    "stage=pipeline",
    f"pipeline.stages=[{','.join(STAGES)}]",
    "pseudo.source=cls",
    "cls.epochs=1",
    "seg.max_steps=2",
    "seg.val_every_n_steps=2",
    "print_config=false",
    *[a for a in TINY_TOY if not a.startswith("logger=")],  # the default logger: W&B
]


def wandb_env(root: Path) -> dict[str, str]:
    """W&B offline, with every folder it writes (runs, cache, config, staging) under ``root``."""
    folders = {"WANDB_DIR": "dir", "WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config"}
    folders |= {"WANDB_DATA_DIR": "data", "WANDB_ARTIFACT_DIR": "artifacts"}
    env = {key: str(root / name) for key, name in folders.items()}
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, OfflineRun], str]:
    """The pipeline with W&B offline: (runs folder, {stage: its offline run}, train.py's output)."""
    root = tmp_path_factory.mktemp("wandb")
    paths = [f"paths.runs={root / 'runs'}", f"paths.data={root / 'data'}"]
    proc = run_train([*ARGS, "exp=wb", *paths], extra=wandb_env(root / "wandb"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    runs = [read_run(folder) for folder in sorted((root / "runs" / "wb" / "wandb").glob("offline-run-*"))]
    by_stage = {run.run.job_type: run for run in runs}
    assert sorted(by_stage) == sorted(STAGES) and len(runs) == len(STAGES)  # one run per stage
    return root / "runs", by_stage, proc.stdout


def test_one_run_per_stage_grouped_by_experiment_with_the_job_config(offline) -> None:
    runs_dir, runs, _ = offline
    for stage, run in runs.items():
        assert run.run.run_group == "wb" and run.run.display_name == f"wb/{stage}"
        assert run.run.project == "wsss"
        config = run.config
        assert config["exp"] == "wb" and config["stage"] == "pipeline"
        assert config["cls"]["epochs"] == 1 and config["seg"]["max_steps"] == 2  # the resolved job config
        assert config["backbone"]["_target_"] == "wsss.models.tiny.TinyBackbone"  # _target_ nodes as text
        assert config["paths"]["runs"] == str(runs_dir) and "hydra" not in config
        stored = (runs_dir / "wb" / _folder(stage) / "wandb_run_id").read_text().strip()
        assert run.run.run_id == stored  # a resumed stage continues this run


def _folder(stage: str) -> str:
    return stage.replace("maps_", "maps/")


def test_scalars_are_the_stage_metrics(offline) -> None:
    runs_dir, runs, _ = offline
    for stage in ("maps_cls", "pseudo", "eval"):
        metrics = json.loads((runs_dir / "wb" / _folder(stage) / "metrics.json").read_text())
        scalars = runs[stage].scalars()
        for key in ("miou", "precision", "recall"):
            assert scalars[f"{stage}/{key}"] == pytest.approx(metrics[key], abs=1e-12), (stage, key)
    cls = runs["cls"].scalars()
    cls_metrics = json.loads((runs_dir / "wb" / "cls" / "metrics.json").read_text())
    assert cls["val/map"] == pytest.approx(cls_metrics["map"]) and "train/loss_epoch" in cls
    assert 0.0 <= runs["seg"].scalars()["val/miou"] <= 1.0


def test_each_stage_figure_is_an_image_of_its_run(offline) -> None:
    _, runs, _ = offline
    for stage, key in FIGURES.items():
        run = runs[stage]
        image = run.scalars()
        assert image[f"{key}._type"] == "images/separated" and image[f"{key}.count"] == 1, stage
        (name,) = image[f"{key}.filenames"]
        assert name in run.files and (run.folder / "files" / name).stat().st_size > 1000, stage


def test_the_per_class_iou_table_of_each_scoring_stage(offline) -> None:
    runs_dir, runs, _ = offline
    for stage in TABLES:
        run = runs[stage]
        path = run.scalars()[f"{stage}/per_class_iou.path"]
        table = json.loads((run.folder / "files" / path).read_text())
        assert table["columns"] == ["class", "iou"]
        csv = (runs_dir / "wb" / _folder(stage) / "per_class_iou.csv").read_text().splitlines()[1:]
        assert len(table["data"]) == len(csv) == 21
        for (name, iou), line in zip(table["data"], csv, strict=True):
            expected_name, expected_iou = line.rsplit(",", 1)
            assert name == expected_name
            assert iou == pytest.approx(float(expected_iou), nan_ok=True)  # nan: a class in neither
    assert table["data"][0][0] == "background"
    for stage in set(STAGES) - set(TABLES):
        assert not any(k.endswith("per_class_iou._type") for k in runs[stage].scalars())


def test_artifacts_reference_the_store_with_lineage(offline) -> None:
    """cls checkpoint -> maps -> pseudo labels -> segmenter -> eval: each run logs the artifact it made
    and uses the one it read, by reference to the store entry (no copies), named by identity."""
    runs_dir, runs, _ = offline
    made = {}
    for stage, run in runs.items():
        identity = json.loads((runs_dir / "wb" / _folder(stage) / "identity.json").read_text())["identity"]
        (out,) = run.outputs
        assert out.name == f"{stage}-{identity}"
        entry = (runs_dir / "store" / stage / identity).resolve()
        assert entry == (runs_dir / "wb" / _folder(stage)).resolve()
        refs = references(out)
        assert refs and all(ref.startswith(entry.as_uri() + "/") for ref in refs.values())
        assert f"{stage}/metrics.json" in refs and f"{stage}/.complete" in refs
        assert json.loads(out.metadata)["identity"] == identity
        made[stage] = out
    assert {a.type for a in made.values()} == {
        "classifier",
        "maps",
        "pseudo-labels",
        "segmenter",
        "evaluation",
    }
    assert "cls/checkpoints/best.ckpt" in references(made["cls"])
    for stage, up in UPSTREAM.items():
        used = runs[stage].inputs
        if up is None:
            assert used == []
            continue
        (artifact,) = used
        assert artifact.name == made[up].name and artifact.digest == made[up].digest  # the same version
    assert not any((runs_dir / "wb" / "wandb").rglob("best.ckpt"))  # referenced, never copied


def test_one_log_line_per_event(offline) -> None:
    _, _, out = offline
    assert len(re.findall(r"`Trainer.fit` stopped", out)) == 2  # cls and seg, each once
    assert "INFO: `Trainer.fit` stopped" not in out  # Lightning's own handler is gone
    assert out.count("GPU available:") == out.count("][INFO] GPU available:") == 3  # cls, maps_cls, seg


def test_the_pipeline_ends_with_the_metrics_of_its_stages(offline) -> None:
    runs_dir, _, out = offline
    summary = json.loads((runs_dir / "wb" / "summary.json").read_text())
    assert [row["stage"] for row in summary["stages"]] == STAGES
    assert {row["how"] for row in summary["stages"]} == {"ran"}
    for row in summary["stages"]:
        folder = runs_dir / "wb" / _folder(row["stage"])
        metrics = json.loads((folder / "metrics.json").read_text())
        assert row["metrics"]["miou" if "miou" in metrics else "loss"] == pytest.approx(
            metrics["miou" if "miou" in metrics else "loss"]
        )
        assert row["identity"] == json.loads((folder / "identity.json").read_text())["identity"]
    eval_miou = json.loads((runs_dir / "wb" / "eval" / "metrics.json").read_text())["miou"]
    table = out[out.index("metrics of the stages of wb") :]
    lines = table.splitlines()
    assert lines[1].split()[:5] == ["stage", "how", "miou", "precision", "recall"]
    assert [line.split()[0] for line in lines[2 : 2 + len(STAGES)]] == STAGES
    assert lines[1 + len(STAGES)].split()[:3] == ["eval", "ran", f"{eval_miou:.4f}"]
    md = (runs_dir / "wb" / "summary.md").read_text()
    assert md.startswith("# wb: metrics of each stage\n\n| stage | how | miou |")
    assert f"| eval | ran | {eval_miou:.4f} |" in md


def test_a_rerun_reuses_every_stage_and_still_ends_with_the_table(offline, tmp_path: Path) -> None:
    runs_dir, _, _ = offline
    paths = [f"paths.runs={runs_dir}", f"paths.data={runs_dir.parent / 'data'}"]
    proc = run_train([*ARGS, "exp=again", "logger=none", *paths])
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = json.loads((runs_dir / "again" / "summary.json").read_text())
    assert [(r["stage"], r["how"]) for r in summary["stages"]] == [(s, "reused") for s in STAGES]
    first = json.loads((runs_dir / "wb" / "summary.json").read_text())
    assert [r["metrics"] for r in summary["stages"]] == [r["metrics"] for r in first["stages"]]
    assert not (runs_dir / "again" / "wandb").exists()  # logger=none: no W&B run, no lineage call


def test_wandb_disabled_makes_no_run_and_no_artifact(tmp_path: Path) -> None:
    """The path WANDB_MODE=disabled (the suite's setting) takes: the W&B logger is built, but wandb
    writes nothing and the lineage module does nothing (wandb_lineage.active_run is None)."""
    import wandb

    from wsss.pipeline.wandb_lineage import active_run, log_stage

    run = wandb.init(mode="disabled", dir=str(tmp_path))
    try:
        assert active_run() is None
        log_stage(None, "cls", [])  # type: ignore[arg-type] - returns before touching the experiment
    finally:
        run.finish()
    assert not list(tmp_path.rglob("*.wandb"))


SUITE_ENV = {
    "WANDB_MODE": "test_wandb.py: WANDB_MODE=offline runs the default W&B logger on a pipeline",
    "NO_ALBUMENTATIONS_UPDATE": "only silences albumentations' update check (a network call)",
    "HYDRA_FULL_ERROR": "test_troubleshooting.py: run_train(tracebacks=False) runs without it (one block)",
    "OMP_NUM_THREADS": "speed only: one intra-op thread per test process",
}
"""Each variable the suite sets, and where the path it changes is tested (or why it changes none)."""


def test_every_variable_the_suite_sets_has_its_path_tested() -> None:
    makefile = (REPO / "Makefile").read_text()
    test_env = re.search(r"^TEST_ENV := (.*)$", makefile, re.M).group(1)
    conftest = (REPO / "tests" / "conftest.py").read_text()
    names = set(re.findall(r"([A-Z_]+)=", test_env)) | set(
        re.findall(r'os\.environ\.setdefault\("([A-Z_]+)"', conftest)
    )
    assert names == set(SUITE_ENV), names ^ set(SUITE_ENV)
    troubleshooting = (REPO / "tests" / "test_troubleshooting.py").read_text()
    assert "tracebacks=False" in troubleshooting


def test_a_sweep_report_is_a_run_of_its_own_with_the_table_and_figure(tmp_path: Path, monkeypatch) -> None:
    import wandb
    from test_report import job

    from wsss.experiments.report import report
    from wsss.pipeline.artifacts import write_json

    for key, value in wandb_env(tmp_path / "wandb").items():
        monkeypatch.setenv(key, value)
    sweep = tmp_path / "table4_seg_20261207-010000"
    result = job("table4_seg", ["segmenter=aspp_r101"], {"seed": 0.5, "pseudo": 0.6, "seg": 0.7}, source="refine",
                 segmenter="aspp_r101")  # fmt: skip
    write_json(sweep / "0" / "result.json", {k: v for k, v in result.items() if k != "job"})
    report(sweep)
    wandb.teardown()  # the W&B service process writes the run file: wait until it is done
    (folder,) = (sweep / "wandb").glob("offline-run-*")
    run = read_run(folder)
    assert run.run.job_type == "report" and run.run.run_group == sweep.name
    assert run.run.display_name == f"{sweep.name}/report"
    scalars = run.scalars()
    table = json.loads((folder / "files" / scalars["report/table.path"]).read_text())
    assert table["columns"][0] == "table" and len(table["data"]) == 1
    assert table["data"][0][0] == "table4_seg" and "DRS† ASPP-R101" in table["data"][0]
    assert scalars["report/figure._type"] == "image-file"
    assert (folder / "files" / scalars["report/figure.path"]).stat().st_size > 1000


def test_a_sweep_logs_its_report_to_wandb_only_with_the_wandb_logger(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from wsss.pipeline.wandb_lineage import uses_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_cfg = OmegaConf.create({"logger": {"_target_": "lightning.pytorch.loggers.WandbLogger"}})
    assert uses_wandb(wandb_cfg)
    assert not uses_wandb(OmegaConf.create({"logger": {"_target_": "lightning.pytorch.loggers.CSVLogger"}}))
    assert not uses_wandb(OmegaConf.create({"logger": None}))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not uses_wandb(wandb_cfg)
