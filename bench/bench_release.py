"""wsss against the authors' release's code paths (bench/release_paths.py), same networks, tensors, threads.

- training: ``ClassifierTask(protocol=release)`` under a Lightning Trainer vs the release's step (its four
  SGD lr groups, nesterov, soft-margin loss, ``loss.item()`` every step); seconds per step after warm-up.
- maps: wsss's map stage path (``write_maps``: ``MapPredictor`` under ``trainer.predict``, batched,
  inference mode, present classes only, .npz writes) and its batched core (``present_class_maps``) vs the
  release's loop (batch 1, autograd on, 20 channels, one .npy per image); images squashed to 320, scales
  256/320/384.
- pseudo: on the 46 real VOC sample images and their real saliency maps, the release's loop after the
  network (upsample each scale's output to the image, its rule, a PNG) vs wsss's pseudo stage
  (``label_image`` from stored present-class maps in ``pseudo.workers`` processes); plus the whole path
  with the tiny refiner (network included: release loop vs wsss maps stage + pseudo stage).

The allocator setting of ``wsss.tasks.memory`` is process-wide, so the training and maps variants each
run in a process of their own (``timing.interleave_in_processes``), asked in turn round by round.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import release_paths as release
import torch
from common import (
    Images,
    batch_loader,
    classifier,
    cls_task,
    map_stage,
    one_hot_labels,
    quiet,
    refiner,
    squashed,
    stage_trainer,
)
from fixtures import SALIENCY, SAMPLE, Ids, mask_classes, noop, sample_ids, spin
from results import Figure, Section, ratio
from timing import interleave, interleave_both, interleave_in_processes, now, speedup, summarize

from wsss.bench.measure import fit_seconds_per_step, loop_seconds_per_step

SCALES = release.SCALES


# --- training ---------------------------------------------------------------------------------------


def training_variant(
    variant: str, backbone: str, batch: int, size: int, steps: int, warmup: int
) -> Callable[[], float]:
    """(In its own process) one training variant on a seeded network and seeded batches; the callable
    returns seconds per step after warm-up."""
    import wsss.tasks.memory

    quiet()

    def make(g: torch.Generator) -> dict:
        return {
            "image": torch.randn(batch, 3, size, size, generator=g),
            "label": (torch.rand(batch, 20, generator=g) < 0.15).float(),
        }

    loader = batch_loader(make, warmup + steps)
    torch.manual_seed(0)
    if variant == "release_step":
        net = classifier(backbone).train()
        opt = release.optimizer(net)
        return lambda: loop_seconds_per_step(
            lambda b: release.train_step(net, opt, b["image"], b["label"]), loader, steps, warmup, clock=now
        )
    if variant == "wsss_lightning_before_fix":  # the stage's Trainer without its allocator setting
        wsss.tasks.memory.retain_freed_memory = lambda *a, **k: False
    task = cls_task(backbone, protocol="release")  # the cls stage's task: four lr groups, nesterov
    return lambda: fit_seconds_per_step(task, loader, steps, warmup, clock=now)


def training(
    backbone: str, batch: int, size: int, steps: int, warmup: int, rounds: int
) -> tuple[list[Figure], dict]:
    args = {"backbone": backbone, "batch": batch, "size": size, "steps": steps, "warmup": warmup}
    names = ("release_step", "wsss_lightning", "wsss_lightning_before_fix")
    times = interleave_in_processes(
        {n: (training_variant, {"variant": n, **args}) for n in names}, rounds, warmup=0
    )
    name = f"release/training/{backbone}"
    figs = [
        ratio(
            name,
            speedup(times["release_step"], times["wsss_lightning"]),
            "release training step",
            1.0,
            f"batch {batch} at {size} px, s/step; the cls stage's task and Trainer",
        ),
        ratio(
            f"{name}/before_fix",
            speedup(times["release_step"], times["wsss_lightning_before_fix"]),
            "release training step",
            note="without wsss.tasks.memory.retain_freed_memory (glibc's default thresholds)",
        ),
    ]
    return figs, {name: summarize(times, 1, "steps")}


# --- maps -------------------------------------------------------------------------------------------


def maps_variant(variant: str, backbone: str, images: int, batch: int, tmp: str) -> Callable[[], None]:
    """(In its own process) one way of making the maps of seeded images with a seeded network, run once
    here as warm-up (allocator, kernel choice) while the other variants' processes warm up too."""
    import wsss.tasks.memory
    from wsss.stages.maps_writer import write_maps

    quiet()
    torch.manual_seed(0)
    net = classifier(backbone).eval()
    x = torch.randn(images, 3, release.SQUASH, release.SQUASH, generator=torch.Generator().manual_seed(1))
    labels = one_hot_labels(images)
    out = Path(tmp) / variant
    out.mkdir(parents=True, exist_ok=True)
    if variant == "release_loop":
        release.map_loop(net, x, labels, out_dir=out)
        return lambda: release.map_loop(net, x, labels, out_dir=out)
    if variant == "wsss_stage_before_fix":  # the stage's Trainer without its allocator setting
        wsss.tasks.memory.retain_freed_memory = lambda *a, **k: False
    precision = "bf16-mixed" if variant == "wsss_stage_bf16" else "32-true"
    if variant == "wsss_stage_channels_last":  # the network's weights NHWC: every activation follows
        net = net.to(memory_format=torch.channels_last)
    predictor, storage = map_stage(net, "cls", "release")  # scales 0.8/1/1.2 of 320, relu before, uint8

    def stage() -> None:
        shutil.rmtree(out, ignore_errors=True)
        write_maps(
            stage_trainer(precision=precision), predictor, Images(x, labels), out, batch_size=batch, **storage
        )

    stage()
    return stage


def maps(backbone: str, images: int, batch: int, rounds: int) -> tuple[list[Figure], dict]:
    tmp = tempfile.mkdtemp(prefix="bench_maps_")
    args = {"backbone": backbone, "images": images, "batch": batch, "tmp": tmp}
    names = (
        "release_loop",
        "wsss_stage",
        "wsss_stage_before_fix",
        "wsss_stage_channels_last",
        "wsss_stage_bf16",
    )
    try:
        times = interleave_in_processes(
            {n: (maps_variant, {"variant": n, **args}) for n in names}, rounds, warmup=0
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = f"release/maps/{backbone}"
    base = times["release_loop"]
    figs = [
        ratio(
            name,
            speedup(base, times["wsss_stage"]),
            "release per-image loop",
            1.2,
            f"{images} images, wsss batch {batch}, write_maps stage path (protocol=release maths)",
        ),
        ratio(
            f"{name}/before_fix",
            speedup(base, times["wsss_stage_before_fix"]),
            "release per-image loop",
            note="the stage path without retain_freed_memory (glibc's default thresholds)",
        ),
        ratio(
            f"{name}/channels_last",
            speedup(base, times["wsss_stage_channels_last"]),
            "release per-image loop",
            note="stage path with the network in channels_last (same maps up to float rounding)",
        ),
        ratio(
            f"{name}/bf16",
            speedup(base, times["wsss_stage_bf16"]),
            "release per-image loop",
            note="stage path, trainer.precision=bf16-mixed (CPU autocast; maps differ ~1/256)",
        ),
        Figure(f"{name}/release_images_per_s", images / min(base), "images/s"),
    ]
    return figs, {name: summarize(times, images, "images")}


# --- pseudo labels ----------------------------------------------------------------------------------


def real_scores(mask: np.ndarray, classes: np.ndarray, side: int) -> torch.Tensor:
    """Stand-in refiner output (1, 20, side/8, side/8) for one scale: the ground-truth regions of the
    present classes, area-averaged to stride 8 and squashed like the release's input (smooth blobs)."""
    import torch.nn.functional as F

    onehot = torch.zeros(1, 20, *mask.shape)
    for c in classes:
        onehot[0, c] = torch.from_numpy(mask == c + 1).float()
    return F.interpolate(onehot, size=(side // 8, side // 8), mode="area")


def pseudo(rounds: int, workers: int) -> tuple[list[Figure], dict]:
    from wsss.data.maps_io import save_maps
    from wsss.data.palette import read_index_png, voc_palette
    from wsss.method.crf import crf_map
    from wsss.stages.pseudo_rules import LabelJob, PseudoRule, label_image, set_job

    ids = sample_ids()
    sal_dir = SALIENCY
    tmp = Path(tempfile.mkdtemp(prefix="bench_pseudo_"))
    (tmp / "maps").mkdir()
    palette = voc_palette().flatten().tolist()
    per_image: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    sizes = []
    for image_id in ids:
        mask = read_index_png(SAMPLE / "SegmentationClassAug" / f"{image_id}.png")
        sizes.append(mask.shape)
        classes = mask_classes(mask)
        scores = [real_scores(mask, classes, s) for s in SCALES]
        label = torch.zeros(1, 20)
        label[0, torch.from_numpy(classes)] = 1
        per_image.append((scores, label))
        fused = None
        for score in scores:  # what the maps stage stores under protocol=release: float32 at the image size
            fused = release.upsample_scale(score, label, mask.shape, fused)
        save_maps(tmp / "maps" / f"{image_id}.npz", classes, fused[0, classes].numpy(), dtype="float32")
    job = LabelJob(Ids(ids, sizes), tmp / "maps", tmp / "wsss", sal_dir, PseudoRule(rule="release"), None)
    (tmp / "wsss").mkdir()
    (tmp / "release").mkdir()

    def release_loop() -> None:
        for image_id, (scores, label) in zip(ids, per_image, strict=True):
            release.pseudo_label(
                scores, label, sal_dir / f"{image_id}.png", tmp / "release" / f"{image_id}.png", palette
            )

    def stage(n: int) -> Callable[[], None]:
        return lambda: crf_map(
            label_image, range(len(ids)), n, progress=False, chunksize=4, initializer=set_job, initargs=(job,)
        )

    def pool_start() -> None:
        crf_map(noop, range(workers), workers, progress=False, initializer=set_job, initargs=(job,))

    def spins(k: int) -> Callable[[], object]:
        return lambda: crf_map(spin, range(len(ids)), k, progress=False)

    def spin_pool_start() -> None:  # a pool without the stage's initializer (no wsss imports)
        crf_map(noop, range(workers), workers, progress=False)

    variants = {
        "release_loop": release_loop,
        "wsss_1proc": stage(1),
        f"wsss_{workers}proc": stage(workers),
        "pool_start": pool_start,
        "spin_pool_start": spin_pool_start,
        "spin_1proc": spins(1),
        f"spin_{workers}proc": spins(workers),
    }
    both = interleave_both(variants, rounds, warmup=1)
    wall, cpu = both["wall"], both["cpu"]
    n = len(ids)
    start = min(wall["pool_start"])
    steady = [t - start for t in wall[f"wsss_{workers}proc"]]
    spin_start = min(wall["spin_pool_start"])
    capacity = min(wall["spin_1proc"]) / (workers * max(min(wall[f"spin_{workers}proc"]) - spin_start, 1e-9))
    base = "release pseudo-label loop (after the network)"
    figs = [
        ratio(
            "release/pseudo/labels",
            speedup(wall["release_loop"], steady),
            base,
            5.0,
            f"{n} real images, {workers} workers vs 1 process, wall clock, pool start-up ({start:.2f} s, paid once per stage) subtracted",
        ),
        ratio(
            "release/pseudo/labels_with_pool_start",
            speedup(wall["release_loop"], wall[f"wsss_{workers}proc"]),
            base,
            note=f"{n} images, start-up included",
        ),
        ratio(
            "release/pseudo/labels_per_image_work",
            speedup(cpu["release_loop"], cpu["wsss_1proc"]),
            base,
            note="one process each, CPU seconds: the per-image work alone",
        ),
        Figure(
            f"release/pseudo/machine_parallel_capacity_{workers}proc",
            capacity,
            "share",
            baseline="1 process",
            note="pure CPU work in the same rounds: the share of the cores other users left",
        ),
        Figure(
            "release/pseudo/release_images_per_s",
            n / min(cpu["release_loop"]),
            "images/s",
            note="per CPU second",
        ),
    ]
    details: dict[str, Any] = {"release/pseudo": {c: summarize(t, n, "images") for c, t in both.items()}}
    details["release/pseudo/where_the_time_goes"] = {
        "release": release_breakdown(ids, per_image, sal_dir, tmp / "release", palette),
        "wsss": profile_share(
            lambda: stage(1)(),
            ("load_maps", "read_saliency", "resize_maps", "make_label", "save_mask"),
        ),
    }
    same = [
        np.array_equal(
            read_index_png(tmp / "wsss" / f"{i}.png"), read_index_png(tmp / "release" / f"{i}.png")
        )
        for i in ids
    ]
    details["release/pseudo/labels_identical_to_the_release"] = f"{sum(same)} of {len(ids)} images"
    shutil.rmtree(tmp, ignore_errors=True)
    return figs, details


def release_breakdown(ids, per_image, sal_dir: Path, out: Path, palette) -> dict[str, float]:
    """Seconds per image of each part of the release's loop body."""
    from PIL import Image

    parts = {"read_saliency": 0.0, "upsample_fuse": 0.0, "rule": 0.0, "write_png": 0.0}
    for image_id, (scores, label) in zip(ids, per_image, strict=True):
        t0 = now()
        sal = np.asarray(Image.open(sal_dir / f"{image_id}.png").convert("L"))
        t1 = now()
        fused = None
        for s in scores:
            fused = release.upsample_scale(s, label, sal.shape, fused)
        maps = fused[0].detach().numpy()
        t2 = now()
        lab = release.label_from_maps(maps, sal)
        t3 = now()
        release.save_label(out / f"{image_id}.png", lab, palette)
        t4 = now()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[k] += dt
    return {k: round(v / len(ids), 5) for k, v in parts.items()}


def profile_share(fn: Callable[[], object], names: tuple[str, ...]) -> dict[str, float]:
    """Share of ``fn``'s time spent inside each named function (cumulative, cProfile)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = max(v[3] for v in stats.values())
    out = {}
    for (_, _, func), (_, _, _, cum, _) in stats.items():
        if func in names:
            out[func] = round(out.get(func, 0.0) + cum / total, 3)
    return out


def pseudo_end_to_end(rounds: int, workers: int) -> tuple[list[Figure], dict]:
    """Network included, tiny refiner: release loop vs wsss maps stage (refiner) + pseudo stage."""
    from PIL import Image

    from wsss.data.palette import voc_palette
    from wsss.method.crf import crf_map
    from wsss.stages.maps_writer import write_maps
    from wsss.stages.pseudo_rules import LabelJob, PseudoRule, label_image, set_job

    ids = sample_ids()
    sal_dir = SALIENCY
    torch.manual_seed(0)
    net = refiner("tiny").eval()
    rgbs = [np.asarray(Image.open(SAMPLE / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids]
    sizes = [rgb.shape[:2] for rgb in rgbs]
    x = torch.stack([squashed(rgb, release.SQUASH) for rgb in rgbs])
    labels = one_hot_labels(len(ids), 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pseudo_e2e_"))
    palette = voc_palette().flatten().tolist()
    data = Images(x, labels, sizes)
    data.ids = ids
    predictor, storage = map_stage(net, "refine", "release")  # raw outputs at the image size, float32
    job = LabelJob(Ids(ids, sizes), tmp / "maps", tmp / "wsss", sal_dir, PseudoRule(rule="release"), None)

    def release_loop() -> None:
        out = tmp / "release"
        out.mkdir(exist_ok=True)
        release.pseudo_loop(net, x, labels, [sal_dir / f"{i}.png" for i in ids], out, palette)

    def wsss() -> None:
        shutil.rmtree(tmp / "maps", ignore_errors=True)
        (tmp / "wsss").mkdir(exist_ok=True)
        write_maps(stage_trainer(), predictor, data, tmp / "maps", batch_size=8, **storage)
        crf_map(
            label_image,
            range(len(ids)),
            workers,
            progress=False,
            chunksize=4,
            initializer=set_job,
            initargs=(job,),
        )

    times = interleave(
        {"release_loop": release_loop, "wsss_maps_and_pseudo": wsss}, rounds, warmup=1, clock="wall"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    fig = ratio(
        "release/pseudo/end_to_end_tiny",
        speedup(times["release_loop"], times["wsss_maps_and_pseudo"]),
        "release pseudo-label loop (refiner included)",
        note=f"{len(ids)} real images, tiny refiner, wall clock, pool start-up included",
    )
    return [fig], {"release/pseudo/end_to_end_tiny": summarize(times, len(ids), "images")}


def run(opts: Any) -> Section:
    quiet()
    figs: list[Figure] = []
    details: dict = {}
    parts = [
        lambda: training("tiny", 8, 96, steps=20, warmup=3, rounds=opts.rounds),
        lambda: maps("tiny", images=32, batch=8, rounds=opts.rounds),
        lambda: pseudo(opts.rounds, opts.workers),
        lambda: pseudo_end_to_end(opts.rounds, opts.workers),
    ]
    sizes = (
        "tiny: training batch 8 at 96 px; maps 32 images at 320 (batch 8); pseudo: 46 real VOC images "
        "(~500x375) with real saliency"
    )
    if not opts.quick:
        parts += [
            lambda: training("vgg16", 2, 160, steps=2, warmup=1, rounds=opts.rounds),
            lambda: maps("vgg16", images=4, batch=4, rounds=opts.rounds),
        ]
        sizes += "; VGG-16 (random weights): training batch 2 at 160 px (release: 5 at 320), maps 4 images at 320 (the release's size), batch 4"
    for part in parts:
        start = time.perf_counter()
        f, d = part()
        print(f"   {f[0].name}: {time.perf_counter() - start:.0f} s", flush=True)
        figs += f
        details |= d
    return Section(sizes=sizes, figures=figs, details=details)
