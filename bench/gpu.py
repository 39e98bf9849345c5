"""``make bench-gpu``: the GPU path, measured (skips cleanly without a GPU).

    python bench/gpu.py [--budget 420] [--out bench/results_gpu.json]
    python bench/gpu.py --device cpu --tiny --out /tmp/gpu.json      # smoke test of this script on CPU

Measures, each in its own time box, on one GPU:
- train: images/s and peak GPU memory of the cls (VGG-16, learnable DRS), refine (VGG-16) and seg
  (LargeFOV VGG-16, ASPP ResNet-101) training steps at the paper's sizes (batch 5, crop 321): each
  stage's own task (its ``build_task`` with ``<stage>.channels_last`` / ``<stage>.compile``) under the
  stages' Trainer (``wsss.tasks.trainer.build_trainer``, ``precision``, ``benchmark`` as ``trainer=gpu`` sets
  them), for fp32 / bf16 autocast x contiguous / channels_last, and torch.compile on bf16 channels_last;
  and the release's classifier step (fp32, ``loss.item()`` every step): target >= 1.5x.
- loader: the cls stage's loader's images/s with 4, 8 and 16 workers (pinned memory, persistent
  workers, as ``trainer=gpu``) on generated 500 x 375 JPEGs (``wsss.bench.synthetic``).
- maps: the release's per-image map loop (batch 1, fp32, autograd on) vs the maps stage's path
  (``write_maps`` with the protocol=release ``MapPredictor``, batch 16, inference mode), fp32 and bf16:
  target >= 3x.
Whatever does not fit in ``--budget`` seconds is recorded as skipped. Results: bench/results_gpu.json
(the schema of bench/results.json) and one table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import release_paths as release  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    Images,
    batch_loader,
    classifier,
    config,
    map_stage,
    one_hot_labels,
    quiet,
    stage_trainer,
)
from results import SCHEMA, Figure, Section, finish, machine, ratio, run_section  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results_gpu.json"
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "32-true", "channels_last": False, "compile": False},
    "fp32_channels_last": {"precision": "32-true", "channels_last": True, "compile": False},
    "bf16": {"precision": "bf16-mixed", "channels_last": False, "compile": False},
    "bf16_channels_last": {"precision": "bf16-mixed", "channels_last": True, "compile": False},
    "bf16_channels_last_compile": {"precision": "bf16-mixed", "channels_last": True, "compile": True},
}
TINY_VARIANTS = ("fp32", "bf16_channels_last")


class Budget:
    """A deadline shared by every measurement; ``left()`` seconds remain."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def sizes(tiny: bool) -> dict[str, Any]:
    """Models, batch, crop, steps and worker counts of the full (paper) or the tiny (smoke) run."""
    if tiny:
        return {
            "train": [("cls", "tiny"), ("refine", "tiny"), ("seg", "largefov_tiny")],
            "batch": 2,
            "crop": 64,
            "steps": 2,
            "warmup": 1,
            "variants": TINY_VARIANTS,
            "workers": (0, 1),
            "loader_images": 8,
            "maps_images": 4,
            "maps_batch": 2,
            "maps_side": 64,
            "maps_scales": (48, 64, 80),
        }
    return {
        "train": [("cls", "vgg16"), ("refine", "vgg16"), ("seg", "largefov_vgg16"), ("seg", "aspp_r101")],
        "batch": 5,
        "crop": 321,
        "steps": 20,
        "warmup": 5,
        "variants": tuple(VARIANTS),
        "workers": (4, 8, 16),
        "loader_images": 600,
        "maps_images": 64,
        "maps_batch": 16,
        "maps_side": release.SQUASH,
        "maps_scales": release.SCALES,
    }


# --- training steps ---------------------------------------------------------------------------------


def build_task(stage: str, network: str, channels_last: bool, compile_: bool):
    """The stage's LightningModule exactly as the stage builds it (its ``build_task`` on the composed
    config with ``<stage>.channels_last`` / ``<stage>.compile``; random weights): ``network`` is a
    backbone name for cls and refine, a wsss/conf/segmenter name for seg. Also what its batches hold besides
    the image."""
    speed = [
        f"{stage}.channels_last={str(channels_last).lower()}",
        f"{stage}.compile={str(compile_).lower()}",
    ]
    if stage == "seg":
        from wsss.stages.seg import build_task as build

        cfg = config(f"segmenter={network}", *speed)
        extra = lambda g, n, s: {"mask": torch.randint(0, 21, (n, s, s), generator=g)}  # noqa: E731
    elif stage == "refine":
        from wsss.stages.refine import build_task as build

        cfg = config(f"backbone={network}", *speed)
        extra = lambda g, n, s: {"maps": torch.rand(n, 20, s, s, generator=g)}  # noqa: E731
    else:
        from wsss.stages.cls import build_task as build

        cfg = config(f"backbone={network}", *speed)
        extra = lambda g, n, s: {"label": (torch.rand(n, 20, generator=g) < 0.15).float()}  # noqa: E731
    return build(cfg), extra


def loader_of(extra: Callable, batch: int, crop: int, n: int):
    """``n`` prepared batches (contiguous images: the task converts them as the stage's loader's would be)."""

    def make(g: torch.Generator) -> dict:
        return {"image": torch.randn(batch, 3, crop, crop, generator=g), **extra(g, batch, crop)}

    return batch_loader(make, n)


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_train(
    stage: str, backbone: str, variant: str, size: dict, device: torch.device
) -> dict[str, float]:
    from wsss.bench.measure import fit_seconds_per_step

    v = VARIANTS[variant]
    torch.manual_seed(0)
    task, extra = build_task(stage, backbone, v["channels_last"], v["compile"])
    loader = loader_of(extra, size["batch"], size["crop"], size["warmup"] + size["steps"])
    reset_peak(device)
    sps = fit_seconds_per_step(
        task,
        loader,
        size["steps"],
        size["warmup"],
        accelerator="gpu" if device.type == "cuda" else "cpu",
        precision=v["precision"],
        benchmark=device.type == "cuda",  # cudnn.benchmark, as trainer=gpu sets it
    )
    return {"seconds_per_step": sps, "images_per_s": size["batch"] / sps, "peak_memory_mb": peak_mb(device)}


def measure_release_train(size: dict, device: torch.device, backbone: str) -> dict[str, float]:
    from wsss.bench.measure import loop_seconds_per_step

    torch.manual_seed(0)
    net = classifier(backbone).to(device).train()
    opt = release.optimizer(net)
    extra = lambda g, n, s: {"label": (torch.rand(n, 20, generator=g) < 0.15).float()}  # noqa: E731
    loader = loader_of(extra, size["batch"], size["crop"], size["warmup"] + size["steps"])

    def step(b: dict) -> None:
        release.train_step(net, opt, b["image"].to(device), b["label"].to(device))

    reset_peak(device)
    sps = loop_seconds_per_step(step, loader, size["steps"], size["warmup"], device)
    return {"seconds_per_step": sps, "images_per_s": size["batch"] / sps, "peak_memory_mb": peak_mb(device)}


def train_section(size: dict, device: torch.device, budget: Budget, box: float) -> Section:
    figs: list[Figure] = []
    rows: dict[str, Any] = {}

    def attempt(key: str, fn: Callable[[], dict]) -> dict | None:
        if budget.left() < box:
            rows[key] = {
                "skipped": f"time budget: {budget.left():.0f} s left, a measurement is boxed at {box:.0f} s"
            }
            return None
        start = time.perf_counter()
        try:
            rows[key] = fn()
        except Exception as err:  # one failing variant (e.g. compile) must not stop the others
            rows[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
            return None
        rows[key]["wall_seconds"] = round(time.perf_counter() - start, 1)
        return rows[key]

    cls_backbone = size["train"][0][1]
    base = attempt("release/cls", lambda: measure_release_train(size, device, cls_backbone))
    for stage, backbone in size["train"]:
        for variant in size["variants"]:
            key = f"{stage}/{backbone}/{variant}"
            row = attempt(key, lambda s=stage, b=backbone, v=variant: measure_train(s, b, v, size, device))
            if row:
                figs.append(
                    Figure(
                        f"gpu/train/{key}",
                        row["images_per_s"],
                        "images/s",
                        note=f"peak {row['peak_memory_mb']:.0f} MB",
                    )
                )
    best_cls = [rows[k] for k in rows if k.startswith("cls/") and "images_per_s" in rows[k]]
    if base and best_cls:
        top = max(best_cls, key=lambda r: r["images_per_s"])
        figs.append(
            ratio(
                "gpu/release/training",
                top["images_per_s"] / base["images_per_s"],
                "release training step (fp32)",
                1.5,
                "wsss's fastest cls variant",
            )
        )
    desc = f"batch {size['batch']} at {size['crop']} px, {size['steps']} steps after {size['warmup']}; models {size['train']}"
    return Section(sizes=desc, figures=figs, details={"train": rows})


# --- data loader --------------------------------------------------------------------------------------


def loader_section(size: dict, device: torch.device) -> Section:
    """The cls stage's loader (as ``trainer=gpu`` sets it: pinned memory, persistent workers) on
    generated 500 x 375 JPEGs, for each worker count."""
    from bench_data import loader_rate

    from wsss.bench.synthetic import synthetic_voc

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic_voc(Path(tmp), {"all": max(20, size["loader_images"] // 3)}, saliency=False)
        for workers in size["workers"]:
            rates[workers] = loader_rate(
                root, workers, size["loader_images"], pin_memory=device.type == "cuda"
            )
    figs = [Figure(f"gpu/loader/{w}_workers", r, "images/s") for w, r in rates.items()]
    return Section(
        sizes=f"{size['loader_images']} generated 500x375 JPEGs per setting, crop 321, batch 5",
        figures=figs,
        details={"loader": rates},
    )


# --- maps ---------------------------------------------------------------------------------------------


def maps_section(size: dict, device: torch.device, backbone: str) -> Section:
    """The release's per-image loop vs the maps stage's path (``write_maps`` with the protocol=release
    ``MapPredictor``, batch ``maps_batch``, the stage's Trainer), fp32 and bf16."""
    from timing import interleave, speedup, summarize

    from wsss.stages.maps_writer import write_maps

    torch.manual_seed(0)
    net = classifier(backbone).to(device).eval()
    n, side, scales = size["maps_images"], size["maps_side"], size["maps_scales"]
    x = torch.randn(n, 3, side, side)
    labels = one_hot_labels(n)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_maps_"))
    accel = "gpu" if device.type == "cuda" else "cpu"
    predictor, storage = map_stage(net, "cls", "release")
    predictor.scales = [s / side for s in scales]  # absolute sides -> factors of the squashed input

    def release_loop() -> None:
        release.map_loop(net, x.to(device), labels.to(device), scales=scales)

    def stage(precision: str) -> Callable[[], None]:
        def go() -> None:
            shutil.rmtree(tmp / precision, ignore_errors=True)
            write_maps(
                stage_trainer(accelerator=accel, precision=precision),
                predictor,
                Images(x, labels),
                tmp / precision,
                batch_size=size["maps_batch"],
                **storage,
            )

        return go

    try:
        times = interleave(
            {"release_loop": release_loop, "wsss_fp32": stage("32-true"), "wsss_bf16": stage("bf16-mixed")},
            2,
            warmup=1,
            device=device,
            clock="wall",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figs = [
        ratio(
            "gpu/release/maps",
            speedup(times["release_loop"], times["wsss_bf16"]),
            "release per-image loop (fp32)",
            3.0,
            f"{n} images at {side}, batch {size['maps_batch']}, bf16",
        ),
        ratio(
            "gpu/release/maps_fp32",
            speedup(times["release_loop"], times["wsss_fp32"]),
            "release per-image loop (fp32)",
        ),
        Figure("gpu/maps/wsss_bf16_images_per_s", n / min(times["wsss_bf16"]), "images/s"),
    ]
    return Section(
        sizes=f"{n} images squashed to {side}, scales {list(scales)}",
        figures=figs,
        details={"maps": summarize(times, n, "images")},
    )


# --- main ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny networks and sizes (the CPU smoke test)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all training measurements")
    parser.add_argument("--box", type=float, default=45.0, help="seconds one training measurement may need")
    parser.add_argument(
        "--only", nargs="+", choices=("train", "loader", "maps"), default=["train", "loader", "maps"]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: no CUDA GPU here; skipping (python bench/gpu.py --device cpu --tiny is its CPU smoke test)"
        )
        return 0
    quiet()
    device = torch.device(opts.device)
    size = sizes(opts.tiny)
    backbone = size["train"][0][1]
    budget = Budget(opts.budget)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine(opts.device),
        "settings": {"tiny": opts.tiny, "budget_s": opts.budget, "box_s": opts.box},
        "benchmarks": {},
    }
    sections = {
        "train": lambda: train_section(size, device, budget, opts.box),
        "loader": lambda: loader_section(size, device),
        "maps": lambda: maps_section(size, device, backbone),
    }
    for name in opts.only:
        print(f"== {name}", flush=True)
        results["benchmarks"][name] = run_section(sections[name])
    return finish(results, opts.out, started)


if __name__ == "__main__":
    sys.exit(main())
