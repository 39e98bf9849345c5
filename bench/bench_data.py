"""Classifier data loader on real VOC files: ``WSSSDataModule(stage="cls", protocol="paper")`` over the 46
real sample images (original resolution ~500 x 375), crop 321, batch 5, with 0, 1 and 2 workers;
images/s after a warm-up batch (decode + jitter + normalise + pad/crop/flip + collate), persistent
workers. (Mask decoding and label derivation over all 12,031 masks: bench_growth's eval.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from fixtures import SAMPLE
from omegaconf import OmegaConf
from results import Figure, Section


def sample_root(tmp: Path) -> Path:
    """A VOC2012 folder of symlinks to the 46 sample images, with one list naming all of them."""
    voc = tmp / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClassAug"):
        (voc / sub).symlink_to(SAMPLE / sub)
    ids = sorted(p.stem for p in (SAMPLE / "JPEGImages").glob("*.jpg"))
    (voc / "ImageSets" / "Segmentation" / "all.txt").write_text("\n".join(ids) + "\n")
    return tmp


def synthetic_voc(root: Path, n: int, size: tuple[int, int] = (375, 500), seed: int = 0) -> Path:
    """A VOC2012 folder of ``n`` generated JPEGs (VOC's usual 500 x 375) and masks, list ``all``: loader
    input where no real data is at hand (the GPU machine)."""
    import numpy as np
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    ids = [f"s{i:05d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        inside = ((yy - rng.uniform(0.3, 0.7) * h) / (0.25 * h)) ** 2 + (
            (xx - rng.uniform(0.3, 0.7) * w) / (0.25 * w)
        ) ** 2 < 1
        rgb = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        Image.fromarray(np.where(inside, 1 + i % 20, 0).astype(np.uint8)).save(
            voc / "SegmentationClassAug" / f"{image_id}.png"
        )
    (voc / "ImageSets" / "Segmentation" / "all.txt").write_text("\n".join(ids) + "\n")
    return root


def loader_rate(root: Path, workers: int, images: int, pin_memory: bool = False) -> float:
    from wsss.data.datamodule import WSSSDataModule

    cfg = OmegaConf.create(
        {
            "root": str(root),
            "train_split": "all",
            "val_split": "all",
            "crop_size": 321,
            "batch_size": 5,
            "num_workers": workers,
            "persistent_workers": True,
            "pin_memory": pin_memory,
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


def run(opts: Any) -> Section:
    images = 40 if opts.quick else 200
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = sample_root(Path(tmp))
        for workers in (0, 1, 2):
            rates[workers] = loader_rate(root, workers, images)
    figs = [Figure(f"data/cls_loader_images_per_s/{w}_workers", r, "images/s") for w, r in rates.items()]
    return Section(
        sizes=f"{images} images per setting, crop 321, batch 5", figures=figs, details={"data/loader": rates}
    )
