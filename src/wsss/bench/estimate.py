"""The cost model: projected wall time of a full run, from a few measured steps on this machine.

    python -m wsss.bench.estimate experiment=paper_vgg16                       # the paper's pipeline on VOC
    python -m wsss.bench.estimate -m sweep=table4_seg experiment=paper_vgg16   # a sweep, shared stages once
    python -m wsss.bench.estimate stage=seg experiment=paper_vgg16 --dry-run   # the plan only, no timing
    python -m wsss.bench.estimate experiment=toy --dataset toy                 # the toy pipeline itself

Any train.py command line works (Hydra overrides, ``-m`` for a multirun). The stages the command would
run (``wsss.bench.plan``) are run briefly on generated data at the projection's image sizes with random
weights (``wsss.bench.trial``); their measured rates times the full run's counts (VOC: 10,582 train_aug
and 1,449 val images, the recipe's epochs, steps, batch sizes and scales) give each stage's hours.
A sweep's total is given with shared upstream stages made once (as the artifact store does) and with
every job alone.

The arithmetic: a stage's ``Work`` counts what it does (training batches, inference images, images
scored against ground truth, epochs); a ``Rate`` is what each costs here, plus fixed seconds;
``stage_seconds`` = fixed + sum of counts x rates; ``sweep_cost`` totals jobs of (stage, identity) runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from wsss.bench.costs import Rate, Work, stage_seconds, sweep_cost
from wsss.bench.measure import machine
from wsss.bench.plan import cost_key, dataset_for, plan
from wsss.pipeline.artifacts import write_json


def format_projection(seconds: Mapping[str, float]) -> str:
    """A text table: stage, hours, share of the total."""
    total = seconds.get("total") or sum(v for k, v in seconds.items() if k != "total")
    lines = [f"{'stage':<12} {'hours':>9} {'share':>6}"]
    for stage, s in seconds.items():
        share = f"{100 * s / total:5.1f}%" if total else "    -"
        lines.append(f"{stage:<12} {s / 3600:9.2f} {share:>6}")
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------------


def describe_work(work: Work) -> str:
    """What a stage does, in words: ``31,740 batches, 21,735 images, 15 epochs``."""
    parts = [
        f"{work.steps:,} batches" if work.steps else "",
        f"{work.images:,} images" if work.images else "",
        f"{work.scored:,} scored" if work.scored else "",
        f"{work.epochs:,} epochs" if work.epochs else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def describe_rate(rate: Rate) -> str:
    parts = [
        f"{rate.seconds_per_step:.3g} s/batch" if rate.seconds_per_step else "",
        f"{rate.seconds_per_image:.3g} s/image" if rate.seconds_per_image else "",
        f"{rate.seconds_per_scored:.3g} s/scored" if rate.seconds_per_scored else "",
        f"{rate.seconds_per_epoch:.3g} s/epoch" if rate.seconds_per_epoch else "",
        f"{rate.fixed_seconds:.3g} s fixed" if rate.fixed_seconds else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def measure_rates(jobs: Sequence, dataset: str, keep: str | None = None) -> dict[str, Rate]:
    """Rates per cost key: each job's stages whose cost is not measured yet are probed on that job."""
    from pathlib import Path

    from wsss.bench.trial import probe  # torch and the stages: only when measuring (not for --dry-run)

    measured: dict[str, Rate] = {}
    for n, job in enumerate(jobs):
        todo = [s.stage for s in job.stages if s.cost_key not in measured]
        if not todo:
            continue
        print(f"measuring {', '.join(todo)} of job {n + 1}/{len(jobs)} (a few steps each) ...", flush=True)
        folder = Path(keep) / f"job{n}" if keep else None
        for name, rate in probe(job.cfg, todo, dataset_for(job.cfg, dataset), folder).items():
            measured.setdefault(cost_key(job.cfg, name), rate)
    return measured


def projection(jobs: Sequence, rates: Mapping[str, Rate] | None) -> dict:
    """Per job its stages (work, rate, seconds) and total; for several jobs the sweep's totals."""
    out: dict = {"jobs": []}
    seconds: dict[tuple[str, str], float] = {}
    for job in jobs:
        rows = []
        for s in job.stages:
            row = {"stage": s.stage, "identity": s.identity, "work": asdict(s.work), "cost_key": s.cost_key}
            if rates is not None:
                rate = rates[s.cost_key]
                row |= {"rate": asdict(rate), "seconds": stage_seconds(s.work, rate)}
                seconds[(s.stage, s.identity)] = row["seconds"]
            rows.append(row)
        entry = {"overrides": job.overrides, "stages": rows}
        if rates is not None:
            entry["seconds"] = sum(r["seconds"] for r in rows)
        out["jobs"].append(entry)
    if len(jobs) > 1:
        runs = [job.runs() for job in jobs]
        cost = sweep_cost(runs, seconds if rates is not None else {r: 0.0 for job in runs for r in job})
        out["sweep"] = asdict(cost) | {"saved": cost.saved}
    return out


def format_report(result: dict, dataset: str) -> str:
    """The projection as text: one table per job (a sweep: one line per job, then its totals)."""
    jobs = result["jobs"]
    timed = "seconds" in jobs[0]
    lines = []
    shared: dict[tuple[str, str], int] = {}
    for job in jobs:
        for row in job["stages"]:
            key = (row["stage"], row["identity"])
            shared[key] = shared.get(key, 0) + 1
    for n, job in enumerate(jobs):
        if len(jobs) > 1:
            lines.append(f"\njob {n + 1}: {' '.join(job['overrides'])}")
        if len(jobs) > 1 and timed:
            lines.append(f"  total {_hours(job['seconds'])}")
            continue
        rows = [
            (
                "stage",
                "identity",
                f"work on {dataset}",
                "measured here" if timed else "shared by",
                "time",
                "share",
            )
        ]
        for row in job["stages"]:
            work = describe_work(Work(**row["work"]))
            if timed:
                share = 100 * row["seconds"] / job["seconds"] if job["seconds"] else 0.0
                cells = (describe_rate(Rate(**row["rate"])), _hours(row["seconds"]), f"{share:.1f}%")
            else:
                cells = (f"{shared[(row['stage'], row['identity'])]} job(s)", "", "")
            rows.append((row["stage"], row["identity"][:8], work, *cells))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            lines.append(
                "  "
                + "  ".join(
                    c.ljust(w) if i < 4 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                ).rstrip()
            )
        if timed:
            lines.append(f"  total {_hours(job['seconds'])}")
    if "sweep" in result and not timed:
        s = result["sweep"]
        lines.append(
            f"\nsweep of {len(jobs)} jobs: {s['stage_runs_shared']} stage runs with shared stages made once, "
            f"{s['stage_runs_unshared']} with every job alone"
        )
    elif "sweep" in result:
        s = result["sweep"]
        lines.append(
            f"\nsweep of {len(jobs)} jobs: {_hours(s['shared'])} with shared stages made once "
            f"({s['stage_runs_shared']} stage runs), {_hours(s['unshared'])} with every job alone "
            f"({s['stage_runs_unshared']} stage runs): sharing saves {_hours(s['saved'])}"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.bench.estimate",
        description="Projected wall time of a train.py command on this machine (see the module doc).",
    )
    parser.add_argument("-m", "--multirun", action="store_true", help="a sweep: every job of the multirun")
    parser.add_argument(
        "--dry-run", action="store_true", help="the plan and its counts only: measure nothing"
    )
    parser.add_argument(
        "--dataset",
        choices=("auto", "voc", "toy"),
        default="auto",
        help="project onto VOC (10,582 train_aug / 1,449 val) or the config's toy data (auto: toy for data=toy)",
    )
    parser.add_argument("--json", default=None, help="also write the projection to this file")
    parser.add_argument("--keep", default=None, help="keep the probe runs in this folder")
    return parser.parse_known_args(argv)


def with_pipeline(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus ``stage=pipeline`` when they choose no stage and no sweep (whose file does):
    the estimate of a recipe is that of its full run."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    return list(overrides) if keys & {"stage", "sweep"} else ["stage=pipeline", *overrides]


def main(argv: Sequence[str] | None = None) -> int:

    opts, overrides = parse(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        print(f"unknown option(s) {' '.join(unknown)}; see --help", file=sys.stderr)
        return 2
    jobs = plan(with_pipeline(overrides), multirun=opts.multirun, dataset=opts.dataset)
    dataset = _dataset_name(jobs[0].cfg, opts.dataset)
    rates = None if opts.dry_run else measure_rates(jobs, opts.dataset, opts.keep)
    result = projection(jobs, rates) | {"dataset": dataset, "command": list(overrides)}
    if rates is not None:
        result["machine"] = machine("cuda" if _on_gpu(jobs[0].cfg) else "cpu")
    print(f"projection onto {dataset}")
    print(format_report(result, str(dataset).split(" ")[0]))
    if opts.json:
        write_json(opts.json, result)
    return 0


def _on_gpu(cfg) -> bool:
    import torch

    return str(cfg.trainer.get("accelerator")) != "cpu" and torch.cuda.is_available()


def _dataset_name(cfg, choice: str) -> str:

    data = dataset_for(cfg, choice)
    splits = ", ".join(f"{n:,} {s}" for s, n in data.splits.items())
    return f"{data.name} ({splits})"


if __name__ == "__main__":
    sys.exit(main())
