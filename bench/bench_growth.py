"""Cost grows as it should: memory while writing maps, map storage per image, evaluation, (CRF: bench_pseudo).

- memory: peak resident size of a fresh process writing 100 vs 1,000 maps (``write_maps``, tiny network,
  64 px images made on the fly): flat when nothing is kept per image.
- storage: bytes per image of wsss's maps (.npz, present classes only, uint8) on the 46 real VOC sample
  images, paper protocol (original size, scale 1) and release protocol (squashed to 320, scales
  256/320/384), vs the release's 20-channel uint8 .npy at 320 x 320. Random-weight networks make noisier
  maps than trained ones, so the wsss sizes are an upper bound.
- eval: decode all 12,031 real SegmentationClassAug masks (``read_index_png``), derive their image labels
  (``label_from_mask``) and score a prediction against each (``wsss.method.metrics.ConfusionMatrix``);
  seconds and the share of each part.

    python bench/bench_growth.py --child-maps N   # the child process of the memory figure (prints JSON)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import quiet
from fixtures import MASKS_ALL, SAMPLE, mask_classes, sample_ids
from results import Figure, Section
from timing import now

RELEASE_NPY_BYTES = 20 * 320 * 320 + 128
"""np.save of a (20, 320, 320) uint8 array: the data plus a 128-byte header."""


# --- memory ----------------------------------------------------------------------------------------


class Generated:
    """``n`` maps-writer samples made from their index on demand (nothing held per image)."""

    def __init__(self, n: int, size: int = 64) -> None:
        self.n, self.size = n, size
        self.ids = [f"g{i:06d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        g = torch.Generator().manual_seed(i)
        label = torch.zeros(20)
        label[i % 20] = 1
        return {"image": torch.randn(3, self.size, self.size, generator=g), "label": label, "id": self.ids[i]}


def child_maps(n: int) -> dict[str, float]:
    """Write ``n`` maps in this process; its peak RSS (MB) and seconds."""
    import torch
    from common import classifier, stage_trainer

    from wsss.stages.maps_writer import MapPredictor, write_maps

    quiet()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    predictor = MapPredictor(classifier("tiny").eval())  # the paper's maths, one scale
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        written = write_maps(stage_trainer(), predictor, Generated(n), tmp, batch_size=8)["written"]
        seconds = time.perf_counter() - start
    return {"written": written, "peak_rss_mb": peak_rss_mb(), "seconds": seconds}


def peak_rss_mb() -> float:
    """This process's peak resident size (VmHWM; ru_maxrss would include the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(counts: tuple[int, int]) -> tuple[list[Figure], dict]:
    runs = {}
    for n in counts:
        out = subprocess.run(
            [sys.executable, __file__, "--child-maps", str(n)], capture_output=True, text=True, check=True
        )
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    small, large = counts
    growth = runs[large]["peak_rss_mb"] / runs[small]["peak_rss_mb"]
    figs = [
        Figure(
            "growth/maps_peak_rss_ratio",
            growth,
            "x",
            baseline=f"peak RSS writing {small} maps",
            target=1.05,
            at_most=True,
            note=f"{large} vs {small} maps (tiny, 64 px): {runs[large]['peak_rss_mb']:.0f} vs {runs[small]['peak_rss_mb']:.0f} MB",
        ),
        Figure(f"growth/maps_peak_rss_{large}", runs[large]["peak_rss_mb"], "MB"),
    ]
    return figs, {"growth/memory": runs}


# --- storage ---------------------------------------------------------------------------------------


def storage() -> tuple[list[Figure], dict]:
    import torch
    from common import classifier, map_stage, squashed
    from PIL import Image

    from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
    from wsss.data.maps_io import save_maps
    from wsss.data.palette import read_index_png
    from wsss.method.localization import present_class_maps

    torch.manual_seed(0)
    net = classifier("tiny").eval()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    recipes = {protocol: map_stage(net, "cls", protocol) for protocol in ("paper", "release")}
    sizes: dict[str, list[int]] = {"paper": [], "release": []}
    classes_per_image = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for image_id in sample_ids():
            rgb = np.array(Image.open(SAMPLE / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
            mask = read_index_png(SAMPLE / "SegmentationClassAug" / f"{image_id}.png")
            label = torch.zeros(1, 20)
            label[0, torch.from_numpy(mask_classes(mask))] = 1
            classes_per_image.append(int(label.sum()))
            original = ((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - mean) / std)[None]
            views = {"paper": original, "release": squashed(rgb, 320)[None]}
            for protocol, x in views.items():
                predictor, storage = recipes[protocol]  # each protocol's scales, maths and storage
                [(present, maps)] = present_class_maps(net, x, label, predictor.scales, maths=predictor.maths)
                path = Path(tmp) / f"{protocol}_{image_id}.npz"
                save_maps(path, present.numpy(), maps.numpy(), **storage)
                sizes[protocol].append(path.stat().st_size)
        np.save(Path(tmp) / "release.npy", np.zeros((20, 320, 320), np.uint8))
        npy = (Path(tmp) / "release.npy").stat().st_size
    mean_bytes = {k: float(np.mean(v)) for k, v in sizes.items()}
    figs = [
        Figure("growth/map_bytes_per_image/release_npy", npy, "bytes", note="20 x 320 x 320 uint8 .npy"),
        Figure(
            "growth/map_bytes_per_image/paper",
            mean_bytes["paper"],
            "bytes",
            note="wsss .npz, original size, present classes",
        ),
        Figure(
            "growth/map_bytes_per_image/release_protocol",
            mean_bytes["release"],
            "bytes",
            note="wsss .npz, 320 x 320, present classes",
        ),
        Figure(
            "growth/map_storage_vs_release_npy",
            npy / mean_bytes["paper"],
            "x",
            baseline="release .npy bytes",
            note="times smaller (paper protocol); random weights: an upper bound on wsss's size",
        ),
    ]
    details = {
        "growth/storage": {
            "images": len(sizes["paper"]),
            "mean_classes_per_image": float(np.mean(classes_per_image)),
            "bytes": {k: {"mean": mean_bytes[k], "max": max(v), "min": min(v)} for k, v in sizes.items()},
            "release_npy_bytes": npy,
            "projected_train_aug_gb": {k: v * 10_582 / 1e9 for k, v in mean_bytes.items()}
            | {"release_npy": npy * 10_582 / 1e9},
        }
    }
    return figs, details


# --- eval ------------------------------------------------------------------------------------------


def evaluation(limit: int | None = None) -> tuple[list[Figure], dict]:
    from wsss.data.palette import read_index_png
    from wsss.data.voc import label_from_mask
    from wsss.method.metrics import ConfusionMatrix

    paths = sorted(MASKS_ALL.glob("*.png"))[:limit]
    if not paths:
        raise FileNotFoundError(f"no masks in {MASKS_ALL}; set WSSS_SHARED_DATA=<folder with voc_masks_all>")
    acc = ConfusionMatrix(21)
    decode = labels = score = 0.0
    pixels = 0
    for path in paths:
        t0 = now()
        gt = read_index_png(path)
        t1 = now()
        label_from_mask(gt)
        t2 = now()
        pred = np.roll(gt, 8, axis=1)  # a prediction that is off by 8 px (made outside the timed parts)
        t3 = now()
        acc.update(pred, gt)
        t4 = now()
        decode, labels, score = decode + t1 - t0, labels + t2 - t1, score + t4 - t3
        pixels += gt.size
    total = decode + labels + score
    miou = acc.compute()["miou"]
    figs = [
        Figure(
            "growth/eval_seconds",
            decode + score,
            "s",
            note=f"{len(paths):,} real masks: decode + score (1 process)",
        ),
        Figure("growth/eval_decode_share", decode / (decode + score), "share", note="of decode + score"),
        Figure("growth/eval_masks_per_s", len(paths) / (decode + score), "masks/s"),
    ]
    details = {
        "growth/eval": {
            "masks": len(paths),
            "megapixels": pixels / 1e6,
            "seconds": {"decode": decode, "labels": labels, "score": score, "total": total},
            "miou_of_the_shifted_prediction": miou,
        }
    }
    return figs, details


def run(opts: Any) -> Section:
    quiet()
    counts = (20, 200) if opts.quick else (100, 1000)
    parts = [lambda: memory(counts), storage, lambda: evaluation(500 if opts.quick else None)]
    figs, details = [], {}
    for part in parts:
        f, d = part()
        figs += f
        details |= d
    sizes = (
        f"memory: {counts[0]} vs {counts[1]} maps, tiny network, 64 px; storage: 46 real images; "
        f"eval: {'500' if opts.quick else 'all 12,031'} real masks"
    )
    return Section(sizes=sizes, figures=figs, details=details)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child-maps", type=int, required=True)
    print(json.dumps(child_maps(parser.parse_args().child_maps)))
