"""The cost model: projected wall time of a full run, from a few measured steps on this machine.

    python -m wsss.bench.estimate experiment=paper_vgg16                       # the paper's pipeline on VOC
    python -m wsss.bench.estimate -m sweep=table4_seg experiment=paper_vgg16   # a sweep, shared stages once
    python -m wsss.bench.estimate stage=seg experiment=paper_vgg16 --dry-run   # the plan only, no timing
    python -m wsss.bench.estimate experiment=toy --dataset toy                 # the toy pipeline itself

Any train.py command line works (Hydra overrides, ``-m`` for a multirun). The stages the command would
run (``wsss.bench.plan``) are run briefly on generated data at the projection's image sizes with random
weights (``wsss.bench.probe``); their measured rates times the full run's counts (VOC: 10,582 train_aug
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
from dataclasses import asdict, dataclass

VOC_IMAGES: dict[str, int] = {"train_aug": 10_582, "val": 1_449, "train": 1_464, "test": 1_456}
"""Images per split of VOC 2012 + SBD (docs/protocol.md "Data")."""


@dataclass(frozen=True)
class Work:
    """What one stage does: ``steps`` training batches (a forward and backward pass each), ``images``
    through inference (maps, pseudo labels, evaluation, a training stage's validation passes),
    ``scored`` images compared with ground truth (seed sweep, pseudo-label quality) and ``epochs``."""

    stage: str
    steps: int = 0
    images: int = 0
    scored: int = 0
    epochs: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.images, self.scored, self.epochs) < 0:
            raise ValueError(f"{self.stage}: counts cannot be negative ({self})")


@dataclass(frozen=True)
class Rate:
    """Measured cost on one machine: seconds per training batch, per inference image, per scored
    image, per epoch, and fixed seconds (start-up, set-up, the end)."""

    seconds_per_step: float = 0.0
    seconds_per_image: float = 0.0
    seconds_per_scored: float = 0.0
    seconds_per_epoch: float = 0.0
    fixed_seconds: float = 0.0

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 0:
            raise ValueError(f"negative seconds in {self}; a measured cost is >= 0")


def stage_seconds(work: Work, rate: Rate) -> float:
    """Projected seconds of one stage: fixed + steps x s/step + images x s/image + scored x s/scored
    + epochs x s/epoch."""
    return (
        rate.fixed_seconds
        + work.steps * rate.seconds_per_step
        + work.images * rate.seconds_per_image
        + work.scored * rate.seconds_per_scored
        + work.epochs * rate.seconds_per_epoch
    )


def project(works: Sequence[Work], rates: Mapping[str, Rate]) -> dict[str, float]:
    """Seconds per stage (in order) and ``total``; every stage of ``works`` needs a rate."""
    missing = [w.stage for w in works if w.stage not in rates]
    if missing:
        raise KeyError(f"no measured rate for stage(s) {missing}; measure them first (have: {sorted(rates)})")
    out = {w.stage: stage_seconds(w, rates[w.stage]) for w in works}
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class SweepCost:
    """A sweep's projected seconds with shared stages run once (``shared``) and every job alone
    (``unshared``), and how many stage runs each counts."""

    shared: float
    unshared: float
    stage_runs_shared: int
    stage_runs_unshared: int

    @property
    def saved(self) -> float:
        return self.unshared - self.shared


def sweep_cost(
    jobs: Sequence[Sequence[tuple[str, str]]],
    seconds: Mapping[str, float] | Mapping[tuple[str, str], float],
) -> SweepCost:
    """Total seconds of a sweep whose jobs are lists of (stage, identity).

    Jobs holding the same (stage, identity) share that stage's output: ``shared`` counts each identity
    once, ``unshared`` every job's every stage. ``seconds`` gives each stage's cost, keyed by
    (stage, identity) or, for every identity of a stage, by the stage name.
    """

    def cost(stage: str, identity: str) -> float:
        if (stage, identity) in seconds:
            return float(seconds[(stage, identity)])  # type: ignore[index]
        if stage in seconds:
            return float(seconds[stage])  # type: ignore[index]
        raise KeyError(f"no projected seconds for stage {stage!r} (identity {identity!r})")

    runs = [(str(s), str(i)) for job in jobs for s, i in job]
    unique = list(dict.fromkeys(runs))
    return SweepCost(
        shared=sum(cost(*r) for r in unique),
        unshared=sum(cost(*r) for r in runs),
        stage_runs_shared=len(unique),
        stage_runs_unshared=len(runs),
    )


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

    from wsss.bench.plan import cost_key, dataset_for
    from wsss.bench.probe import probe

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
    from wsss.bench.plan import plan

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
        from wsss.bench.measure import machine

        result["machine"] = machine("cuda" if _on_gpu(jobs[0].cfg) else "cpu")
    print(f"projection onto {dataset}")
    print(format_report(result, str(dataset).split(" ")[0]))
    if opts.json:
        from wsss.artifacts import write_json

        write_json(opts.json, result)
    return 0


def _on_gpu(cfg) -> bool:
    import torch

    return str(cfg.trainer.get("accelerator")) != "cpu" and torch.cuda.is_available()


def _dataset_name(cfg, choice: str) -> str:
    from wsss.bench.plan import dataset_for

    data = dataset_for(cfg, choice)
    splits = ", ".join(f"{n:,} {s}" for s, n in data.splits.items())
    return f"{data.name} ({splits})"


if __name__ == "__main__":
    sys.exit(main())
