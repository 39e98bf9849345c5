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

The allocator setting ``wsss.cpu_memory`` is process-wide: before a baseline the glibc default's steady
state (mmap threshold 32 MiB) is set back, so every variant runs as it would in its own process.
"""

from __future__ import annotations

import copy
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
from common import Images, batch_loader, classifier, lightning_trainer, one_hot_labels, quiet, squashed
from fixtures import SALIENCY, SAMPLE, Ids, mask_classes, noop, sample_ids
from results import Figure, Section, ratio
from timing import interleave, speedup, summarize

from wsss.bench.measure import fit_seconds_per_step, loop_seconds_per_step
from wsss.cpu_memory import GLIBC_MAX_DYNAMIC, retain_freed_memory, set_malloc_thresholds

SCALES = release.SCALES


def glibc_default() -> None:
    """The steady state of glibc's own thresholds (what a process that never called mallopt runs with)."""
    set_malloc_thresholds(GLIBC_MAX_DYNAMIC, 2 * GLIBC_MAX_DYNAMIC)


def as_default(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        glibc_default()
        return fn()

    return run


def as_retained(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        retain_freed_memory()
        return fn()

    return run


# --- training ---------------------------------------------------------------------------------------


def training(
    backbone: str, batch: int, size: int, steps: int, warmup: int, rounds: int
) -> tuple[list[Figure], dict]:
    from wsss.tasks.classifier import ClassifierTask

    torch.manual_seed(0)
    net = classifier(backbone).train()
    theirs = copy.deepcopy(net)
    opt = release.optimizer(theirs)
    task = ClassifierTask(net, protocol="release", lr=1e-3, log_images=0)

    def make(g: torch.Generator) -> dict:
        return {
            "image": torch.randn(batch, 3, size, size, generator=g),
            "label": (torch.rand(batch, 20, generator=g) < 0.15).float(),
        }

    loader = batch_loader(make, warmup + steps)

    def release_step(b: dict) -> None:
        release.train_step(theirs, opt, b["image"], b["label"])

    variants = {
        "release_step": as_default(lambda: loop_seconds_per_step(release_step, loader, steps, warmup)),
        "wsss_lightning": as_default(lambda: fit_seconds_per_step(task, loader, steps, warmup)),
        "wsss_lightning_retained_memory": as_retained(
            lambda: fit_seconds_per_step(task, loader, steps, warmup)
        ),
    }
    times = interleave(variants, rounds, warmup=0)
    glibc_default()
    name = f"release/training/{backbone}"
    figs = [
        ratio(
            name,
            speedup(times["release_step"], times["wsss_lightning"]),
            "release training step",
            1.0,
            f"batch {batch} at {size} px, s/step",
        ),
        ratio(
            f"{name}/retained_memory",
            speedup(times["release_step"], times["wsss_lightning_retained_memory"]),
            "release training step",
            note="with wsss.cpu_memory.retain_freed_memory (not yet in training)",
        ),
    ]
    return figs, {name: summarize(times, 1, "steps")}


# --- maps -------------------------------------------------------------------------------------------


def maps(backbone: str, images: int, batch: int, rounds: int) -> tuple[list[Figure], dict]:
    from wsss.maps import present_class_maps, write_maps

    torch.manual_seed(0)
    net = classifier(backbone).eval()
    x = torch.randn(images, 3, release.SQUASH, release.SQUASH)
    labels = one_hot_labels(images)
    tmp = Path(tempfile.mkdtemp(prefix="bench_maps_"))
    data = Images(x, labels)

    def release_loop() -> None:
        release.map_loop(net, x, labels, out_dir=tmp)

    def core() -> None:
        with torch.inference_mode():
            for start in range(0, images, batch):
                for _, m in present_class_maps(
                    net, x[start : start + batch], labels[start : start + batch], SCALES
                ):
                    m.cpu().numpy()

    def stage(precision: str = "32-true") -> Callable[[], None]:
        def run() -> None:
            out = tmp / "stage"
            shutil.rmtree(out, ignore_errors=True)
            write_maps(lightning_trainer(precision=precision), net, data, out, SCALES, batch_size=batch)

        return run

    variants = {
        "release_loop": as_default(release_loop),
        "wsss_stage": as_default(stage()),  # MapPredictor retains freed memory itself on CPU
        "wsss_batched_core_default_malloc": as_default(core),
        "wsss_batched_core_retained_memory": as_retained(core),
        "wsss_stage_bf16": as_default(stage("bf16-mixed")),
    }
    try:
        times = interleave(variants, rounds, warmup=1)
    finally:
        glibc_default()
        shutil.rmtree(tmp, ignore_errors=True)
    name = f"release/maps/{backbone}"
    base = times["release_loop"]
    figs = [
        ratio(
            name,
            speedup(base, times["wsss_stage"]),
            "release per-image loop",
            1.2,
            f"{images} images, wsss batch {batch}, write_maps stage path",
        ),
        ratio(
            f"{name}/core_default_malloc",
            speedup(base, times["wsss_batched_core_default_malloc"]),
            "release per-image loop",
            note="present_class_maps, glibc's default thresholds (before the fix)",
        ),
        ratio(
            f"{name}/core_retained_memory",
            speedup(base, times["wsss_batched_core_retained_memory"]),
            "release per-image loop",
            note="present_class_maps with retain_freed_memory (the fix)",
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
    from wsss.crf import crf_map
    from wsss.data.maps_io import save_maps
    from wsss.data.palette import read_mask, voc_palette
    from wsss.pseudo import LabelJob, PseudoRule, label_image, set_job

    ids = sample_ids()
    sal_dir = SALIENCY
    tmp = Path(tempfile.mkdtemp(prefix="bench_pseudo_"))
    (tmp / "maps").mkdir()
    palette = voc_palette().flatten().tolist()
    per_image: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    for image_id in ids:
        mask = read_mask(SAMPLE / "SegmentationClassAug" / f"{image_id}.png")
        classes = mask_classes(mask)
        scores = [real_scores(mask, classes, s) for s in SCALES]
        label = torch.zeros(1, 20)
        label[0, torch.from_numpy(classes)] = 1
        per_image.append((scores, label))
        fused = torch.stack(
            [
                torch.nn.functional.interpolate(s, size=(320, 320), mode="bilinear", align_corners=True)
                for s in scores
            ]
        ).amax(0)[0, classes]
        save_maps(tmp / "maps" / f"{image_id}.npz", classes, fused.clamp(0, 1).numpy())
    job = LabelJob(Ids(ids), tmp / "maps", tmp / "wsss", sal_dir, PseudoRule(protocol="release"), None)
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

    variants = {
        "release_loop": release_loop,
        "wsss_1proc": stage(1),
        f"wsss_{workers}proc": stage(workers),
        "pool_start": pool_start,
    }
    times = interleave(variants, rounds, warmup=1)
    n = len(ids)
    parallel = times[f"wsss_{workers}proc"]
    steady = [t - min(times["pool_start"]) for t in parallel]
    figs = [
        ratio(
            "release/pseudo/labels",
            speedup(times["release_loop"], steady),
            "release pseudo-label loop (after the network)",
            5.0,
            f"{n} real images, {workers} workers, pool start-up ({min(times['pool_start']):.2f} s) subtracted: it is paid once per stage",
        ),
        ratio(
            "release/pseudo/labels_with_pool_start",
            speedup(times["release_loop"], parallel),
            "release pseudo-label loop (after the network)",
            note=f"{n} images, start-up included",
        ),
        ratio(
            "release/pseudo/labels_1proc",
            speedup(times["release_loop"], times["wsss_1proc"]),
            "release pseudo-label loop (after the network)",
            note="one process: the per-image work alone",
        ),
        Figure("release/pseudo/release_images_per_s", n / min(times["release_loop"]), "images/s"),
    ]
    details: dict[str, Any] = {"release/pseudo": summarize(times, n, "images")}
    details["release/pseudo/where_the_time_goes"] = {
        "release": release_breakdown(ids, per_image, sal_dir, tmp / "release", palette),
        "wsss": profile_share(
            lambda: stage(1)(),
            ("load_maps", "read_saliency", "resize_maps", "dense_maps", "make_label", "save_mask"),
        ),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    return figs, details


def release_breakdown(ids, per_image, sal_dir: Path, out: Path, palette) -> dict[str, float]:
    """Seconds per image of each part of the release's loop body."""
    import time

    from PIL import Image

    parts = {"read_saliency": 0.0, "upsample_fuse": 0.0, "rule": 0.0, "write_png": 0.0}
    for image_id, (scores, label) in zip(ids, per_image, strict=True):
        t0 = time.perf_counter()
        sal = np.asarray(Image.open(sal_dir / f"{image_id}.png").convert("L"))
        t1 = time.perf_counter()
        fused = None
        for s in scores:
            fused = release.upsample_scale(s, label, sal.shape, fused)
        maps = fused[0].detach().numpy()
        t2 = time.perf_counter()
        lab = release.label_from_maps(maps, sal)
        t3 = time.perf_counter()
        release.save_label(out / f"{image_id}.png", lab, palette)
        t4 = time.perf_counter()
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

    from wsss.crf import crf_map
    from wsss.data.palette import voc_palette
    from wsss.maps import write_maps
    from wsss.pseudo import LabelJob, PseudoRule, label_image, set_job

    ids = sample_ids()
    sal_dir = SALIENCY
    torch.manual_seed(0)
    net = classifier("tiny", drs="off").eval()
    x = torch.stack(
        [
            squashed(np.asarray(Image.open(SAMPLE / "JPEGImages" / f"{i}.jpg").convert("RGB")), 320)
            for i in ids
        ]
    )
    labels = one_hot_labels(len(ids), 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pseudo_e2e_"))
    palette = voc_palette().flatten().tolist()
    data = Images(x, labels)
    data.ids = ids
    job = LabelJob(Ids(ids), tmp / "maps", tmp / "wsss", sal_dir, PseudoRule(protocol="release"), None)

    def release_loop() -> None:
        out = tmp / "release"
        out.mkdir(exist_ok=True)
        release.pseudo_loop(net, x, labels, [sal_dir / f"{i}.png" for i in ids], out, palette)

    def wsss() -> None:
        shutil.rmtree(tmp / "maps", ignore_errors=True)
        (tmp / "wsss").mkdir(exist_ok=True)
        write_maps(lightning_trainer(), net, data, tmp / "maps", SCALES, batch_size=8)
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
        {"release_loop": as_default(release_loop), "wsss_maps_and_pseudo": as_default(wsss)}, rounds, warmup=1
    )
    glibc_default()
    shutil.rmtree(tmp, ignore_errors=True)
    fig = ratio(
        "release/pseudo/end_to_end_tiny",
        speedup(times["release_loop"], times["wsss_maps_and_pseudo"]),
        "release pseudo-label loop (refiner included)",
        note=f"{len(ids)} real images, tiny refiner, pool start-up included",
    )
    return [fig], {"release/pseudo/end_to_end_tiny": summarize(times, len(ids), "images")}


def run(opts: Any) -> Section:
    quiet()
    figs: list[Figure] = []
    details: dict = {}
    parts = [
        lambda: training("tiny", 8, 96, steps=20, warmup=3, rounds=opts.rounds),
        lambda: maps("tiny", images=16, batch=8, rounds=opts.rounds),
        lambda: pseudo(opts.rounds, opts.workers),
        lambda: pseudo_end_to_end(opts.rounds, opts.workers),
    ]
    sizes = (
        "tiny: training batch 8 at 96 px; maps 16 images at 320 (batch 8); pseudo: 46 real VOC images "
        "(~500x375) with real saliency"
    )
    if not opts.quick:
        parts += [
            lambda: training("vgg16", 2, 224, steps=3, warmup=1, rounds=opts.rounds),
            lambda: maps("vgg16", images=4, batch=4, rounds=opts.rounds),
        ]
        sizes += "; VGG-16 (random weights): training batch 2 at 224 px (release: 5 at 320), maps 4 images at 320 (the release's size), batch 4"
    for part in parts:
        start = time.perf_counter()
        f, d = part()
        print(f"   {f[0].name}: {time.perf_counter() - start:.0f} s", flush=True)
        figs += f
        details |= d
    return Section(sizes=sizes, figures=figs, details=details)
