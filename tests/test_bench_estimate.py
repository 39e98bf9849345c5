"""The cost model's arithmetic (wsss.bench.estimate) and the step timer's (wsss.bench.measure)."""

from __future__ import annotations

import pytest

from wsss.bench.estimate import (
    VOC_IMAGES,
    Rate,
    Work,
    epoch_steps,
    format_projection,
    project,
    stage_seconds,
    sweep_cost,
    voc_work,
)
from wsss.bench.measure import StepTimer, loop_seconds_per_step, seconds_per_image


def test_stage_seconds_is_steps_times_rate_plus_images_and_fixed():
    assert stage_seconds(Work("cls", steps=1000), Rate(seconds_per_step=0.25)) == 250.0
    work = Work("seg", steps=10, images=4)
    assert stage_seconds(work, Rate(seconds_per_step=2.0, seconds_per_image=0.5, fixed_seconds=3.0)) == 25.0


def test_project_sums_stages_and_names_a_missing_rate():
    works = [Work("cls", steps=100), Work("maps_cls", images=50)]
    out = project(works, {"cls": Rate(seconds_per_step=0.1), "maps_cls": Rate(seconds_per_image=0.2)})
    assert out == pytest.approx({"cls": 10.0, "maps_cls": 10.0, "total": 20.0})
    with pytest.raises(KeyError, match=r"no measured rate for stage\(s\) \['maps_cls'\]"):
        project(works, {"cls": Rate(seconds_per_step=0.1)})


def test_epoch_steps_drops_the_partial_batch():
    assert epoch_steps(10_582, 5, 15) == 2116 * 15
    assert epoch_steps(11, 5, 2, drop_last=False) == 6
    with pytest.raises(ValueError, match="batch_size"):
        epoch_steps(10, 0, 1)


def test_voc_work_counts_the_paper_recipe():
    works = {w.stage: w for w in voc_work()}
    assert list(works) == ["cls", "maps_cls", "refine", "maps_refine", "pseudo", "seg", "eval"]
    assert works["cls"] == Work("cls", steps=31_740, images=15 * 1_449)
    assert works["refine"].steps == 31_740 and works["refine"].images == 0
    assert works["maps_cls"].images == works["maps_refine"].images == works["pseudo"].images == 10_582
    assert works["seg"] == Work("seg", steps=20_000, images=10 * 1_449)
    assert works["eval"].images == VOC_IMAGES["val"]
    no_refine = [w.stage for w in voc_work(refine=False, seg_val_every=None)]
    assert no_refine == ["cls", "maps_cls", "pseudo", "seg", "eval"]
    assert voc_work(seg_val_every=None)[-2].images == 0
    release_seg = voc_work(seg_steps=10_000, seg_accumulate=2)[-2]  # 10k steps at batch 10 = 2 x 5
    assert release_seg == Work("seg", steps=20_000, images=5 * 1_449)
    with pytest.raises(ValueError, match="seg_accumulate=0"):
        voc_work(seg_accumulate=0)


def test_sweep_counts_each_shared_identity_once():
    upstream = [("cls", "a"), ("maps_cls", "a"), ("pseudo", "a")]
    jobs = [upstream + [("seg", "vgg")], upstream + [("seg", "r101")], upstream + [("seg", "aspp")]]
    seconds = {"cls": 100.0, "maps_cls": 10.0, "pseudo": 1.0, ("seg", "aspp"): 50.0, "seg": 20.0}
    cost = sweep_cost(jobs, seconds)
    assert cost.shared == 100 + 10 + 1 + 20 + 20 + 50
    assert cost.unshared == 3 * 111 + 20 + 20 + 50
    assert (cost.stage_runs_shared, cost.stage_runs_unshared) == (6, 12)
    assert cost.saved == 2 * 111
    with pytest.raises(KeyError, match="'eval'"):
        sweep_cost([[("eval", "x")]], seconds)


def test_negative_counts_and_rates_are_refused():
    with pytest.raises(ValueError, match="cannot be negative"):
        Work("cls", steps=-1)
    with pytest.raises(ValueError, match="negative seconds"):
        Rate(seconds_per_step=-0.1)


def test_format_projection_prints_hours_and_shares():
    text = format_projection({"cls": 5400.0, "seg": 1800.0, "total": 7200.0})
    assert "cls" in text and "1.50" in text and "75.0%" in text and "100.0%" in text


def test_step_timer_averages_the_steps_after_warmup():
    timer = StepTimer()
    timer.starts = [0.0, 1.0, 1.5, 2.0]
    timer.end = 2.5
    assert timer.seconds_per_step(warmup=1) == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="needs more than warmup=4"):
        timer.seconds_per_step(warmup=4)


def test_loop_timer_cycles_the_loader_through_warmup_and_steps():
    seen = []
    assert loop_seconds_per_step(seen.append, [1, 2], steps=3, warmup=2) >= 0
    assert seen == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="at least one step"):
        loop_seconds_per_step(seen.append, [1], steps=0)


def test_seconds_per_image_skips_warmup_batches():
    seen = []
    assert seconds_per_image(seen.append, [[1, 2], [3], [4, 5]], len, warmup=1) >= 0
    assert seen == [[1, 2], [3], [4, 5]]
    with pytest.raises(ValueError, match="more than warmup=1"):
        seconds_per_image(seen.append, [[1]], len)
