"""Does DRS beat plain CAM on the toy data by more than the seed-to-seed spread?

For each seed (0, 1, 2): pre-trains the tiny backbone on other toy images (experiment=toy_pretrain, the
demo's ImageNet stand-in), then trains the toy classifier from it with DRS off / learnable / fixed
(delta 0.55), writes maps and pseudo labels, and reports mean and standard deviation over seeds of the
seed mIoU, the pseudo-label mIoU (255 counted as background, the WSSS convention) and the pseudo-label
mIoU over labelled pixels only, and the segmentation mIoU on toy val (segmenter from the same backbone),
per variant. Results: bench/results/demo_seeds.json.

    python bench/bench_demo_seeds.py [--seeds 0 1 2] [--jobs 2] [extra hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "cam": ["drs=off"],
    "drs_learnable": ["drs=learnable"],
    "drs_delta0.55": ["drs=fixed", "drs.delta=0.55"],
}


METRICS = ("seed_miou", "pseudo_miou", "pseudo_miou_labeled", "seg_miou")


def train(exp: str, args: list[str], runs: Path, threads: int) -> None:
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"exp={exp}",
        f"paths.runs={runs}",
        "logger=none",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    env.pop("WSSS_RUN_ID", None)
    log = runs / f"{exp}.log"
    with open(log, "w") as fh:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"{exp} failed; see {log}")


def pretrain(seed: int, runs: Path, extra: list[str], threads: int) -> Path:
    exp = f"pretrain_seed{seed}"
    train(exp, ["stage=cls", "experiment=toy_pretrain", f"seed={seed}", *extra], runs, threads)
    return runs / exp / "cls" / "checkpoints" / "best.ckpt"


def run(name: str, seed: int, runs: Path, extra: list[str], threads: int) -> dict:
    exp = f"{name}_seed{seed}"
    weights = runs / f"pretrain_seed{seed}" / "cls" / "checkpoints" / "best.ckpt"
    args = [
        "stage=pipeline",
        "experiment=toy",
        f"seed={seed}",
        f"backbone.weights={weights}",
        f"segmenter.weights={weights}",
        "pipeline.stages=[cls,maps_cls,pseudo,seg,eval]",
        "pseudo.source=cls",
        *VARIANTS[name],
        *extra,
    ]
    train(exp, args, runs, threads)
    seed_m = json.loads((runs / exp / "maps" / "cls" / "metrics.json").read_text())
    pseudo = json.loads((runs / exp / "pseudo" / "metrics.json").read_text())
    seg = json.loads((runs / exp / "eval" / "metrics.json").read_text())
    return {
        "variant": name,
        "seed": seed,
        "seed_miou": seed_m["miou"],
        "pseudo_miou": pseudo["miou"],
        "pseudo_miou_labeled": pseudo["miou_labeled"],
        "seg_miou": seg["miou"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "demo_seeds_runs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: pretrain(s, args.runs, args.overrides, threads), args.seeds))
        futures = [
            pool.submit(run, n, s, args.runs, args.overrides, threads) for s in args.seeds for n in VARIANTS
        ]
        results = [f.result() for f in futures]
    summary = {}
    print(
        f"{'variant':16s} {'seed mIoU':>14s} {'pseudo mIoU':>14s} {'pseudo, labelled only':>22s}"
        f" {'seg mIoU (val)':>15s}  (mean ± sd, %)"
    )
    for name in VARIANTS:
        rows = [r for r in results if r["variant"] == name]
        stats = {}
        for key in METRICS:
            values = [100 * r[key] for r in rows]
            stats[key] = {
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
        summary[name] = stats
        cells = [f"{stats[k]['mean']:7.1f} ± {stats[k]['sd']:4.1f}" for k in METRICS]
        print(f"{name:16s} {cells[0]:>14s} {cells[1]:>14s} {cells[2]:>22s} {cells[3]:>15s}")
    out = REPO / "bench" / "results" / "demo_seeds.json"
    out.write_text(
        json.dumps(
            {"seeds": args.seeds, "summary": summary, "runs": results, "seconds": time.time() - start},
            indent=2,
        )
    )
    print(f"wrote {out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
