"""Why do 74%-mIoU pseudo labels give a ~32%-mIoU toy segmenter? Segmenter recipes x label sources.

From one pre-trained toy backbone (experiment=toy_pretrain, seed 0), trains the toy segmenter
(experiment=toy, largefov_tiny started from that backbone) under each recipe of ``RECIPES`` on the
ground-truth masks (the oracle, ``pseudo.source=gt``), and on the pseudo labels of a plain CAM and of
learnable DRS (``pseudo.source=cls``) under the recipes given with ``--label-recipes``. Reports per run
the val mIoU (200 toy val images), pixel accuracy, the last training loss (a segmenter that cannot fit
even the ground truth underfits), and the label quality on toy train.

    python bench/bench_seg_gap.py [--recipes base scale1 lr05 scale1_seed1 steps4800 wide] [--label-recipes lr05] [--jobs 2]
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

from wsss.experiments.demo import train
from wsss.pipeline.artifacts import Experiment

REPO = Path(__file__).resolve().parents[1]
RECIPES: dict[str, list[str]] = {
    "base": ["seg.scales=[0.5,0.75,1.0,1.25,1.5]"],  # experiment=toy before issue 22: random rescale
    "scale1": ["seg.scales=[1.0]"],  # no random rescaling (experiment=toy now): the image is the crop
    "lr05": ["seg.scales=[1.0]", "seg.lr=0.05"],  # and 5x the rate (head 0.5, its biases 1.0)
    "scale1_seed1": ["seg.scales=[1.0]", "seed=1"],  # scale1 with another seed (same pre-training)
    "steps4800": ["seg.scales=[1.0]", "seg.max_steps=4800"],  # twice the steps (poly over 4800)
    "wide": ["seg.scales=[1.0]", "segmenter=largefov_tiny_wide"],  # fc6/fc7 64 wide instead of 32
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


def training_log(exp: Experiment) -> dict:
    """From the segmenter's CSV logs: val mIoU at each validation step, and the mean training loss of
    every 200 steps (a segmenter whose loss on the ground truth is still falling underfits)."""
    logs = sorted(
        (exp.root / "logs" / "seg").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])
    )
    rows = []
    for log in logs:  # a resumed run logs into a new version; the steps continue
        with open(log, newline="") as f:
            rows += list(csv.DictReader(f))
    val = {int(r["step"]): float(r["val/miou"]) for r in rows if r.get("val/miou")}
    bins: dict[int, list[float]] = {}
    for r in rows:
        if r.get("train/loss"):
            bins.setdefault(int(r["step"]) // 200 * 200 + 200, []).append(float(r["train/loss"]))
    return {"val_miou": val, "train_loss": {k: sum(v) / len(v) for k, v in sorted(bins.items())}}


def read_run(runs: Path, labels: str, recipe: str, name: str | None = None) -> dict | None:
    """One run's scores (``name``: its experiment folder, default ``<labels>_<recipe>``); a run stopped
    before its eval keeps its training log (``complete`` false)."""
    exp = Experiment(runs / (name or exp_name(labels, recipe)))
    if not exp.root.is_dir():
        return None
    pseudo, seg = exp.metrics("pseudo"), exp.metrics("eval") if exp.is_complete("eval") else {}
    return {
        "labels": labels,
        "recipe": recipe,
        "overrides": RECIPES[recipe],
        "complete": exp.is_complete("eval"),
        "pseudo_miou": pseudo.get("miou"),
        "pseudo_miou_labeled": pseudo.get("miou_labeled"),
        "pseudo_ignored": pseudo.get("ignore_ratio"),
        "seg_miou": seg.get("miou"),
        "seg_pixel_accuracy": seg.get("pixel_accuracy"),
        **training_log(exp),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--label-recipes", nargs="*", choices=list(RECIPES), default=[])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "seg_gap_runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "seg_gap.json")
    parser.add_argument("--collect", action="store_true", help="only read the finished runs")
    parser.add_argument(
        "--label-exps",
        nargs="*",
        default=[],
        metavar="LABELS:RECIPE=EXP",
        help="also read these experiment folders (e.g. cam:wide=cam15: a run made by hand)",
    )
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
    for spec in args.label_exps:
        key, name = spec.split("=", 1)
        labels, recipe = key.split(":", 1)
        if (row := read_run(args.runs, labels, recipe, name)) is not None:
            rows.append({**row, "exp": name})
    for row in rows:
        val = ", ".join(f"{step + 1}: {100 * v:.1f}" for step, v in row["val_miou"].items())
        loss = ", ".join(f"{step}: {v:.2f}" for step, v in row["train_loss"].items() if step % 800 == 0)
        seg = "-" if row["seg_miou"] is None else f"{100 * row['seg_miou']:.1f}"
        print(
            f"{row['labels']:4s} {row['recipe']:7s} seg mIoU {seg:>5s}  val mIoU at step {val}  loss {loss}"
        )
    args.out.write_text(json.dumps({"runs": rows, "seconds": time.time() - start}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
