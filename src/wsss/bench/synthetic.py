"""Generated data in the VOC layout at VOC's image sizes, for measurements where no VOC is at hand.

``synthetic_voc`` writes JPEG images (blocky noise, so decoding costs what a photo of that size costs),
index-PNG masks with one to three elliptic objects, grayscale saliency maps of the objects, and the split
lists; image ``i`` is portrait every third time (VOC's images are 500 px on the long side, most of them
landscape). Nothing about the pixels is meant to be learnable: it feeds loaders and networks with
files of the right sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from wsss.data.palette import save_mask


def _objects(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), np.uint8)
    for c in rng.choice(20, size=n, replace=False):
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.12, 0.3) * h, rng.uniform(0.12, 0.3) * w
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = c + 1
    return mask


def synthetic_voc(
    root: str | Path,
    splits: Mapping[str, int],
    image_hw: tuple[int, int] = (375, 500),
    seed: int = 0,
    saliency: bool = True,
) -> Path:
    """Write ``<root>/VOCdevkit/VOC2012`` holding ``max(splits.values())`` images and one list per split
    (the first n ids); saliency maps in ``<VOC2012>/saliency``. Returns ``root`` (a ``data.root``)."""
    from PIL import Image

    voc = Path(root) / "VOCdevkit" / "VOC2012"
    folders = [
        "JPEGImages",
        "SegmentationClassAug",
        "ImageSets/Segmentation",
        *(["saliency"] if saliency else []),
    ]
    for sub in folders:
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = max(splits.values())
    ids = [f"s{i:05d}" for i in range(total)]
    for i, image_id in enumerate(ids):
        h, w = image_hw if i % 3 != 2 else image_hw[::-1]
        mask = _objects(rng, h, w, int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])))
        blocks = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        rgb = blocks.repeat(8, 0).repeat(8, 1)[:h, :w]
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        save_mask(voc / "SegmentationClassAug" / f"{image_id}.png", mask)
        if saliency:
            Image.fromarray(np.where(mask > 0, 230, 10).astype(np.uint8)).save(
                voc / "saliency" / f"{image_id}.png"
            )
    for split, n in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[:n]))
    return Path(root)
