"""The cost model: its arithmetic (wsss.bench.estimate), its plan of a command (wsss.bench.plan: stages,
counts from the recipe, shared identities of a sweep), the probe's timing arithmetic (wsss.bench.trial)
and the step timer (wsss.bench.measure). No timing is asserted: measured rates are stubbed."""

from __future__ import annotations

import pytest

from wsss.bench.costs import VOC_IMAGES, Rate, Work, project, stage_seconds, sweep_cost
from wsss.bench.estimate import format_projection, format_report, measure_rates, projection, with_pipeline
from wsss.bench.measure import StepTimer, loop_seconds_per_step, seconds_per_image
from wsss.bench.plan import (
    VOC,
    batches_per_epoch,
    cost_key,
    dataset_for,
    job_overrides,
    plan,
    seg_validations,
    shared_runs,
    stage_work,
)
from wsss.bench.trial import predict_rate, stage_walls, trainer_rates, upstream_closure

# --- arithmetic -----------------------------------------------------------------------------------


def test_stage_seconds_is_counts_times_rates_plus_fixed():
    assert stage_seconds(Work("cls", steps=1000), Rate(seconds_per_step=0.25)) == 250.0
    work = Work("seg", steps=10, images=4, scored=2, epochs=3)
    rate = Rate(
        seconds_per_step=2.0,
        seconds_per_image=0.5,
        seconds_per_scored=0.25,
        seconds_per_epoch=1.0,
        fixed_seconds=3.0,
    )
    assert stage_seconds(work, rate) == 3.0 + 20.0 + 2.0 + 0.5 + 3.0


def test_project_sums_stages_and_names_a_missing_rate():
    works = [Work("cls", steps=100), Work("maps_cls", images=50)]
    out = project(works, {"cls": Rate(seconds_per_step=0.1), "maps_cls": Rate(seconds_per_image=0.2)})
    assert out == pytest.approx({"cls": 10.0, "maps_cls": 10.0, "total": 20.0})
    with pytest.raises(KeyError, match=r"no measured rate for stage\(s\) \['maps_cls'\]"):
        project(works, {"cls": Rate(seconds_per_step=0.1)})


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
        Rate(seconds_per_epoch=-0.1)


def test_format_projection_prints_hours_and_shares():
    text = format_projection({"cls": 5400.0, "seg": 1800.0, "total": 7200.0})
    assert "cls" in text and "1.50" in text and "75.0%" in text and "100.0%" in text


# --- counts of a recipe ---------------------------------------------------------------------------


def test_batches_per_epoch_drops_the_partial_batch_and_follows_the_limit():
    assert batches_per_epoch(10_582, 5) == 2116
    assert batches_per_epoch(3, 5) == 1  # a split smaller than a batch: one partial batch
    assert batches_per_epoch(100, 5, limit=7) == 7
    assert batches_per_epoch(100, 5, limit=0.5) == 10
    assert batches_per_epoch(100, 5, limit=1.0) == 20
    with pytest.raises(ValueError, match="batch size 0"):
        batches_per_epoch(10, 0)


def test_seg_validations_add_the_final_network_when_off_the_grid():
    assert seg_validations(20_000, 2_000) == 10
    assert seg_validations(2_400, 1_000) == 3  # at 1,000 and 2,000, then the final network
    assert seg_validations(20, None) == 0


@pytest.fixture(scope="module")
def paper_plan():
    return {s.stage: s for s in plan(["stage=pipeline", "experiment=paper_vgg16"])[0].stages}


def test_paper_pipeline_counts_on_voc(paper_plan):
    assert list(paper_plan) == ["cls", "maps_cls", "refine", "maps_refine", "pseudo", "seg", "eval"]
    assert paper_plan["cls"].work == Work("cls", steps=2116 * 15, images=15 * 1_449, epochs=15)
    assert paper_plan["refine"].work == Work("refine", steps=2116 * 15, epochs=15)
    for maps in ("maps_cls", "maps_refine", "pseudo"):
        assert paper_plan[maps].work == Work(maps, images=10_582, scored=1_464)
    # 20k steps of batch 5; validation every 2,000 steps; 20,000 / 2,116 batches per epoch -> 10 epochs
    assert paper_plan["seg"].work == Work("seg", steps=20_000, images=10 * 1_449, epochs=10)
    assert paper_plan["eval"].work == Work("eval", images=VOC_IMAGES["val"])


def test_release_counts_follow_its_protocol():
    from wsss.pipeline.config import compose

    cfg = compose(["stage=pipeline", "experiment=release"])
    assert stage_work(cfg, "refine", VOC) == Work("refine", steps=2116 * 30, epochs=30)
    assert stage_work(cfg, "seg", VOC).steps == 40_000  # 20k iterations of 2 accumulated batches of 5


def test_trainer_overrides_and_debug_limits_shorten_the_counts():
    from wsss.pipeline.config import compose

    cfg = compose(["experiment=paper_vgg16", "+trainer.max_epochs=2", "trainer.limit_train_batches=10"])
    assert stage_work(cfg, "cls", VOC) == Work("cls", steps=20, images=2 * 1_449, epochs=2)
    cfg = compose(["experiment=paper_vgg16", "trainer.limit_val_batches=0", "seg.max_steps=100"])
    assert stage_work(cfg, "seg", VOC) == Work("seg", steps=100, images=0, epochs=1)


def test_toy_recipe_is_projected_onto_its_own_data():
    from wsss.pipeline.config import compose

    cfg = compose(["experiment=toy", "data.toy.num_train=24", "data.toy.num_val=8", "cls.epochs=3"])
    data = dataset_for(cfg)
    assert data.name == "toy" and data.image_hw == (96, 96)
    assert stage_work(cfg, "cls", data) == Work("cls", steps=3 * 3, images=3 * 8, epochs=3)
    assert dataset_for(cfg, "voc") is VOC
    with pytest.raises(KeyError, match="split 'all' has no known size on voc"):
        VOC.images("all")


# --- the plan of a command --------------------------------------------------------------------------


def test_a_recipe_alone_means_its_pipeline():
    assert with_pipeline(["experiment=toy"]) == ["stage=pipeline", "experiment=toy"]
    assert with_pipeline(["stage=seg", "experiment=toy"]) == ["stage=seg", "experiment=toy"]
    assert with_pipeline(["sweep=table4_seg"]) == ["sweep=table4_seg"]


def test_plan_follows_the_stage_declarations():
    no_refine = plan(["stage=pipeline", "experiment=toy", "pseudo.source=cls"])[0]
    assert [s.stage for s in no_refine.stages] == ["cls", "maps_cls", "pseudo", "seg", "eval"]
    alone = plan(["stage=seg", "experiment=toy"])[0]
    assert [s.stage for s in alone.stages] == ["seg"]
    assert upstream_closure(alone.cfg, ["seg"]) == [
        "cls",
        "maps_cls",
        "refine",
        "maps_refine",
        "pseudo",
        "seg",
    ]


def test_sweeps_need_multirun_and_expand_like_the_sweeper():
    with pytest.raises(ValueError, match="add -m"):
        job_overrides(["experiment=toy", "drs.delta=0.4,0.55"], multirun=False)
    jobs = job_overrides(["experiment=toy", "drs=fixed", "drs.delta=0.4,0.55"], multirun=True)
    assert len(jobs) == 2 and {"drs.delta=0.4", "drs.delta=0.55"} == {j[-1] for j in jobs}
    seeded = job_overrides(["experiment=toy", "seeds=[0,1,2]"], multirun=True)
    assert sorted(j[-1] for j in seeded) == ["seed=0", "seed=1", "seed=2"]


@pytest.fixture(scope="module")
def table4():
    return plan(["sweep=table4_seg", "experiment=paper_vgg16"], multirun=True)


def test_table4_shares_the_classifier_chain_between_segmenters(table4):
    assert len(table4) == 6  # drs learnable/fixed x three segmenters
    counts = shared_runs(table4)
    for stage in ("cls", "maps_cls", "refine", "maps_refine", "pseudo"):
        identities = {i for (s, i), n in counts.items() if s == stage}
        assert len(identities) == 2 and all(counts[(stage, i)] == 3 for i in identities)
    assert len({i for (s, i) in counts if s == "seg"}) == 6
    cost = sweep_cost([job.runs() for job in table4], dict.fromkeys(counts, 1.0))
    assert (cost.stage_runs_shared, cost.stage_runs_unshared) == (2 * 5 + 6 * 2, 6 * 7)


def test_cost_keys_follow_speed_not_seeds_or_rates():
    from wsss.pipeline.config import compose

    base = compose(["experiment=paper_vgg16"])
    assert cost_key(base, "cls") == cost_key(
        compose(["experiment=paper_vgg16", "seed=3", "cls.lr=0.01"]), "cls"
    )
    assert cost_key(base, "cls") != cost_key(compose(["experiment=paper_vgg16", "backbone=resnet50"]), "cls")
    assert cost_key(base, "seg") != cost_key(
        compose(["experiment=paper_vgg16", "segmenter=aspp_r101"]), "seg"
    )
    # the refined maps come from the refiner, whatever DRS the classifier had
    fixed = compose(["experiment=paper_vgg16", "drs=fixed"])
    assert cost_key(base, "maps_refine") == cost_key(fixed, "maps_refine")
    assert cost_key(base, "maps_cls") != cost_key(fixed, "maps_cls")


def test_each_cost_key_is_probed_once(table4, monkeypatch):
    import wsss.bench.trial as probe_module

    calls = []

    def fake_probe(cfg, stages, data, keep=None):
        calls.append(list(stages))
        return {name: Rate(fixed_seconds=1.0) for name in upstream_closure(cfg, stages)}

    monkeypatch.setattr(probe_module, "probe", fake_probe)
    rates = measure_rates(table4, "auto")
    assert calls[0] == ["cls", "maps_cls", "refine", "maps_refine", "pseudo", "seg", "eval"]
    probed_segs = sum(c.count("seg") for c in calls)
    assert probed_segs == 3  # three segmenters; the fixed-DRS jobs only need their classifier measured
    assert {s.cost_key for job in table4 for s in job.stages} <= set(rates)
    result = projection(table4, rates)
    assert result["sweep"]["stage_runs_shared"] == 22 and result["sweep"]["shared"] == 22.0
    assert "sharing saves" in format_report(result, "voc")


def test_dry_run_report_names_what_jobs_share(table4):
    text = format_report(projection(table4, None), "voc")
    assert (
        "3 job(s)" in text and "22 stage runs with shared stages made once, 42 with every job alone" in text
    )


# --- the probe's timing arithmetic ----------------------------------------------------------------


def test_trainer_rates_from_batch_end_times():
    times = {
        # epoch 0: batch ends at 1.0, 1.5 (warm-up interval, left out), 2.0; epoch 1 starts after a
        # validation of two images (2.2, 2.5) and 0.4 s of epoch overhead
        "train": [[0, 1.0], [0, 2.0], [0, 2.5], [1, 3.9], [1, 4.4], [1, 4.9]],
        "val": [[0, 2.7], [0, 3.0]],
    }
    s_step, s_val, s_epoch, counts = trainer_rates(times)
    assert s_step == pytest.approx(0.5)
    assert s_val == pytest.approx(0.3)
    # 1.0 -> 3.9: three batches (2.0, 2.5, 3.9) and two validation images: 2.9 - 1.5 - 0.6
    assert s_epoch == pytest.approx(0.8)
    assert counts == {"steps": 6, "val_images": 2, "epochs": 2}


def test_trainer_rates_leave_out_intervals_holding_a_validation():
    times = {"train": [[0, 0.0], [0, 1.0], [0, 2.0], [0, 5.0], [0, 6.0]], "val": [[0, 3.0], [0, 4.0]]}
    s_step, s_val, _, _ = trainer_rates(times)
    assert s_step == pytest.approx(1.0) and s_val == pytest.approx(1.0)


def test_predict_rate_leaves_out_the_first_batch():
    times = {"start": 0.0, "end": 7.0, "predict": [[8, 3.0], [8, 5.0], [4, 6.5]]}
    assert predict_rate(times) == (pytest.approx((7.0 - 3.0) / 12), 20)
    assert predict_rate({"start": 1.0, "end": 3.0, "predict": [[4, 2.5]]}) == (pytest.approx(0.5), 4)


def test_stage_walls_run_from_start_to_next_start():
    assert stage_walls({"cls": 0.0, "maps_cls": 5.0, "pseudo": 7.5}, end=10.0) == {
        "cls": 5.0,
        "maps_cls": 2.5,
        "pseudo": 2.5,
    }


# --- the step timer ---------------------------------------------------------------------------------


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
