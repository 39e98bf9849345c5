"""Sweep reports: paper rows matched by settings, spreads over seeds, the release column, failures, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsss.experiments.paper import PAPER_T1, PAPER_T2, PAPER_T3, PAPER_T4, JobSettings
from wsss.experiments.report import build_rows, report
from wsss.pipeline.artifacts import write_json

LAYERS = ["layer1", "layer2", "layer3", "layer4", "layer5", "layer6"]


def settings(
    mode="learnable", delta=0.55, placement=LAYERS, source="cls", segmenter="largefov_vgg16", seed=0
):
    return {"mode": mode, "delta": delta, "placement": list(placement), "source": source,
            "segmenter": segmenter, "seed": seed, "protocol": "paper"}  # fmt: skip


def job(sweep: str, overrides: list[str], values: dict, **kw) -> dict:
    s = settings(**kw)
    source = s["source"]
    metrics = {
        f"maps_{source}/miou": values.get("seed"),
        "pseudo/miou": values.get("pseudo"),
        "eval/miou": values.get("seg"),
    }
    return {"overrides": overrides, "sweep": sweep, "settings": s, "status": "ok", "job": "0",
            "metrics": {k: v for k, v in metrics.items() if v is not None}}  # fmt: skip


@pytest.mark.parametrize(
    ("sweep", "kw", "label", "paper"),
    [
        ("table1_delta", {"mode": "fixed", "delta": 0.9}, "delta 0.9", 51.9),
        ("table1_delta", {"mode": "fixed", "delta": 0.55}, "delta 0.55", 62.8),
        (
            "table1_delta",
            {"mode": "learnable", "delta": 0.9},
            "learnable",
            62.9,
        ),  # delta unused: still learnable
        ("table2_layers", {"placement": []}, "none", 50.1),
        ("table2_layers", {"placement": ["layer6"]}, "layer 6", 60.8),
        ("table2_layers", {"placement": ["layer4", "layer5", "layer6"]}, "layer 4-6", 62.8),
        ("table2_layers", {"placement": LAYERS}, "layer 1-6", 62.9),
        ("table2_layers", {"placement": LAYERS[:4]}, "layer 1-4", 53.6),
        ("table3_refine", {"source": "refine"}, "learnable + DRS†", 63.5),
        ("table3_refine", {"mode": "fixed", "source": "cls"}, "delta 0.55", 62.8),
        ("table3_refine", {"mode": "fixed", "source": "refine"}, "delta 0.55 + DRS†", 63.6),
        ("table4_seg", {"source": "refine", "segmenter": "aspp_r101"}, "DRS† ASPP-R101", 70.4),
        (
            "table4_seg",
            {"mode": "fixed", "source": "refine", "segmenter": "largefov_r101"},
            "DRS† (delta 0.55) LargeFOV-R101",
            66.8,
        ),
    ],
)
def test_rows_resolve_to_the_paper_number_from_the_settings(
    sweep: str, kw: dict, label: str, paper: float
) -> None:
    assert JobSettings.from_dict(settings(**kw)).label(sweep) == label
    rows, _ = build_rows([job(sweep, ["x=1"], {"seg": 0.5}, **kw)])
    assert rows[0].label == label and rows[0].paper == paper


def test_every_paper_row_has_a_setting_that_reaches_it() -> None:
    reached = {
        "table1_delta": {JobSettings.from_dict(settings(mode="fixed", delta=d)).label("table1_delta") for d in (0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4)} | {"learnable"},
        "table2_layers": {JobSettings.from_dict(settings(placement=LAYERS[i:j])).label("table2_layers") for i in range(6) for j in range(i, 7)},
        "table3_refine": {JobSettings.from_dict(settings(mode=m, source=s)).label("table3_refine") for m in ("learnable", "fixed") for s in ("cls", "refine")},
        "table4_seg": {JobSettings.from_dict(settings(mode=m, source="refine", segmenter=g)).label("table4_seg") for m in ("learnable", "fixed") for g in ("largefov_vgg16", "largefov_r101", "aspp_r101")},
    }  # fmt: skip
    for table, paper in (
        ("table1_delta", PAPER_T1),
        ("table2_layers", PAPER_T2),
        ("table3_refine", PAPER_T3),
        ("table4_seg", PAPER_T4),
    ):
        assert set(paper) <= reached[table], table


def test_seeds_give_mean_sd_and_n_and_the_spread_is_marked(tmp_path: Path) -> None:
    results = [
        job("table1_delta", ["drs.delta=0.55", f"seed={s}"], {"seg": v}, mode="fixed", delta=0.55, seed=s)
        for s, v in enumerate((0.60, 0.62, 0.64))
    ]
    results += [
        job("table1_delta", ["drs.delta=0.9", f"seed={s}"], {"seg": v}, mode="fixed", delta=0.9, seed=s)
        for s, v in enumerate((0.58, 0.61, 0.60))
    ]
    results += [
        job("table1_delta", ["drs.delta=0.4", f"seed={s}"], {"seg": v}, mode="fixed", delta=0.4, seed=s)
        for s, v in enumerate((0.40, 0.41, 0.42))
    ]
    rows, failed = build_rows(results)
    assert [r.label for r in rows] == ["delta 0.9", "delta 0.55", "delta 0.4"]  # the paper's order
    mean, sd, n = rows[1].stat("seg")
    assert (round(mean, 6), round(sd, 6), n) == (62.0, 2.0, 3)
    assert rows[1].mark == "best" and rows[0].mark == "within spread of best" and rows[2].mark == ""
    assert not failed


def test_report_files_list_failures_and_match_the_release_column(tmp_path: Path) -> None:
    good = job(
        "table4_seg",
        ["drs=learnable", "segmenter=aspp_r101"],
        {"seed": 0.5, "pseudo": 0.6, "seg": 0.7},
        source="refine",
        segmenter="aspp_r101",
    )
    bad = {"overrides": ["drs=fixed", "segmenter=aspp_r101"], "sweep": "table4_seg", "settings": None, "status": "failed",
           "metrics": {}, "error": "ConfigError: seg.accumulate=0; give 1 ..."}  # fmt: skip
    for i, result in enumerate((good, bad)):
        write_json(tmp_path / str(i) / "result.json", {k: v for k, v in result.items() if k != "job"})
    text = report(tmp_path, wandb_log=False)
    assert "| DRS† ASPP-R101 | 50.0 | 60.0 | 70.0 | 1 | 70.4 | 69.4 (70.4 CRF) |" in text
    assert (
        "**1 job(s) failed**" in text
        and "job 1 (drs=fixed segmenter=aspp_r101): ConfigError: seg.accumulate=0" in text
    )
    assert "ground truth on VOC train" in text
    csv = (tmp_path / "report.csv").read_text().splitlines()
    assert csv[0] == "table,setting,seed mIoU,pseudo mIoU,seg mIoU,n,paper,release,note"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["failed"][0]["job"] == "1" and data["rows"][0]["paper"] == 70.4
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_a_missing_sweep_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="did the sweep run"):
        report(tmp_path, wandb_log=False)
