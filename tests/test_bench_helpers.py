"""The benchmark helpers under bench/: interleaved timing, ratios, the results.json schema, the runner,
the GPU script's CPU fallback, and wsss.tasks.memory. No timed assertions."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import results  # noqa: E402
import timing  # noqa: E402


def test_interleave_runs_round_by_round_after_warmup():
    calls = []
    variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = timing.interleave(variants, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert list(times) == ["a", "b"] and all(len(t) == 3 for t in times.values())


def test_interleave_records_a_returned_measurement_instead_of_the_call_time():
    times = timing.interleave({"x": lambda: 0.125}, rounds=2, warmup=0)
    assert times == {"x": [0.125, 0.125]}
    with pytest.raises(ValueError, match="at least one timed round"):
        timing.interleave({"x": lambda: None}, rounds=0)


def test_interleave_both_times_the_same_calls_by_cpu_and_wall_clock():
    both = timing.interleave_both({"sleep": lambda: __import__("time").sleep(0.05)}, rounds=2, warmup=0)
    assert set(both) == {"cpu", "wall"}
    assert len(both["cpu"]["sleep"]) == len(both["wall"]["sleep"]) == 2
    assert min(both["wall"]["sleep"]) >= 0.05 > max(both["cpu"]["sleep"])  # sleeping costs no CPU


def test_clock_choice_is_checked():
    timing.set_clock("cpu")
    try:
        assert timing.clock_name() == "cpu"
        with pytest.raises(ValueError, match="choose one of"):
            timing.set_clock("gpu")
    finally:
        timing.set_clock("wall")


def constant_factory(value: float):
    """A variant for interleave_in_processes: built in the child, reports ``value`` as its seconds."""
    return lambda: value


def failing_factory():
    raise RuntimeError("cannot build")


def test_interleave_in_processes_asks_each_variant_in_its_process():
    times = timing.interleave_in_processes(
        {"a": (constant_factory, {"value": 0.5}), "b": (constant_factory, {"value": 0.25})},
        rounds=2,
        warmup=1,
    )
    assert times == {"a": [0.5, 0.5], "b": [0.25, 0.25]}
    with pytest.raises(RuntimeError, match="variant 'x' failed in its process: RuntimeError: cannot build"):
        timing.interleave_in_processes({"x": (failing_factory, {})}, rounds=1)


def test_speedup_is_best_baseline_over_best_candidate():
    assert timing.speedup([3.0, 2.0, 4.0], [1.5, 1.0]) == 2.0
    assert timing.best([0.3, 0.1, 0.2]) == 0.1
    with pytest.raises(ValueError, match="must take time"):
        timing.speedup([1.0], [0.0])


def test_summarize_gives_rates_at_the_best_round():
    out = timing.summarize({"a": [2.0, 4.0], "b": [1.0]}, {"a": 10, "b": 3}, "images")
    assert out["a"] == {"seconds": 2.0, "images_per_s": 5.0, "rounds": [2.0, 4.0]}
    assert out["b"]["images_per_s"] == 3.0


def test_figure_met_follows_the_bound():
    assert results.ratio("r", 1.3, "base", 1.2).met is True
    assert results.ratio("r", 1.1, "base", 1.2).met is False
    assert results.Figure("m", 1.02, "x", baseline="b", target=1.05, at_most=True).met is True
    assert results.Figure("m", 1.2, "x", baseline="b", target=1.05, at_most=True).met is False
    assert results.Figure("n", 5.0, "s").met is None
    assert results.Figure("nan", float("nan"), "x", baseline="b", target=1.0).to_dict()["value"] is None


def valid_results() -> dict:
    fig = results.ratio("release/maps/vgg16", 1.25, "release loop", 1.2, "4 images").to_dict()
    return {
        "schema": results.SCHEMA,
        "machine": {k: "?" for k in results.MACHINE_KEYS},
        "benchmarks": {"release": {"sizes": "small", "seconds": 1.0, "figures": [fig], "error": None}},
    }


def test_validate_accepts_a_complete_file_and_names_what_is_missing():
    data = valid_results()
    results.validate(data)
    del data["machine"]["cpu_model"]
    with pytest.raises(ValueError, match="lacks \\['cpu_model'\\]"):
        results.validate(data)
    data = valid_results()
    data["benchmarks"]["release"]["figures"][0]["baseline"] = None
    with pytest.raises(ValueError, match="names no baseline"):
        results.validate(data)
    data = valid_results()
    del data["benchmarks"]["release"]["figures"][0]["met"]
    with pytest.raises(ValueError, match="lacks \\['met'\\]"):
        results.validate(data)
    with pytest.raises(ValueError, match="schema"):
        results.validate({**valid_results(), "schema": 0})


def test_table_shows_targets_and_errors():
    data = valid_results()
    data["benchmarks"]["broken"] = {
        "sizes": "",
        "seconds": 0.0,
        "figures": [],
        "error": "Traceback\nKeyError: 'x'",
    }
    text = results.table(data)
    assert ">= 1.2 met" in text and "1.25 x" in text
    assert "ERROR" in text and "KeyError: 'x'" in text


def test_machine_names_cpu_cores_threads_torch():
    info = results.machine()
    assert set(results.MACHINE_KEYS) <= set(info)
    assert info["cores"] >= 1 and info["threads"] >= 1 and info["device"] == "cpu"


def test_runner_writes_one_results_file_and_keeps_going_after_a_crash(tmp_path, monkeypatch):
    import run

    good = types.ModuleType("bench_fake_good")
    good.run = lambda opts: results.Section(
        "tiny", [results.ratio("fake/ratio", 2.0, "fake base", 1.0)], {"k": 1}
    )
    bad = types.ModuleType("bench_fake_bad")

    def crash(opts):
        raise RuntimeError("broken benchmark")

    bad.run = crash
    monkeypatch.setitem(sys.modules, "bench_fake_good", good)
    monkeypatch.setitem(sys.modules, "bench_fake_bad", bad)
    monkeypatch.setattr(run, "BENCHMARKS", {"bad": "bench_fake_bad", "good": "bench_fake_good"})
    out = tmp_path / "results.json"
    assert run.main(["--out", str(out)]) == 1
    data = json.loads(out.read_text())
    results.validate(data)
    assert "RuntimeError: broken benchmark" in data["benchmarks"]["bad"]["error"]
    assert data["benchmarks"]["good"]["figures"][0]["met"] is True
    assert data["machine"]["threads"] == 1
    assert data["settings"]["clock"] == "cpu"
    timing.set_clock("wall")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_script_skips_cleanly_without_a_gpu(tmp_path, capsys):
    import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 0
    assert "no CUDA GPU here; skipping" in capsys.readouterr().out
    assert not out.exists()


def test_gpu_script_cpu_smoke_writes_every_section(tmp_path):
    import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    results.validate(data)
    assert set(data["benchmarks"]) == {"train", "loader", "maps"}
    train = data["benchmarks"]["train"]["details"]["train"]
    assert {"release/cls", "cls/tiny/fp32", "seg/largefov_tiny/bf16_channels_last"} <= set(train)
    assert all("images_per_s" in row for row in train.values())


def test_gpu_budget_records_skipped_measurements(monkeypatch):
    import gpu

    size = gpu.sizes(tiny=True)
    section = gpu.train_section(size, __import__("torch").device("cpu"), gpu.Budget(0.0), box=1.0)
    rows = section.details["train"]
    assert rows and all(row["skipped"].startswith("time budget") for row in rows.values())
    assert section.figures == []


def test_retain_freed_memory_sets_glibc_thresholds():
    from wsss.tasks.memory import GLIBC_MAX_DYNAMIC, retain_freed_memory, set_malloc_thresholds

    with pytest.raises(ValueError, match="give 1 .."):
        retain_freed_memory(0)
    if sys.platform.startswith("linux"):
        assert retain_freed_memory() is True
        assert set_malloc_thresholds(GLIBC_MAX_DYNAMIC, 2 * GLIBC_MAX_DYNAMIC) is True
