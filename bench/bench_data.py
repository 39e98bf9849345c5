"""Classifier data loader on real VOC files: the cls stage's ``WSSSDataModule`` (protocol=paper) over the 46
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


def loader_rate(root: Path, workers: int, images: int, pin_memory: bool = False) -> float:
    """Images per second of the cls stage's training loader (``WSSSDataModule(data, "cls")`` with the
    paper protocol's crop) over the list ``all`` of ``root``, after a warm-up batch."""
    from common import config

    from wsss.data.datamodule import WSSSDataModule

    cfg = config(
        "data=voc",
        f"data.root={root}",
        "data.train_split=all",
        "data.val_split=all",
        f"data.num_workers={workers}",
        f"data.pin_memory={str(pin_memory).lower()}",
        "data.persistent_workers=true",
    )
    dm = WSSSDataModule(cfg.data, "cls", crop_size=cfg.cls.crop_size, squash_size=cfg.cls.squash_size)
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
