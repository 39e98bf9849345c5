"""Why does DRS lose to CAM on compact objects? Spread of maps, controller per layer, placement, delta.

Trains what is missing of ``RUNS`` (toy classifier, ``experiment=toy``, from one toy pre-training, on
both object designs of the toy generator; stages cls, maps, pseudo), then measures on toy train:

- the seed mIoU over the full sweep (0, 0.05 .. 0.95) and over 0.05 .. 0.60 (the sweep before issue 15);
- how far the maps spread beyond the objects: per background threshold t, the share of background
  pixels whose top present-class map exceeds t (all of them, those within ``NEAR_PX`` of an object and
  those farther), and the share of object pixels whose own class's map exceeds t (coverage);
- the DRS controller per layer (``layer1`` .. ``layer5`` backbone blocks, ``layer6`` the three head
  convs): G (learnable: sigmoid(FC(GAP(X))), averaged over channels and train images; fixed: delta)
  and the share of positive activations the suppressor clips (X > X_max * G);
- how well the map values separate object from background whatever the threshold: P(an object pixel's
  own map > a background pixel's top map), the ROC AUC;
- the classifier's validation exact-match accuracy and mAP, and the pseudo-label mIoU.

    python bench/analysis_drs_compact.py [--runs DIR] [--data DIR] [--threads 1] [--only KEY ...] [--no-train]
                                         [--figure docs/figure_designs_toy.png]

Runs share folder and names with ``bench/bench_demo_seeds.py`` (its seed 0 with ``--shared-pretrain``
semantics: every run here starts from ``pretrain_seed0``). Results: bench/results/drs_compact.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from bench_demo_seeds import DESIGNS, REPO, exp_name, pretrain, run_pipeline
from omegaconf import OmegaConf

from wsss.data.maps_io import load_maps
from wsss.data.voc import VOCDataset
from wsss.method.drs import DRS, LAYERS
from wsss.method.inference import to_input
from wsss.method.seed_labels import DEFAULT_THRESHOLDS, SeedSweep
from wsss.models.checkpoint import network_state, read_checkpoint
from wsss.models.networks import build, classifier_spec
from wsss.pipeline.artifacts import Experiment

VARIANTS: dict[str, list[str]] = {
    "cam": ["drs=off"],
    "drs_learnable": ["drs=learnable"],
    "drs_delta0.55": ["drs=fixed", "drs.delta=0.55"],
    "drs_learnable_layer6": ["drs=learnable", "drs.placement=[layer6]"],
    "drs_learnable_layers456": ["drs=learnable", "drs.placement=[layer4,layer5,layer6]"],
    "drs_delta0.8": ["drs=fixed", "drs.delta=0.8"],
}
RUNS: list[tuple[str, str]] = [(d, v) for d in DESIGNS for v in VARIANTS]
"""(design, variant) pairs, in the order they are trained."""
SEED = 0
STAGES = ["cls", "maps_cls", "pseudo"]
NEAR_PX = 6
"""Background pixels within this distance (px) of an object are 'near' (1.5 score-map cells at stride 4)."""
OLD_START, OLD_END = 0.05, 0.6
"""The first and last background thresholds of the sweep before issue 15."""


LEVELS = 256
"""Maps are stored as uint8 (value x 255): histograms over these levels are exact."""


def above(hist: np.ndarray, t: float) -> float:
    """Share of the histogram's pixels whose value exceeds ``t``."""
    levels = np.arange(LEVELS) / (LEVELS - 1)
    return float(hist[levels > t + 1e-9].sum() / max(1, hist.sum()))


def separability(obj: np.ndarray, bg: np.ndarray) -> float:
    """P(an object pixel's own map > a background pixel's top map), ties half: threshold-free (ROC AUC)."""
    below = np.concatenate([[0], np.cumsum(bg)[:-1]])
    return float((obj * (below + 0.5 * bg)).sum() / max(1, obj.sum() * bg.sum()))


def spread(maps_dir: Path, data: VOCDataset, thresholds: tuple[float, ...]) -> dict:
    """Background pixels above each threshold (all / near / far), object coverage, over ``data``."""
    hist = {k: np.zeros(LEVELS, np.int64) for k in ("bg", "near", "far", "obj")}
    sweep = SeedSweep(thresholds)
    for i, image_id in enumerate(data.ids):
        classes, maps = load_maps(maps_dir / f"{image_id}.npz")
        gt = data.mask(i)
        if maps.shape[1:] != gt.shape:
            raise ValueError(
                f"{image_id}: maps {maps.shape[1:]} and mask {gt.shape} differ; use maps at image size"
            )
        sweep.update(classes, maps, gt)
        top = maps.max(axis=0) if len(classes) else np.zeros(gt.shape, np.float32)
        own = np.zeros(gt.shape, np.float32)
        for k, c in enumerate(classes):
            own[gt == c + 1] = maps[k][gt == c + 1]
        bg = gt == 0
        dist = cv2.distanceTransform(bg.astype(np.uint8), cv2.DIST_L2, 5)
        parts = {"bg": top[bg], "near": top[bg & (dist <= NEAR_PX)], "far": top[bg & (dist > NEAR_PX)]}
        parts["obj"] = own[(gt > 0) & (gt != 255)]
        for k, values in parts.items():
            hist[k] += np.bincount(np.rint(values * (LEVELS - 1)).astype(np.int64), minlength=LEVELS)
    curve = sweep.curve()
    return {
        "best": sweep.compute(),
        "thresholds": list(thresholds),
        "seed_miou": [r["miou"] for r in curve],
        "bg_above": [above(hist["bg"], t) for t in thresholds],
        "bg_near_above": [above(hist["near"], t) for t in thresholds],
        "bg_far_above": [above(hist["far"], t) for t in thresholds],
        "obj_covered": [above(hist["obj"], t) for t in thresholds],
        "separability": separability(hist["obj"], hist["bg"]),
        "bg_mean": float((hist["bg"] * np.arange(LEVELS)).sum() / hist["bg"].sum() / (LEVELS - 1)),
        "obj_mean": float((hist["obj"] * np.arange(LEVELS)).sum() / hist["obj"].sum() / (LEVELS - 1)),
        "pixels": {k: int(h.sum()) for k, h in hist.items()},
    }


def tagged_classifier(cfg) -> torch.nn.Module:
    """The classifier of a saved stage config (its ``_target_`` specs), each DRS module tagged with its
    block name (``layer``): the activation factory of ``cfg.drs`` is wrapped before the network is built."""
    from hydra.utils import get_class

    spec = classifier_spec(cfg)
    base = build(spec["activation"])

    def activation(layer: str, channels: int) -> torch.nn.Module:
        module = base(layer, channels)
        if isinstance(module, DRS):
            module.layer = layer
        return module

    backbone_spec = {k: v for k, v in spec["backbone"].items() if k not in ("_target_", "activation")}
    backbone = get_class(spec["backbone"]["_target_"])(activation=activation, **backbone_spec)
    head = {k: v for k, v in spec.items() if k not in ("_target_", "backbone", "activation")}
    return get_class(spec["_target_"])(backbone=backbone, activation=activation, **head)


@torch.no_grad()
def controller(exp: Experiment, data: VOCDataset, batch: int = 32) -> dict:
    """Per DRS module (network order) and per block: mean G and the share of positive activations clipped."""
    cfg = OmegaConf.load(exp.stage_dir("cls") / "config.yaml")
    net = tagged_classifier(cfg)
    path = exp.stage_dir("cls") / "checkpoints" / "best.ckpt"
    net.load_state_dict(network_state(read_checkpoint(path), path))
    net.eval()
    modules = [m for m in net.modules() if isinstance(m, DRS)]
    if not modules:
        return {}
    sums = {id(m): {"g": 0.0, "g_sd": 0.0, "clipped": 0.0} for m in modules}

    def hook(module: DRS, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        x = torch.relu(inputs[0])
        g = module.controller(x)
        g = torch.full((x.shape[0], x.shape[1], 1, 1), float(g)) if isinstance(g, float) else g
        cap = x.amax(dim=(2, 3), keepdim=True) * g
        positive = (x > 0).sum(dim=(1, 2, 3)).clamp(min=1)
        s = sums[id(module)]
        s["g"] += float(g.mean(dim=(1, 2, 3)).sum())
        s["g_sd"] += float(g.flatten(1).std(dim=1).sum())
        s["clipped"] += float(((x > cap) & (x > 0)).sum(dim=(1, 2, 3)).div(positive).sum())

    handles = [m.register_forward_hook(hook) for m in modules]
    n = len(data)
    for start in range(0, n, batch):
        images = [to_input(data.image(i)) for i in range(start, min(n, start + batch))]
        net(torch.cat(images))
    for h in handles:
        h.remove()
    per_module = [
        {"layer": m.layer, "channels": m.channels, **{k: v / n for k, v in sums[id(m)].items()}}
        for m in modules
    ]
    per_layer = {}
    for layer in LAYERS:
        rows = [r for r in per_module if r["layer"] == layer]
        if rows:
            per_layer[layer] = {k: float(np.mean([r[k] for r in rows])) for k in ("g", "g_sd", "clipped")}
    return {"modules": per_module, "layers": per_layer}


def analyse(runs: Path, design: str, variant: str, data_root: Path) -> dict:
    exp = Experiment(runs / exp_name(design, variant, SEED))
    data = VOCDataset(data_root, "train")
    cls, pseudo = exp.metrics("cls"), exp.metrics("pseudo")
    sp = spread(exp.stage_dir("maps_cls"), data, DEFAULT_THRESHOLDS)
    seeds = sp.pop("best")
    best = DEFAULT_THRESHOLDS.index(seeds["best_threshold"])
    old = range(DEFAULT_THRESHOLDS.index(OLD_START), DEFAULT_THRESHOLDS.index(OLD_END) + 1)
    old_best = max(old, key=lambda k: (sp["seed_miou"][k], -k))
    return {
        "design": design,
        "variant": variant,
        "overrides": VARIANTS[variant],
        "cls_accuracy": cls.get("accuracy"),
        "cls_map": cls.get("map"),
        "seed_miou": seeds["miou"],
        "best_threshold": seeds["best_threshold"],
        "best_threshold_at_edge": seeds.get("best_threshold_at_edge"),
        "seed_miou_old_range": sp["seed_miou"][old_best],
        "best_threshold_old_range": DEFAULT_THRESHOLDS[old_best],
        "at_best": {k: sp[k][best] for k in ("bg_above", "bg_near_above", "bg_far_above", "obj_covered")},
        "separability": sp["separability"],
        "pseudo_miou": pseudo.get("miou"),
        "pseudo_ignored": pseudo.get("ignore_ratio"),
        "spread": sp,
        "controller": controller(exp, data),
    }


def data_root(runs: Path, design: str) -> Path:
    cfg = OmegaConf.load(Experiment(runs / exp_name(design, "cam", SEED)).stage_dir("cls") / "config.yaml")
    return Path(cfg.data.root)


def print_tables(results: list[dict]) -> None:
    at = (0.2, 0.5)
    idx = [DEFAULT_THRESHOLDS.index(t) for t in at]
    print(
        f"{'design':10s} {'variant':24s} {'acc':>5s} {'mAP':>5s} {'seed mIoU (thr)':>16s} {'<=0.60':>12s}"
        f" {'pseudo':>6s} | bg above 0.2 / 0.5 / best | near bg at best | obj covered 0.2 / 0.5 / best | AUC"
    )
    for r in results:
        sp = r["spread"]
        bg = (
            " / ".join(f"{100 * sp['bg_above'][i]:4.1f}" for i in idx)
            + f" / {100 * r['at_best']['bg_above']:4.1f}"
        )
        ob = " / ".join(f"{100 * sp['obj_covered'][i]:4.1f}" for i in idx)
        ob += f" / {100 * r['at_best']['obj_covered']:4.1f}"
        print(
            f"{r['design']:10s} {r['variant']:24s} {100 * r['cls_accuracy']:5.1f} {100 * r['cls_map']:5.1f}"
            f" {100 * r['seed_miou']:8.1f} ({r['best_threshold']:.2f}) {100 * r['seed_miou_old_range']:5.1f} "
            f"({r['best_threshold_old_range']:.2f}) {100 * (r['pseudo_miou'] or 0):6.1f} | {bg:>26s} |"
            f" {100 * r['at_best']['bg_near_above']:14.1f} | {ob:>28s} | {r['separability']:.3f}"
        )
    print(f"\n{'design':10s} {'variant':24s} " + " ".join(f"{layer:>13s}" for layer in LAYERS))
    print(f"{'':10s} {'':24s} " + " ".join(f"{'G / clipped':>13s}" for _ in LAYERS))
    for r in results:
        layers = r["controller"].get("layers", {})
        cells = [
            f"{layers[lay]['g']:.2f} / {100 * layers[lay]['clipped']:4.1f}%" if lay in layers else "-"
            for lay in LAYERS
        ]
        print(f"{r['design']:10s} {r['variant']:24s} " + " ".join(f"{c:>13s}" for c in cells))


FIGURE_VARIANTS = {
    "CAM": "cam",
    "DRS": "drs_learnable",
    "DRS d=0.55": "drs_delta0.55",
    "DRS d=0.8": "drs_delta0.8",
}


def figure(runs: Path, out: Path, n_images: int = 3) -> Path:
    """image | CAM | DRS learnable | delta 0.55 | delta 0.8: first train images of each design, stacked."""
    from PIL import Image

    from wsss.data.figures import figure1

    grids = []
    for design in DESIGNS:
        data = VOCDataset(data_root(runs, design), "train")
        dirs = {
            t: Experiment(runs / exp_name(design, v, SEED)).stage_dir("maps_cls")
            for t, v in FIGURE_VARIANTS.items()
        }
        part = figure1(
            list(data.ids[:n_images]), data, dirs, out.with_name(f".{design}-{out.name}"), cell=128
        )
        grids.append(np.asarray(Image.open(part).convert("RGB")))
        part.unlink()
    grid = Image.fromarray(np.concatenate(grids, axis=0))
    grid.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "demo_seeds_runs")
    parser.add_argument("--data", type=Path, default=None, help="paths.data (default: the repo's data/)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=None, help="design/variant keys, e.g. compact/cam")
    parser.add_argument("--no-train", action="store_true", help="analyse finished runs only")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "drs_compact.json")
    parser.add_argument("--figure", type=Path, default=None, help="also write the maps grid PNG here")
    args = parser.parse_args()
    runs = [(d, v) for d, v in RUNS if args.only is None or f"{d}/{v}" in args.only]
    extra = [f"paths.data={args.data}"] if args.data else []
    start = time.time()
    if not args.no_train:
        weights = pretrain(SEED, args.runs, extra, args.threads)
        for design, variant in runs:
            exp = exp_name(design, variant, SEED)
            run_pipeline(
                design, VARIANTS[variant], exp, SEED, weights, args.runs, extra, args.threads, STAGES
            )
    done = [(d, v) for d, v in runs if Experiment(args.runs / exp_name(d, v, SEED)).is_complete("pseudo")]
    results = [analyse(args.runs, d, v, data_root(args.runs, d)) for d, v in done]
    print_tables(results)
    args.out.write_text(
        json.dumps(
            {
                "seed": SEED,
                "near_px": NEAR_PX,
                "pretrain": f"pretrain_seed{SEED}",
                "results": results,
                "seconds": time.time() - start,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")
    if args.figure:
        print(f"wrote {figure(args.runs, args.figure)}")


if __name__ == "__main__":
    main()
