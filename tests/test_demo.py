"""make demo's bookkeeping: the table is read from the variants' metrics files (the runs are e2e-tested)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsss.experiments.demo import SCHEDULE, VARIANTS, collect, print_table
from wsss.pipeline.artifacts import Experiment, write_json


def test_table_reads_each_variants_own_maps_pseudo_and_eval(tmp_path: Path, capsys) -> None:
    for k, v in enumerate(VARIANTS):
        exp = Experiment(tmp_path / v.key)
        if v.maps_stage is None:  # the oracle: no maps
            write_json(exp.stage_dir("pseudo") / "metrics.json", {"miou": 1.0, "ignore_ratio": 0.0})
            write_json(exp.stage_dir("eval") / "metrics.json", {"miou": 0.9})
            continue
        write_json(
            exp.stage_dir(v.maps_stage) / "metrics.json",
            {"miou": 0.30 + k / 100, "best_threshold": 0.25 + k / 10, "best_threshold_at_edge": k == 2},
        )
        write_json(
            exp.stage_dir("pseudo") / "metrics.json",
            {"miou": 0.5 + k / 100, "precision": 0.8, "recall": 0.6, "ignore_ratio": 0.1},
        )
    write_json(Experiment(tmp_path / "cam").stage_dir("eval") / "metrics.json", {"miou": 0.2})
    rows = collect(tmp_path)
    assert [r["seed_miou"] for r in rows[:4]] == pytest.approx([0.30, 0.31, 0.32, 0.33])
    assert rows[4]["variant"].startswith("Oracle") and rows[4]["seed_miou"] is None
    assert rows[4]["pseudo_miou"] == 1.0 and rows[4]["seg_miou"] == 0.9
    assert rows[3]["pseudo_miou"] == pytest.approx(0.53) and rows[3]["pseudo_ignored"] == 0.1
    assert rows[0]["seg_miou"] == 0.2 and rows[1]["seg_miou"] is None  # dagger reads maps/refine
    assert VARIANTS[3].maps_stage == "maps_refine"
    assert SCHEDULE.index("dagger") < SCHEDULE.index("drs")  # DRS† first: DRS reuses its classifier
    print_table(rows)
    out = capsys.readouterr().out
    assert "Oracle (ground-truth labels)" in out and "90.0" in out and "100.0" in out
    assert "30.0" in out and "53.0" in out and "20.0" in out and "DRS† (learnable + refine)" in out
    assert rows[2]["best_threshold_at_edge"] is True and rows[1]["best_threshold_at_edge"] is False
    assert "0.45!" in out and "0.35 " in out and "0.35!" not in out  # the edge flag marks 0.45 only


def test_controller_table_reads_the_learnable_classifiers_log(tmp_path: Path, capsys) -> None:
    from wsss.experiments.demo import controller_rows, print_controller
    from wsss.tasks.controller_log import CSV, write_rows

    assert controller_rows(tmp_path) == []
    rows = [
        {
            "epoch": e,
            "step": 5 * (e + 1),
            "layer": n,
            "channels": 8,
            "g_mean": g,
            "g_sd": 0.01,
            "g_min": g,
            "g_max": g,
        }
        for e, g in ((-1, 0.5), (0, 0.52), (1, 0.61))
        for n in ("layer1", "layer6.3")
    ]
    write_rows(Experiment(tmp_path / "drs").stage_dir("cls") / CSV, rows)
    assert controller_rows(tmp_path) == rows
    print_controller(rows)
    out = capsys.readouterr().out.splitlines()
    assert "layer6.3" in out[1] and out[2].split()[:4] == ["-1", "0.500", "±", "0.010"]
    assert out[-1].split()[0] == "1" and "0.610 ± 0.010" in out[-1] and len(out) == 5


def test_seed_table_and_figure_come_while_the_segmenters_train(tmp_path: Path, monkeypatch, capsys) -> None:
    """The early table is printed once CAM's and DRS†'s classifier maps are complete (DRS† makes DRS's),
    while the pipelines still run; the default leaves delta out, --variants adds it."""
    import threading

    import wsss.experiments.demo as demo
    from wsss.pipeline.artifacts import COMPLETE

    calls: list[str] = []
    early_printed = threading.Event()

    def fake_variant(variant, runs, extra, threads) -> None:
        calls.append(variant.key)
        exp = Experiment(runs / variant.key)
        if variant.key in ("cam", "dagger", "drs"):
            write_json(exp.stage_dir("maps_cls") / "metrics.json", {"miou": 0.4, "best_threshold": 0.3})
            (exp.stage_dir("maps_cls") / COMPLETE).touch()
        if variant.key == "drs":  # the last pipeline: it ends only after the early table is out
            assert early_printed.wait(10)
        write_json(exp.stage_dir("eval") / "metrics.json", {"miou": 0.5})

    def fake_figure(runs, out, data_root, sources=None, n_images=6):
        print(f"figure from {sorted((sources or {}).values())}")
        if sources:
            early_printed.set()
        return out

    threads: list[int] = []
    monkeypatch.setattr(demo, "pretrain", lambda runs, extra, t: threads.append(t) or runs / "w.ckpt")
    monkeypatch.setattr(demo, "run_variant", fake_variant)
    monkeypatch.setattr(demo, "figure", fake_figure)
    monkeypatch.setattr(demo, "_toy_root", lambda runs: runs)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    demo.main(["--runs", str(tmp_path / "demo"), "--jobs", "2"])
    assert calls == ["dagger", "cam", "gt", "drs"] and threads == [2]  # no delta; pre-training on both cores
    out = capsys.readouterr().out
    early = out.index("figure from ['cam', 'dagger']")
    assert out.index("40.0") < early < out.rindex("Oracle (ground-truth labels)")  # the final table
    assert "DRS (delta 0.55)" not in out and out.index("figure from []") > early
    calls.clear()
    demo.main(
        ["--runs", str(tmp_path / "demo2"), "--jobs", "1", "--variants", "cam", "drs", "dagger", "delta"]
    )
    assert calls == ["dagger", "cam", "drs", "delta"]
    assert "DRS (delta 0.55)" in capsys.readouterr().out
    demo.main(["--runs", str(tmp_path / "demo3"), "--jobs", "1", "--variants", "cam", "drs"])
    assert "figure from ['cam', 'drs']" in capsys.readouterr().out  # without DRS†, DRS's own maps


def test_a_failed_pipeline_stops_the_wait_for_the_early_table(tmp_path: Path) -> None:
    from concurrent.futures import Future

    from wsss.experiments.demo import wait_for_early

    failed: Future = Future()
    failed.set_exception(RuntimeError("demo step 'cam' failed"))
    with pytest.raises(RuntimeError, match="demo step 'cam' failed"):
        wait_for_early(tmp_path, [failed], poll_s=0.01)
    finished: Future = Future()
    finished.set_result(None)
    assert wait_for_early(tmp_path, [finished], poll_s=0.01) is False
