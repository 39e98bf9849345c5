"""MS-COCO 2014 for WSSS: segmentation masks and image-level labels from the instance annotations, once.

    python -m wsss.data.coco --annotations annotations/instances_train2014.json --images train2014 \\
        --split train --out /data/coco
    python -m wsss.data.coco --annotations annotations/instances_val2014.json --images val2014 \\
        --split val --out /data/coco
    python train.py stage=pipeline data=coco data.root=/data/coco data.saliency_dir=<saliency PNGs>

The standard WSSS split keeps the images with at least one annotation (train2014: 82,081 images,
val2014: 40,137). Classes are the 80 categories in category-id order (ids 1..90 with gaps -> 1..80,
``classes.txt``). Each image's mask (``SegmentationClassAug/<id>.png``, index PNG):

- non-crowd instances are drawn in decreasing area order, so where instances overlap the smaller
  (later drawn) one wins - an object in front of a larger one keeps its pixels;
- crowd regions (``iscrowd=1``) are drawn last as 255: ignored by every score;
- every other pixel is background (0).

The image-level label (``labels.txt``, read as ``data.labels_file``) is the set of categories annotated
in the image, crowd annotations included. Images are linked (``--copy``: copied) into ``JPEGImages``.

Polygons and RLEs (uncompressed and compressed) are decoded here, in numpy, with the rasterisation of
the COCO API (``pycocotools``' ``rleFrPoly``: boundary upsampled 5x, pixels whose centre lies inside);
the test compares against pycocotools when it is installed (``pip install 'wsss[coco]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsss.data.palette import save_mask
from wsss.errors import DatasetLayoutError

IGNORE = 255


# ---------------------------------------------------------------------------------------------- RLE


def rle_decode(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    """A COCO run-length encoding (column-major runs, zeros first) -> bool mask (h, w)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE runs sum to {int(counts.sum())}, not {h} x {w} = {h * w}")
    flat = np.repeat(np.arange(counts.size) % 2 == 1, counts)
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray) -> list[int]:
    """Bool mask (h, w) -> COCO run lengths (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def counts_from_string(text: str) -> list[int]:
    """The COCO API's compressed RLE string -> run lengths (``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """Run lengths -> the COCO API's compressed RLE string (``rleToString``)."""
    out = []
    for i, value in enumerate(counts):
        x = int(value) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def polygon_counts(xy: Sequence[float], h: int, w: int) -> list[int]:
    """A polygon ``[x1, y1, x2, y2, ...]`` -> run lengths, as the COCO API rasterises it (``rleFrPoly``)."""
    scale = 5.0
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    x = np.trunc(scale * pts[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(scale * pts[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(pts)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            t = np.arange(dx + 1)
            t = dx - t if flip else t
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            t = np.arange(dy + 1)
            t = dy - t if flip else t
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    step = u[1:] != u[:-1]
    uj, up, vj, vp = u[1:][step], u[:-1][step], v[1:][step], v[:-1][step]
    xd = (np.where(uj < up, uj, uj - 1).astype(np.float64) + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = (np.minimum(vj, vp).astype(np.float64) + 0.5) / scale - 0.5
    yd = np.ceil(np.clip(yd, 0, h))
    a = np.sort(np.append(xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64), h * w))
    a = np.diff(np.concatenate([[0], a]))
    runs = [int(a[0])]
    j = 1
    while j < a.size:
        if a[j] > 0:
            runs.append(int(a[j]))
            j += 1
        else:
            j += 1
            if j < a.size:
                runs[-1] += int(a[j])
                j += 1
    return runs


def annotation_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """An annotation's ``segmentation`` (polygons, RLE with a list or a string of counts) -> bool (h, w)."""
    if isinstance(segmentation, list):  # polygons: their union
        mask = np.zeros((h, w), dtype=bool)
        for polygon in segmentation:
            if len(polygon) >= 6:
                mask |= rle_decode(polygon_counts(polygon, h, w), h, w)
        return mask
    if isinstance(segmentation, dict) and "counts" in segmentation:
        rh, rw = (int(v) for v in segmentation["size"])
        if (rh, rw) != (h, w):
            raise ValueError(f"RLE of size {rh}x{rw} on an image of {h}x{w}")
        counts = segmentation["counts"]
        if isinstance(counts, str | bytes):
            counts = counts_from_string(counts.decode() if isinstance(counts, bytes) else counts)
        return rle_decode(counts, h, w)
    raise ValueError(f"unknown segmentation {type(segmentation).__name__}: expected polygons or an RLE")


# ---------------------------------------------------------------------------------------------- masks


def image_mask(annotations: Sequence[dict[str, Any]], index: dict[int, int], h: int, w: int) -> np.ndarray:
    """The class-id mask of one image: instances by decreasing area (smaller wins), crowd regions 255."""
    mask = np.zeros((h, w), dtype=np.uint8)
    instances = [a for a in annotations if not a.get("iscrowd", 0)]
    for ann in sorted(instances, key=lambda a: (-float(a.get("area", 0.0)), int(a.get("id", 0)))):
        mask[annotation_mask(ann["segmentation"], h, w)] = index[int(ann["category_id"])]
    for ann in annotations:
        if ann.get("iscrowd", 0):
            mask[annotation_mask(ann["segmentation"], h, w)] = IGNORE
    return mask


def convert(annotations: Path, images: Path, out: Path, split: str, copy: bool = False) -> dict[str, int]:
    """Write ``split`` of a COCO instances file into the layout under ``out``; returns counts."""

    try:
        data = json.loads(Path(annotations).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetLayoutError(f"--annotations {annotations}: not a readable COCO json ({err})") from err
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    index = {int(c["id"]): k + 1 for k, c in enumerate(categories)}
    names = [str(c["name"]).replace(" ", "_") for c in categories]
    voc = Path(out) / "VOCdevkit" / "VOC2012"
    classes_file = voc / "classes.txt"
    if classes_file.is_file() and classes_file.read_text().split() != names:
        raise DatasetLayoutError(
            f"{classes_file} holds other categories than {annotations}; convert every split into a fresh --out"
        )
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    kept = [img for img in sorted(data["images"], key=lambda i: int(i["id"])) if int(img["id"]) in by_image]
    missing = [img["file_name"] for img in kept if not (Path(images) / img["file_name"]).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"--images {images} lacks {len(missing)} annotated images (e.g. {missing[0]}); extract the whole split"
        )
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    labels_path = voc / "labels.txt"
    labels: dict[str, str] = {}
    if labels_path.is_file():
        for line in labels_path.read_text().splitlines():
            if line.strip():
                labels[line.split()[0]] = line
    ids = []
    for img in kept:
        image_id = Path(img["file_name"]).stem
        h, w = int(img["height"]), int(img["width"])
        anns = by_image[int(img["id"])]
        save_mask(voc / "SegmentationClassAug" / f"{image_id}.png", image_mask(anns, index, h, w))
        present = sorted({index[int(a["category_id"])] - 1 for a in anns})
        labels[image_id] = " ".join([image_id, *map(str, present)])
        target, source = voc / "JPEGImages" / f"{image_id}.jpg", (Path(images) / img["file_name"]).absolute()
        target.unlink(missing_ok=True)
        if copy:
            shutil.copyfile(source, target)
        else:
            os.symlink(source, target)
        ids.append(image_id)
    (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    labels_path.write_text("".join(f"{line}\n" for line in labels.values()))
    classes_file.write_text("".join(f"{n}\n" for n in names))
    return {"images": len(ids), "skipped_unannotated": len(data["images"]) - len(ids), "classes": len(names)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="COCO instances -> wsss's dataset layout (data=coco).")
    parser.add_argument("--annotations", type=Path, required=True, help="instances_<split>2014.json")
    parser.add_argument("--images", type=Path, required=True, help="the folder of the split's JPEGs")
    parser.add_argument("--split", required=True, help="the list to write: train or val")
    parser.add_argument("--out", type=Path, required=True, help="the data.root to write")
    parser.add_argument("--copy", action="store_true", help="copy the images (default: symlinks)")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.annotations, args.images, args.out, args.split, args.copy)
    except DatasetLayoutError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"{args.split}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
