"""Does the learnable DRS controller learn on the toy data, and does the release's lr groups' rate change it?

From one pre-trained toy backbone (experiment=toy_pretrain, seed 0), trains the toy classifier
(experiment=toy, Adam) for ``--epochs`` epochs as: plain CAM (drs=off), learnable DRS with one rate for
all parameters (the toy recipe), learnable DRS with the release's lr groups (``cls.lr_groups=release``:
backbone weights 1x, biases 2x, new conv weights and every DRS controller 10x, new conv biases 20x; with
Adam, 10x the rate is 10x the step of the controller's weights), and delta 0.55; then the maps. Reports
exact match (toy val), seed mIoU (toy train) and G per layer at the start and the end of training
(``<exp>/cls/controller.csv``, ``wsss.tasks.controller_log``).

    python bench/bench_controller.py [--epochs 15] [--jobs 2] [--runs DIR] [--out FILE] [--collect]

Results: bench/results/controller.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wsss.experiments.demo import train
from wsss.pipeline.artifacts import Experiment
from wsss.tasks.controller_log import CSV, read_rows

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "cam": ["drs=off"],
    "drs": ["drs=learnable"],
    "drsrel": ["drs=learnable", "cls.lr_groups=release"],
    "delta": ["drs=fixed", "drs.delta=0.55"],
}


def exp_name(variant: str, epochs: int) -> str:
    return f"{variant}{epochs}"


def lr_steps(epochs: int) -> list[int]:
    """The toy recipe's drops (epochs 26 and 35 of 40) at the same shares of a shorter schedule."""
    return [round(epochs * 26 / 40), round(epochs * 35 / 40)]


def run_one(variant: str, epochs: int, weights: Path, runs: Path, threads: int) -> None:
    steps = ",".join(str(s) for s in lr_steps(epochs))
    args = [
        "stage=pipeline",
        "experiment=toy",
        f"exp={exp_name(variant, epochs)}",
        f"backbone.weights={weights}",
        f"cls.epochs={epochs}",
        f"cls.lr_steps=[{steps}]",
        "pipeline.stages=[cls,maps_cls]",
        *VARIANTS[variant],
    ]
    train(exp_name(variant, epochs), args, runs, threads)


def read_run(runs: Path, variant: str, epochs: int) -> dict | None:
    exp = Experiment(runs / exp_name(variant, epochs))
    if not exp.is_complete("maps_cls"):
        return None
    cls, maps = exp.metrics("cls"), exp.metrics("maps_cls")
    rows = read_rows(exp.stage_dir("cls") / CSV)
    last = max((r["epoch"] for r in rows), default=None)
    by_epoch = {
        e: {
            r["layer"]: {"mean": r["g_mean"], "sd": r["g_sd"], "min": r["g_min"], "max": r["g_max"]}
            for r in rows
            if r["epoch"] == e
        }
        for e in sorted({r["epoch"] for r in rows})
    }
    return {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "epochs": epochs,
        "exact_match": cls.get("accuracy"),
        "seed_miou": maps.get("miou"),
        "best_threshold": maps.get("best_threshold"),
        "g_last_epoch": last,
        "g": by_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "controller_runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "controller.json")
    parser.add_argument("--collect", action="store_true", help="only read the finished runs")
    args = parser.parse_args()
    start = time.time()
    if not args.collect:
        args.runs.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        pretrain = Experiment(args.runs / "pretrain")
        if not pretrain.is_complete("cls"):
            train("pretrain", ["stage=cls", "experiment=toy_pretrain", "exp=pretrain"], args.runs, threads)
        weights = pretrain.stage_dir("cls") / "checkpoints" / "best.ckpt"
        with ThreadPoolExecutor(args.jobs) as pool:
            jobs = [pool.submit(run_one, v, args.epochs, weights, args.runs, threads) for v in args.variants]
            for future in jobs:
                future.result()
    rows = [row for v in args.variants if (row := read_run(args.runs, v, args.epochs)) is not None]
    for row in rows:
        g = row["g"].get(row["g_last_epoch"], {}) if row["g_last_epoch"] is not None else {}
        cells = "  ".join(f"{n} {s['mean']:.2f}±{s['sd']:.2f}" for n, s in g.items())
        print(
            f"{row['variant']:7s} exact match {100 * row['exact_match']:5.1f}  seed mIoU {100 * row['seed_miou']:5.1f}"
            + (f"  G (last epoch) {cells}" if cells else "")
        )
    args.out.write_text(json.dumps({"runs": rows, "seconds": time.time() - start}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
