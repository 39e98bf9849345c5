"""Data throughput: the classifier loader and image-level label derivation on real VOC files.

- loader: ``WSSSDataModule(stage="cls", protocol="paper")`` over the real sample images of
  ../shared/data/voc_sample (train_aug + val lists, original resolution ~500x375), crop 321, batch 5,
  with 0, 1 and 2 workers; images/s after a warm-up batch (decode + jitter + normalise + pad/crop/flip
  + collate). Persistent workers, so epoch restarts cost nothing.
- labels: read all 12,031 SegmentationClassAug masks of ../shared/data/voc_masks_all and derive the
  20-dim labels, in 1 and 4 threads (``VOCDataset.labels`` uses 4); the train_aug histogram of classes
  per image is checked against SPEC.md (6,746 / 2,894 / 774 / 141 / 27).

    python bench/bench_data.py [--images 300]

Results: a table on stdout and bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from wsss.data.datamodule import WSSSDataModule
from wsss.data.voc import label_from_mask, read_index_png

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
SPEC_HISTOGRAM = {1: 6746, 2: 2894, 3: 774, 4: 141, 5: 27}


def sample_root(tmp: Path) -> Path:
    """A VOC2012 folder of symlinks to the 46 sample images, with one list naming all of them."""
    src = SHARED / "voc_sample" / "VOCdevkit" / "VOC2012"
    voc = tmp / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClassAug"):
        (voc / sub).symlink_to(src / sub)
    ids = sorted(p.stem for p in (src / "JPEGImages").glob("*.jpg"))
    (voc / "ImageSets" / "Segmentation" / "all.txt").write_text("\n".join(ids) + "\n")
    return tmp


def loader_rate(root: Path, workers: int, images: int) -> float:
    cfg = OmegaConf.create(
        {
            "root": str(root),
            "train_split": "all",
            "val_split": "all",
            "crop_size": 321,
            "batch_size": 5,
            "num_workers": workers,
            "persistent_workers": True,
            "pin_memory": False,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
    )
    dm = WSSSDataModule(cfg, "cls", "paper")
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen, start = -1, 0.0
    while seen < images:
        for batch in loader:
            if seen < 0:  # warm-up: worker start and first batch
                seen, start = 0, time.perf_counter()
                continue
            seen += batch["image"].shape[0]
            if seen >= images:
                break
    return seen / (time.perf_counter() - start)


def derive_labels(paths: list[Path], threads: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        labels = np.stack(list(pool.map(lambda p: label_from_mask(read_index_png(p)), paths)))
    return labels, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300, help="images timed per loader setting")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"real VOC fixtures not found at {SHARED}; this benchmark needs them")
    torch.set_num_threads(1)
    result: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "loader_images_per_s": {}}

    with tempfile.TemporaryDirectory() as tmp:
        root = sample_root(Path(tmp))
        for workers in (0, 1, 2):
            result["loader_images_per_s"][str(workers)] = loader_rate(root, workers, args.images)

    mask_dir = SHARED / "voc_masks_all" / "SegmentationClassAug"
    paths = sorted(mask_dir.glob("*.png"))
    result["masks"] = len(paths)
    result["label_seconds"] = {}
    labels = None
    for threads in (1, 4):
        labels, seconds = derive_labels(paths, threads)
        result["label_seconds"][str(threads)] = seconds
    train_aug = {
        line.split()[0].split("/")[-1][:-4]
        for line in (SHARED / "voc_masks_all" / "lists" / "train_aug.txt").read_text().splitlines()
        if line.strip()
    }
    counts = labels[[p.stem in train_aug for p in paths]].sum(axis=1).astype(int)
    histogram = {int(k): int((counts == k).sum()) for k in np.unique(counts)}
    result["train_aug_classes_per_image"] = histogram
    result["histogram_matches_spec"] = histogram == SPEC_HISTOGRAM

    print(f"machine: {result['machine']} ({result['cpus']} CPUs)")
    print("classifier loader (paper, crop 321, batch 5, real ~500x375 JPEGs)")
    print("  workers | images/s")
    for w, rate in result["loader_images_per_s"].items():
        print(f"  {w:>7} | {rate:8.1f}")
    print(f"label derivation over {result['masks']:,} masks")
    print("  threads | seconds")
    for t, seconds in result["label_seconds"].items():
        print(f"  {t:>7} | {seconds:7.2f}")
    print(f"train_aug classes per image: {histogram} (matches SPEC: {result['histogram_matches_spec']})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS / 'data.json'}")


if __name__ == "__main__":
    main()
