"""Why do 74%-mIoU pseudo labels give a ~32%-mIoU toy segmenter? Segmenter recipes x label sources.

From one pre-trained toy backbone (experiment=toy_pretrain, seed 0), trains the toy segmenter
(experiment=toy, largefov_tiny started from that backbone) under each recipe of ``RECIPES`` on the
ground-truth masks (the oracle, ``pseudo.source=gt``), and on the pseudo labels of a plain CAM and of
learnable DRS (``pseudo.source=cls``) under the recipes given with ``--label-recipes``. Reports per run
the val mIoU (200 toy val images), pixel accuracy, the last training loss (a segmenter that cannot fit
even the ground truth underfits), and the label quality on toy train.

    python bench/bench_seg_gap.py [--recipes base scale1 os4] [--label-recipes os4] [--jobs 2]
        [--runs DIR] [--out FILE] [--collect]   # --collect: only read finished runs

Results: bench/results/seg_gap.json (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wsss.artifacts import Experiment
from wsss.demo import train

REPO = Path(__file__).resolve().parents[1]
RECIPES: dict[str, list[str]] = {
    "base": [],  # experiment=toy as it was: scales 0.5..1.5, output stride 8, LargeFOV rate 2
    "scale1": ["seg.scales=[1.0]"],  # no random rescaling: 96 px images, crop 96 = the whole image
    "os4": ["seg.scales=[1.0]", "segmenter.backbone.output_stride=4", "segmenter.rates=[4]"],
}
"""Segmenter recipes (overrides on experiment=toy)."""
LABELS: dict[str, list[str]] = {
    "gt": ["pseudo.source=gt"],
    "cam": ["drs=off", "pseudo.source=cls"],
    "drs": ["drs=learnable", "pseudo.source=cls"],
}
"""Label sources: the oracle, plain CAM, learnable DRS (no refinement)."""


def exp_name(labels: str, recipe: str) -> str:
    return f"{labels}_{recipe}"


def run_one(labels: str, recipe: str, weights: Path, runs: Path, threads: int) -> None:
    """One pipeline (finished stages are skipped): the label source's stages, then seg and eval."""
    args = [
        "stage=pipeline",
        "experiment=toy",
        f"exp={exp_name(labels, recipe)}",
        f"backbone.weights={weights}",
        f"segmenter.weights={weights}",
        *LABELS[labels],
        *RECIPES[recipe],
    ]
    train(exp_name(labels, recipe), args, runs, threads)


def last_train_loss(exp: Experiment) -> float | None:
    """The mean of the last 10 logged segmenter training losses (CSV logger), if logged."""
    logs = sorted((exp.root / "logs" / "seg").glob("version_*/metrics.csv"))
    if not logs:
        return None
    with open(logs[-1], newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return sum(losses[-10:]) / len(losses[-10:]) if losses else None


def read_run(runs: Path, labels: str, recipe: str) -> dict | None:
    exp = Experiment(runs / exp_name(labels, recipe))
    if not exp.is_complete("eval"):
        return None
    pseudo, seg = exp.metrics("pseudo"), exp.metrics("eval")
    return {
        "labels": labels,
        "recipe": recipe,
        "overrides": RECIPES[recipe],
        "pseudo_miou": pseudo.get("miou"),
        "pseudo_ignored": pseudo.get("ignore_ratio"),
        "seg_miou": seg.get("miou"),
        "seg_pixel_accuracy": seg.get("pixel_accuracy"),
        "seg_train_loss": last_train_loss(exp),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--label-recipes", nargs="*", choices=list(RECIPES), default=["os4"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "seg_gap_runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "seg_gap.json")
    parser.add_argument("--collect", action="store_true", help="only read the finished runs")
    args = parser.parse_args()
    jobs = [("gt", r) for r in args.recipes] + [(s, r) for r in args.label_recipes for s in ("cam", "drs")]
    start = time.time()
    if not args.collect:
        args.runs.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        pretrain = Experiment(args.runs / "pretrain")
        if not pretrain.is_complete("cls"):
            train("pretrain", ["stage=cls", "experiment=toy_pretrain", "exp=pretrain"], args.runs, threads)
        weights = pretrain.stage_dir("cls") / "checkpoints" / "best.ckpt"
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(run_one, s, r, weights, args.runs, threads) for s, r in jobs]:
                future.result()
    rows = [row for s, r in jobs if (row := read_run(args.runs, s, r)) is not None]
    for row in rows:
        cells = [f"{k} {100 * row[k]:5.1f}" for k in ("pseudo_miou", "seg_miou", "seg_pixel_accuracy")]
        loss = row["seg_train_loss"]
        print(
            f"{row['labels']:4s} {row['recipe']:7s} "
            + "  ".join(cells)
            + f"  train loss {loss or float('nan'):.3f}"
        )
    args.out.write_text(json.dumps({"runs": rows, "seconds": time.time() - start}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
