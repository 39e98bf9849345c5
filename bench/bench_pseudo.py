"""Pseudo-label rules per image, and the dense CRF with 1 and N processes, on real VOC sample images.

Inputs: the real sample images (~500 x 375), their real saliency maps and stand-in maps made from the
ground-truth masks (``fixtures.stand_in_maps``: smooth blobs at stride 8, like a network's).
- rules: ``wsss.stages.pseudo_rules.make_label`` with the paper, release and fallback rules (one process),
  on the present classes' maps (what the pseudo stage's worker gives them).
- crf: the pseudo stage's CRF (``crf_label`` after the paper rule) through ``wsss.method.crf.crf_map`` with 1
  and N processes; parallel efficiency = rate(N) / (N x rate(1)), with the pool's start-up (measured
  on its own) subtracted, since a stage pays it once for 10,582 images; it is also given included.
  Other users of a shared machine take cores from the N processes, not from the one: pure CPU work
  (``fixtures.spin``) in 1 and N processes, in the same rounds, measures the parallel capacity left at
  that time, and the efficiency relative to it is the pool's own (start-up, transfers, imbalance).
The release comparison of the pseudo stage is in bench_release.
"""

from __future__ import annotations

from typing import Any

from fixtures import Ids, crf_sample, mask_classes, noop, read_sample, sample_ids, spin, stand_in_maps
from results import Figure, Section
from timing import interleave, summarize


def rules(ids: list[str], rounds: int) -> tuple[list[Figure], dict]:
    from wsss.stages.pseudo_rules import PseudoRule, make_label

    data = []
    for image_id in ids:
        _, mask, saliency = read_sample(image_id)
        data.append((stand_in_maps(mask, mask_classes(mask)), saliency))
    variants = {}
    for name, rule in {
        "paper": PseudoRule(rule="paper"),
        "release": PseudoRule(rule="release"),
        "fallback": PseudoRule(background="fallback"),
    }.items():
        variants[name] = lambda rule=rule: [
            make_label(rule, maps, None if rule.background == "fallback" else sal, sal.shape)
            for maps, sal in data
        ]
    times = interleave(variants, rounds, warmup=1)
    figs = [
        Figure(f"pseudo/rule_{name}_images_per_s", len(ids) / min(t), "images/s") for name, t in times.items()
    ]
    return figs, {"pseudo/rules": summarize(times, len(ids), "images")}


def crf(ids: list[str], workers: int, rounds: int) -> tuple[list[Figure], dict]:
    from wsss.method.crf import crf_map
    from wsss.stages.pseudo_rules import LabelJob, PseudoRule, set_job

    job = LabelJob(Ids(ids, []), None, None, None, PseudoRule(), None)  # what set_job ships: nothing big

    def pool(fn, n: int):
        return lambda: crf_map(
            fn, ids if fn is crf_sample else range(n), n, progress=False, initializer=set_job, initargs=(job,)
        )

    def spins(n: int):
        return lambda: crf_map(spin, range(len(ids)), n, progress=False)

    def spin_pool_start() -> None:  # a pool without the stage's initializer (no wsss imports)
        crf_map(noop, range(workers), workers, progress=False)

    variants = {
        "crf_1proc": pool(crf_sample, 1),
        f"crf_{workers}proc": pool(crf_sample, workers),
        "pool_start": pool(noop, workers),
        "spin_pool_start": spin_pool_start,
        "spin_1proc": spins(1),
        f"spin_{workers}proc": spins(workers),
    }
    times = interleave(variants, rounds, warmup=0, clock="wall")
    one, many, start = min(times["crf_1proc"]), min(times[f"crf_{workers}proc"]), min(times["pool_start"])
    steady = one / (workers * max(many - start, 1e-9))
    spin_start = min(times["spin_pool_start"])
    capacity = min(times["spin_1proc"]) / (
        workers * max(min(times[f"spin_{workers}proc"]) - spin_start, 1e-9)
    )
    n = len(ids)
    figs = [
        Figure(
            f"pseudo/crf_parallel_efficiency_{workers}proc",
            steady,
            "share",
            baseline="1 process",
            note=f"{n} real images; pool start-up ({start:.2f} s) subtracted",
        ),
        Figure(
            f"pseudo/crf_parallel_efficiency_{workers}proc_with_start",
            one / (workers * many),
            "share",
            baseline="1 process",
            note="start-up included",
        ),
        Figure(
            f"pseudo/machine_parallel_capacity_{workers}proc",
            capacity,
            "share",
            baseline="1 process",
            note="pure CPU work in the same rounds: the share of N cores other users left",
        ),
        Figure(
            f"pseudo/crf_parallel_efficiency_{workers}proc_of_capacity",
            steady / capacity,
            "share",
            baseline="machine capacity",
            target=0.9,
            note="the pool's own efficiency",
        ),
        Figure("pseudo/crf_images_per_s_1proc", n / one, "images/s"),
    ]
    return figs, {"pseudo/crf": summarize(times, n, "images")}


def run(opts: Any) -> Section:
    ids = sample_ids()
    crf_ids = ids[: 6 if opts.quick else 10]
    f1, d1 = rules(ids, opts.rounds)
    f2, d2 = crf(crf_ids, opts.workers, opts.rounds)
    sizes = f"rules: {len(ids)} real images; CRF: {len(crf_ids)} real images, 1 vs {opts.workers} processes"
    return Section(sizes=sizes, figures=f1 + f2, details=d1 | d2)
