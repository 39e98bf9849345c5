"""Does DRS beat plain CAM on the toy data by more than the seed-to-seed spread, on both object designs?

For each seed (0, 1, 2): pre-trains the tiny backbone on other toy images (experiment=toy_pretrain, the
demo's ImageNet stand-in), then trains the toy classifier from it with DRS off / learnable / fixed
(delta 0.55), on each toy object design (``elongated``: the discriminative part is a small share of a
long object, what make demo runs; ``compact``: small round bodies that a CAM's blob around the part
already mostly covers, data=toy_compact; ``thick`` and ``thin``, elongated designs with other knobs:
data=toy_thick, data=toy_thin), writes maps and pseudo labels, and reports mean and standard
deviation over seeds of the seed mIoU (best background threshold of 0, 0.05 .. 0.95), the pseudo-label mIoU
(255 counted as background, the WSSS convention) and the pseudo-label mIoU over labelled pixels only,
the segmentation mIoU on toy val (segmenter from the same backbone; skipped with ``--no-seg``), and the
per-seed difference DRS - CAM, per design and variant. The ``gt`` variant is the oracle: the segmenter
trained on the ground-truth masks (``pseudo.source=gt``), the upper bound of seg_miou.

    python bench/bench_demo_seeds.py [--seeds 0 1 2] [--designs elongated compact] [--variants ...]
        [--no-seg] [--shared-pretrain] [--jobs 2] [--threads N] [--runs DIR] [--data DIR] [--out FILE]
        [hydra overrides]

A finished experiment folder is reused (the pipeline skips complete stages), so an interrupted run
resumes and ``bench/analysis_drs_compact.py`` shares its runs (same folder, same names).
Results: bench/results/demo_seeds.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

from wsss.data.maps_io import MapsFolder
from wsss.data.voc import VOCDataset
from wsss.experiments.demo import train
from wsss.method.seed_labels import DEFAULT_THRESHOLDS, evaluate_seeds
from wsss.pipeline.artifacts import Experiment

REPO = Path(__file__).resolve().parents[1]
DESIGNS: dict[str, list[str]] = {
    "elongated": [],
    "compact": ["data=toy_compact"],
    "thick": ["data=toy_thick"],  # elongated knobs: thick bodies, the part at an end in 30% of objects
    "thin": ["data=toy_thin"],  # elongated knobs: thin long bodies, a smaller part, up to 6 distractors
}
"""Object designs of the toy generator (``data.toy.design``) and the overrides that select them."""
VARIANTS: dict[str, list[str]] = {
    "cam": ["drs=off"],
    "drs_learnable": ["drs=learnable"],
    "drs_delta0.55": ["drs=fixed", "drs.delta=0.55"],
    "gt": ["pseudo.source=gt"],
}
ORACLE = "gt"
"""The oracle variant: the segmenter trained on the ground-truth masks (no classifier, no maps)."""
STAGES = ["cls", "maps_cls", "pseudo", "seg", "eval"]
METRICS = ("cls_accuracy", "seed_miou", "pseudo_miou", "pseudo_miou_labeled", "seg_miou")
"""cls_accuracy: the classifier's exact match on toy val (every present class and no other predicted)."""


def exp_name(design: str, variant: str, seed: int) -> str:
    return f"{design}_{variant}_seed{seed}"


def pretrain(seed: int, runs: Path, extra: list[str], threads: int) -> Path:
    """The toy ImageNet stand-in of ``seed`` (kept when finished); returns its checkpoint."""
    exp = f"pretrain_seed{seed}"
    if not Experiment(runs / exp).is_complete("cls"):
        train(
            exp, ["stage=cls", "experiment=toy_pretrain", f"exp={exp}", f"seed={seed}", *extra], runs, threads
        )
    return Experiment(runs / exp).stage_dir("cls") / "checkpoints" / "best.ckpt"


def run_pipeline(
    design: str,
    overrides: list[str],
    exp: str,
    seed: int,
    weights: Path,
    runs: Path,
    extra: list[str],
    threads: int,
    stages: list[str],
) -> None:
    """``experiment=toy`` on ``design`` from the pre-trained ``weights``; finished stages are skipped."""
    if "pseudo.source=gt" in overrides:  # the oracle reads no classifier maps
        stages = [s for s in stages if s not in ("cls", "maps_cls")]
    args = [
        "stage=pipeline",
        "experiment=toy",
        f"exp={exp}",
        f"seed={seed}",
        f"backbone.weights={weights}",
        f"segmenter.weights={weights}",
        f"pipeline.stages=[{','.join(stages)}]",
        "pseudo.source=cls",
        *DESIGNS[design],
        *overrides,
        *extra,
    ]
    train(exp, args, runs, threads)


def seed_scores(exp: Experiment) -> dict:
    """Seed scores of the run's classifier maps, re-scored with the default sweep (``DEFAULT_THRESHOLDS``)
    whatever sweep its maps stage ran, so runs made before the sweep changed compare fairly."""
    cfg = OmegaConf.load(exp.stage_dir("cls") / "config.yaml")
    data = VOCDataset(cfg.data.root, str(cfg.data.eval_split))
    metrics, _ = evaluate_seeds(
        MapsFolder(exp.stage_dir("maps_cls")), list(data.ids), data.mask, DEFAULT_THRESHOLDS
    )
    return metrics


def read_row(runs: Path, design: str, variant: str, seed: int) -> dict:
    """The scores of one finished run (seg_miou None without the segmentation stages)."""
    exp = Experiment(runs / exp_name(design, variant, seed))
    seeds = {"miou": None, "best_threshold": None} if variant == ORACLE else seed_scores(exp)
    pseudo, seg = exp.metrics("pseudo"), exp.metrics("eval")
    return {
        "design": design,
        "variant": variant,
        "seed": seed,
        "cls_accuracy": None if variant == ORACLE else exp.metrics("cls").get("accuracy"),
        "seed_miou": seeds["miou"],
        "best_threshold": seeds["best_threshold"],
        "best_threshold_at_edge": seeds.get("best_threshold_at_edge"),
        "pseudo_miou": pseudo.get("miou"),
        "pseudo_miou_labeled": pseudo.get("miou_labeled"),
        "seg_miou": seg.get("miou"),
    }


def mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarise(results: list[dict], designs: list[str], variants: list[str]) -> dict:
    """Per design and variant: mean, sd and values (in %) of each metric, and DRS - CAM per seed."""
    summary: dict = {}
    for design in designs:
        by_variant = {}
        for name in variants:
            rows = sorted(
                (r for r in results if r["design"] == design and r["variant"] == name),
                key=lambda r: r["seed"],
            )
            stats = {
                k: mean_sd([100 * r[k] for r in rows]) for k in METRICS if all(r[k] is not None for r in rows)
            }
            stats["best_threshold"] = [r["best_threshold"] for r in rows]
            if name != "cam" and "cam" in variants:
                cam = {r["seed"]: r for r in results if r["design"] == design and r["variant"] == "cam"}
                stats["minus_cam"] = {
                    k: mean_sd([100 * (r[k] - cam[r["seed"]][k]) for r in rows])
                    for k in METRICS
                    if all(r[k] is not None and cam[r["seed"]][k] is not None for r in rows)
                }
            by_variant[name] = stats
        summary[design] = by_variant
    return summary


def print_summary(summary: dict) -> None:
    print(f"{'design':10s} {'variant':14s}" + "".join(f" {k:>20s}" for k in METRICS) + "  (mean ± sd, %)")
    for design, by_variant in summary.items():
        for name, stats in by_variant.items():
            cells = [
                f"{stats[k]['mean']:6.1f} ± {stats[k]['sd']:4.1f}" if k in stats else "-" for k in METRICS
            ]
            print(f"{design:10s} {name:14s}" + "".join(f" {c:>20s}" for c in cells))
            if "minus_cam" in stats:
                diff = stats["minus_cam"]
                cells = [
                    f"{diff[k]['mean']:+6.1f} ± {diff[k]['sd']:4.1f}" if k in diff else "-" for k in METRICS
                ]
                print(f"{'':10s} {'  - CAM':14s}" + "".join(f" {c:>20s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=list(DESIGNS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-seg", action="store_true", help="skip segmenter training and eval (seg_miou)")
    parser.add_argument(
        "--shared-pretrain",
        action="store_true",
        help="one pre-training (the first seed's) for all seeds: cheaper, its variance is left out",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP threads per job (default: cores / jobs)"
    )
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "demo_seeds_runs")
    parser.add_argument("--data", type=Path, default=None, help="paths.data (default: the repo's data/)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "demo_seeds.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    extra = [*([f"paths.data={args.data}"] if args.data else []), *args.overrides]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    stages = STAGES[:3] if args.no_seg else STAGES
    pretrain_seeds = args.seeds[:1] if args.shared_pretrain else args.seeds
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        made = pool.map(lambda s: pretrain(s, args.runs, extra, threads), pretrain_seeds)
        weights = dict(zip(pretrain_seeds, made, strict=True))
        jobs = [(d, n, s) for s in args.seeds for d in args.designs for n in args.variants]
        futures = [
            pool.submit(
                run_pipeline,
                d,
                VARIANTS[n],
                exp_name(d, n, s),
                s,
                weights[pretrain_seeds[0] if args.shared_pretrain else s],
                args.runs,
                extra,
                threads,
                stages,
            )
            for d, n, s in jobs
        ]
        for future in futures:
            future.result()
    results = [read_row(args.runs, d, n, s) for d, n, s in jobs]
    summary = summarise(results, args.designs, args.variants)
    print_summary(summary)
    args.out.write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "pretrain_seeds": pretrain_seeds,
                "stages": stages,
                "overrides": args.overrides,
                "summary": summary,
                "runs": results,
                "seconds": time.time() - start,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
