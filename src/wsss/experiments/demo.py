"""``make demo``: the whole method on the built-in toy data, with the paper's comparison.

First pre-trains the tiny backbone on 600 other toy images (``experiment=toy_pretrain``, the stand-in
for the paper's ImageNet initialisation; alone, on every core), then runs the pipelines on CPU from that
backbone (classifier -> maps -> pseudo labels -> segmentation -> eval), two at a time: learnable DRS +
refinement (DRS†, the longest chain, first), plain CAM (DRS off), the oracle (the segmenter trained on the
ground-truth masks, ``pseudo.source=gt``: the upper bound of the last column) and DRS with the learnable
controller, whose classifier and maps DRS†'s pipeline made (the artifact store, ``wsss.pipeline.store``,
shares them); ``--variants ... delta`` adds DRS with delta=0.55. The seed table and the CAM vs DRS figure
are printed as soon as both classifiers' maps exist, while the segmenters train. Prints one table, the
learnable controller's G per layer over training, and writes a Figure-1-style grid (image | CAM | DRS | DRS†).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wsss.data.figures import figure1
from wsss.data.voc import VOCDataset
from wsss.pipeline.artifacts import Experiment, write_json
from wsss.tasks.controller_log import CSV, read_rows


@dataclass(frozen=True)
class Variant:
    key: str
    title: str
    overrides: tuple[str, ...]
    maps_stage: str | None  # the maps the pseudo labels were made from (None: the oracle's ground truth)


VARIANTS = (
    Variant("cam", "CAM (DRS off)", ("drs=off", "pseudo.source=cls"), "maps_cls"),
    Variant("drs", "DRS (learnable)", ("drs=learnable", "pseudo.source=cls"), "maps_cls"),
    Variant("delta", "DRS (delta 0.55)", ("drs=fixed", "drs.delta=0.55", "pseudo.source=cls"), "maps_cls"),
    Variant("dagger", "DRS† (learnable + refine)", ("drs=learnable", "pseudo.source=refine"), "maps_refine"),
    Variant("gt", "Oracle (ground-truth labels)", ("pseudo.source=gt",), None),
)
DEFAULT = ("cam", "drs", "dagger", "gt")
"""What ``make demo`` runs; ``--variants`` adds ``delta`` (a third classifier: ``bench/bench_demo_seeds.py``
compares it over seeds)."""
SCHEDULE = ("dagger", "cam", "gt", "drs", "delta")
"""Start order: the longest chain first (DRS†: classifier, refiner, segmenter); DRS after it has made the
classifier and maps they share (the store hands them over), so DRS trains a segmenter only."""
EARLY = {"cam": "cam", "drs": "dagger"}
"""Variant -> the experiment whose classifier maps the early table reads (DRS's are made by DRS†'s
pipeline, the same stage with the same settings): printed, with the CAM vs DRS figure, as soon as both
exist, while the pipelines go on."""

PRETRAIN = "pretrain"
"""Experiment folder (under the demo's runs) of the pre-trained toy backbone."""


def pretrained_weights(runs: Path) -> Path:
    return Experiment(runs / PRETRAIN).stage_dir("cls") / "checkpoints" / "best.ckpt"


def train(name: str, args: list[str], runs: Path, threads: int) -> None:
    """``train.py <args>`` (``python -m wsss.cli``) in its own process; its log goes to ``<runs>/<name>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.setdefault("WANDB_MODE", "offline")
    env.pop("WSSS_RUN_ID", None)
    cmd = [
        sys.executable,
        "-m",
        "wsss.cli",  # what train.py and the wsss command run, in a checkout or an installed wheel
        f"paths.runs={runs}",
        "logger=csv",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        *args,
    ]
    log_path = runs / f"{name}.log"
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"demo step {name!r} failed (exit {code}); log {log_path}:\n{tail}")


def pretrain(runs: Path, extra: list[str], threads: int) -> Path:
    """The toy ImageNet stand-in: a plain classifier on other toy images; returns its checkpoint.

    Kept when a finished one is there (``--resume``; without it the demo folder starts empty)."""
    if not Experiment(runs / PRETRAIN).is_complete("cls"):
        train(PRETRAIN, ["stage=cls", "experiment=toy_pretrain", f"exp={PRETRAIN}", *extra], runs, threads)
    return pretrained_weights(runs)


def run_variant(variant: Variant, runs: Path, extra: list[str], threads: int) -> None:
    """One whole pipeline from the pre-trained backbone (classifier, refiner and segmenter start from it;
    finished stages are skipped)."""
    weights = pretrained_weights(runs)
    args = [
        "stage=pipeline",
        "experiment=toy",
        f"exp={variant.key}",
        f"backbone.weights={weights}",
        f"segmenter.weights={weights}",
        *variant.overrides,
        *extra,
    ]
    train(variant.key, args, runs, threads)


def collect(
    runs: Path, keys: tuple[str, ...] | None = None, sources: dict[str, str] | None = None
) -> list[dict]:
    """One row per variant (``keys``: these only, in VARIANTS order), read from its experiment's metrics
    (``sources``: a variant's experiment when another one's is read, e.g. ``EARLY``)."""
    rows = []
    for v in VARIANTS:
        if keys is not None and v.key not in keys:
            continue
        exp = Experiment(runs / (sources or {}).get(v.key, v.key))
        maps = exp.metrics(v.maps_stage) if v.maps_stage else {}
        pseudo, seg = exp.metrics("pseudo"), exp.metrics("eval")
        rows.append(
            {
                "variant": v.title,
                "seed_miou": maps.get("miou"),
                "best_threshold": maps.get("best_threshold"),  # None for the oracle
                "best_threshold_at_edge": maps.get("best_threshold_at_edge"),
                "pseudo_miou": pseudo.get("miou"),
                "pseudo_precision": pseudo.get("precision"),
                "pseudo_recall": pseudo.get("recall"),
                "pseudo_ignored": pseudo.get("ignore_ratio"),
                "seg_miou": seg.get("miou"),
            }
        )
    return rows


def controller_rows(runs: Path, key: str = "drs") -> list[dict]:
    """G over training of the learnable DRS classifier (``<runs>/<key>/cls/controller.csv``), per layer
    and epoch (``wsss.tasks.controller_log``); none when that classifier did not log it."""

    return read_rows(Experiment(runs / key).stage_dir("cls") / CSV)


def print_controller(rows: list[dict]) -> None:
    """G per layer at the start, half-way and at the end of training: mean ± sd over channels."""
    if not rows:
        return
    epochs = sorted({r["epoch"] for r in rows})
    shown = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    at = {(r["epoch"], r["layer"]): r for r in rows}
    print("[demo] learnable controller G (mean ± sd over channels; epoch -1 = initialisation):")
    print("       " + "".join(f"{layer:>15s}" for layer in layers))
    for e in shown:
        cells = [f"{at[(e, n)]['g_mean']:.3f} ± {at[(e, n)]['g_sd']:.3f}" for n in layers if (e, n) in at]
        print(f"  {e:>4d} " + "".join(f"{c:>15s}" for c in cells))


def threshold_cell(row: dict) -> str:
    """The best background threshold, marked ``!`` when it is an end of the sweep (optimum maybe outside)."""
    return f"{row['best_threshold']:.2f}" + ("!" if row.get("best_threshold_at_edge") else "")


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="DRS on the toy data (in %; maps and pseudo labels on toy train, segmentation on toy val;\n"
        "pseudo scores count unlabelled (255) pixels as background, 'ignored' is their share;\n"
        "bg thr: the seed mIoU's best background threshold, '!' when at an end of maps.thresholds)"
    )
    columns = [
        ("variant", "variant"),
        ("seed mIoU", "seed_miou"),
        ("bg thr", "best_threshold"),
        ("pseudo mIoU", "pseudo_miou"),
        ("pseudo prec.", "pseudo_precision"),
        ("pseudo rec.", "pseudo_recall"),
        ("ignored", "pseudo_ignored"),
        ("seg mIoU", "seg_miou"),
    ]
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "variant" else "right", no_wrap=True)
    for row in rows:
        cells = []
        for _, key in columns:
            value = row[key]
            if key == "variant":
                cells.append(value)
            elif value is None:
                cells.append("-")
            else:
                cells.append(threshold_cell(row) if key == "best_threshold" else f"{100 * value:.1f}")
        table.add_row(*cells)
    Console(width=max(132, shutil.get_terminal_size().columns)).print(table)


def figure(
    runs: Path, out: Path, data_root: Path, sources: dict[str, str] | None = None, n_images: int = 6
) -> Path:
    """Image | CAM | DRS | DRS† for the first toy train images with masks (a column whose maps do not
    exist yet is left out; ``sources`` as in ``collect``)."""

    dataset = VOCDataset(data_root, "train")
    exp = {k: (sources or {}).get(k, k) for k in ("cam", "drs")}
    map_dirs = {
        "CAM": Experiment(runs / exp["cam"]).stage_dir("maps_cls"),
        "DRS": Experiment(runs / exp["drs"]).stage_dir("maps_cls"),
        "DRS†": Experiment(runs / "dagger").stage_dir("maps_refine"),
    }
    return figure1(list(dataset.ids[:n_images]), dataset, map_dirs, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path.cwd() / "runs" / "demo",
        help="where the four experiments go (default: ./runs/demo)",
    )
    parser.add_argument("--resume", action="store_true", help="keep finished stages of an earlier demo run")
    parser.add_argument(
        "--jobs", type=int, default=2, help="pipelines run at once (each gets cores/jobs threads)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[v.key for v in VARIANTS],
        default=list(DEFAULT),
        help=f"which rows to run (default: {' '.join(DEFAULT)}; delta adds DRS with delta 0.55)",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every variant, e.g. seed=1")
    args = parser.parse_args(argv)

    start = time.time()
    if args.runs.exists() and not args.resume:
        shutil.rmtree(args.runs)
    args.runs.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, args.jobs))
    print("[demo] pre-training the tiny backbone on other toy images (the ImageNet stand-in) ...", flush=True)
    pretrain(args.runs, args.overrides, cores)  # alone: every core
    by_key = {v.key: v for v in VARIANTS}
    chosen = [k for k in SCHEDULE if k in args.variants]
    print(
        f"[demo] running {', '.join(by_key[k].title for k in chosen)}, {args.jobs} at a time ...", flush=True
    )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # tasks start in submission order
        futures = [pool.submit(run_variant, by_key[k], args.runs, args.overrides, threads) for k in chosen]
        early = {k: e if e in chosen else k for k, e in EARLY.items()}  # without DRS†, DRS makes its own
        if wait_for_early(args.runs, futures, early):
            print_table(collect(args.runs, tuple(early), early))
            fig = figure(args.runs, args.runs / "figure1.png", _toy_root(args.runs), early)
            print(
                f"[demo] CAM vs DRS maps: {fig} ({time.time() - start:.0f} s); segmenters next ...",
                flush=True,
            )
        for future in futures:
            future.result()
    rows = collect(args.runs, tuple(args.variants))
    print_table(rows)
    controller = controller_rows(args.runs)
    print_controller(controller)
    write_json(
        args.runs / "results.json",
        {"rows": rows, "controller": controller, "seconds": round(time.time() - start, 1)},
    )
    fig = figure(args.runs, args.runs / "figure1.png", _toy_root(args.runs))
    print(f"[demo] Figure-1 grid (image | CAM | DRS | DRS†): {fig}")
    print(f"[demo] experiment folders and logs: {args.runs}")
    print(f"[demo] finished in {time.time() - start:.0f} s")


def wait_for_early(runs: Path, futures: list, sources: dict[str, str] = EARLY, poll_s: float = 2.0) -> bool:
    """Wait until the classifier maps of ``sources``' experiments are complete (True) or no pipeline runs
    any more (False); a pipeline that failed raises here."""
    while not all(Experiment(runs / exp).is_complete("maps_cls") for exp in sources.values()):
        for future in futures:
            if future.done() and future.exception() is not None:
                future.result()
        if all(future.done() for future in futures):
            return False
        time.sleep(poll_s)
    return True


def _toy_root(runs: Path) -> Path:
    """The toy data folder the variants used (read from a saved stage config)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Experiment(runs / "cam").stage_dir("cls") / "config.yaml")
    return Path(cfg.data.root)


if __name__ == "__main__":
    main()
