"""Pseudo-label throughput (paper, release, fallback rules) and dense-CRF throughput with 1 and 2 processes.

Synthetic VOC-like inputs: 500x375 images (two flat regions plus noise), maps stored at 320x320 as the
release's maps stage does (two present classes, uint8), saliency PNG-like uint8. Rows:
- rule_<name>: one process, per image: resize the present maps to 500x375, expand to 20 channels, label;
- stage_path: the same plus reading the .npz maps and the saliency PNG and writing the palette PNG
  (``wsss.pseudo.label_image`` on files in a temp folder), 1 and 2 processes;
- crf_<n>proc: dense CRF (SPEC parameters, 3 labels) on every image through ``crf_map`` with n processes.
Parallel efficiency = rate(2 processes) / (2 x rate(1 process)). Results: bench/results/pseudo.json.

    python bench/bench_pseudo.py [--images 30] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from timing import interleaved_rates

from wsss.crf import CRFParams, crf_map, dense_crf
from wsss.data.maps_io import dense_maps, save_maps
from wsss.pseudo import LabelJob, PseudoRule, label_image, make_label, resize_maps, set_job

RESULTS = Path(__file__).resolve().parent / "results"
HEIGHT, WIDTH, STORED = 375, 500, 320


def synthetic(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8, present classes, stored maps (2, 320, 320) in [0, 1], saliency (H, W) uint8."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    cx, cy = rng.uniform(150, 350), rng.uniform(120, 250)
    obj = ((xx - cx) / 120.0) ** 2 + ((yy - cy) / 90.0) ** 2 < 1.0
    image = np.where(obj[..., None], rng.integers(120, 255, 3), rng.integers(0, 120, 3)).astype(np.float32)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    dist = np.sqrt(((xx - cx) / 120.0) ** 2 + ((yy - cy) / 90.0) ** 2)
    heat = np.clip(1.2 - dist, 0, 1).astype(np.float32)
    second = np.clip(0.8 - np.abs(xx - cx) / 200.0, 0, 1).astype(np.float32) * 0.6
    maps = resize_maps(np.stack([heat, second]), (STORED, STORED))
    classes = np.sort(rng.choice(20, 2, replace=False))
    saliency = (np.clip(1.1 - dist, 0, 1) * 255).astype(np.uint8)
    return image, classes, maps, saliency


def _crf_one(i: int) -> int:
    image, classes, maps, saliency = synthetic(i)
    rule = PseudoRule(protocol="paper")
    scores = rule.scores(dense_maps(classes, resize_maps(maps, (HEIGHT, WIDTH))), saliency, (HEIGHT, WIDTH))
    q = dense_crf(image, scores[[0, *(classes + 1)]], CRFParams())
    return int(q.argmax(0).sum())


class _Images:
    """The two things ``label_image`` asks of a dataset."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.ids = [f"b{i:05d}" for i in range(len(images))]

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the fastest counts")
    parser.add_argument("--out", type=Path, default=RESULTS / "pseudo.json")
    args = parser.parse_args()

    data = [synthetic(i) for i in range(args.images)]
    size = (HEIGHT, WIDTH)
    rules = {
        "rule_paper": PseudoRule(protocol="paper"),
        "rule_release": PseudoRule(protocol="release"),
        "rule_fallback": PseudoRule(background="fallback"),
    }

    def labels(rule: PseudoRule) -> Callable[[], None]:
        def go() -> None:
            for _, classes, maps, sal in data:
                dense = dense_maps(classes, resize_maps(maps, size))
                make_label(rule, dense, None if rule.background == "fallback" else sal, size)

        return go

    tmp = Path(tempfile.mkdtemp(prefix="bench_pseudo_"))
    (tmp / "maps").mkdir()
    (tmp / "sal").mkdir()
    for k, (_, classes, maps, sal) in enumerate(data):
        save_maps(tmp / "maps" / f"b{k:05d}.npz", classes, maps)
        Image.fromarray(sal).save(tmp / "sal" / f"b{k:05d}.png")
    job = LabelJob(
        _Images([d[0] for d in data]),
        tmp / "maps",
        tmp / "out",
        tmp / "sal",
        PseudoRule(protocol="paper"),
        None,
    )

    def stage(workers: int) -> Callable[[], None]:

        return lambda: crf_map(
            label_image,
            range(args.images),
            workers,
            progress=False,
            chunksize=4,
            initializer=set_job,
            initargs=(job,),
        )

    def crf(workers: int) -> Callable[[], None]:
        return lambda: crf_map(_crf_one, range(args.images), workers, progress=False)

    variants = {name: labels(rule) for name, rule in rules.items()}
    variants |= {
        "stage_path_1proc": stage(1),
        "stage_path_2proc": stage(2),
        "crf_1proc": crf(1),
        "crf_2proc": crf(2),
    }
    rows = interleaved_rates(variants, args.repeat, args.images)

    def efficiency(one: str, two: str) -> float:
        return round(rows[two]["images_per_s"] / (2 * rows[one]["images_per_s"]), 3)

    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "images": args.images,
        "image_size": f"{WIDTH}x{HEIGHT}",
        "stored_maps": f"2 classes at {STORED}x{STORED} uint8",
        "crf": "SPEC parameters (gaussian 1/3, bilateral 67/3/4, 10 iterations), 3 labels",
        "repeat": args.repeat,
        "results": rows,
        "parallel_efficiency_crf_2proc": efficiency("crf_1proc", "crf_2proc"),
        "parallel_efficiency_stage_2proc": efficiency("stage_path_1proc", "stage_path_2proc"),
        "note": "process pools include their start-up (forkserver) in the timing",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
