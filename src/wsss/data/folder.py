"""Any dataset with image-level labels -> wsss's dataset layout, once (``data=folder`` reads the result).

    python -m wsss.data.folder --images photos/ --labels labels.txt --classes classes.txt --out /data/mine \\
        [--masks masks/] [--saliency saliency/] [--val val.txt]

Inputs:

- ``--classes``: one foreground class name per line (background not listed); their order gives the ids
  (the first name is class 0 of the labels, 1 in masks).
- ``--labels``: ``<id> <label> <label> ...`` per line, or a CSV (``id,labels`` rows, labels separated by
  spaces or ``;``, an optional ``id`` header), labels as class names or 0-based ids; every listed image
  is a training image (split ``train_aug``).
- ``--images``: ``<id>.jpg`` (``.jpeg``, ``.png`` re-encoded as JPEG, quality 95).
- ``--masks`` (optional): ``<id>.png`` index PNGs, 0 background, 1..K classes, 255 ignored, the image's
  size; the images with one form split ``train`` (seed / pseudo-label quality).
- ``--saliency`` (optional): ``<id>.png`` 8-bit grayscale, the image's size (``data.saliency_dir``).
- ``--val`` (optional): ids (one per line) of validation images with masks (split ``val``; they need no
  label line); without it ``val`` is ``train``.

Writes ``<out>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClassAug, saliency, ImageSets/Segmentation,
classes.txt, labels.txt}``. Every input is checked first; the first bad file is refused naming it.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.palette import read_index_png, save_mask
from wsss.data.voc import check_mask
from wsss.errors import DatasetLayoutError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_classes(path: Path) -> list[str]:
    """The class names of ``--classes`` (distinct, 1..254)."""
    if not path.is_file():
        raise DatasetLayoutError(f"--classes {path}: no such file; give one class name per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or len(set(names)) != len(names) or len(names) > 254:
        raise DatasetLayoutError(f"{path}: give 1..254 distinct class names, one per line; got {len(names)}")
    return names


def _rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, id, label tokens) of a list or CSV file."""
    rows = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            for n, cells in enumerate(csv.reader(fh), start=1):
                if (
                    not cells
                    or not cells[0].strip()
                    or (n == 1 and cells[0].strip().lower() in ("id", "image"))
                ):
                    continue
                tokens = [t for cell in cells[1:] for t in cell.replace(";", " ").split()]
                rows.append((n, cells[0].strip(), tokens))
    else:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if parts:
                rows.append((n, parts[0], parts[1:]))
    return rows


def read_labels(path: Path, classes: Sequence[str]) -> dict[str, list[int]]:
    """id -> sorted 0-based class ids, from names or ids; an unknown label is refused naming the line."""
    if not path.is_file():
        raise DatasetLayoutError(f"--labels {path}: no such file; give '<id> <label> ...' lines or a CSV")
    index = {name: k for k, name in enumerate(classes)}
    labels: dict[str, list[int]] = {}
    for n, image_id, tokens in _rows(path):
        ids = set()
        for token in tokens:
            if token in index:
                ids.add(index[token])
            elif token.isdigit() and int(token) < len(classes):
                ids.add(int(token))
            else:
                raise DatasetLayoutError(
                    f"{path}:{n}: label {token!r} of {image_id!r} is neither a class of --classes "
                    f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) nor an id 0..{len(classes) - 1}"
                )
        if image_id in labels:
            raise DatasetLayoutError(f"{path}:{n}: image {image_id!r} is listed twice")
        labels[Path(image_id).stem] = sorted(ids)
    if not labels:
        raise DatasetLayoutError(f"{path}: lists no image")
    return labels


def _find(folder: Path, image_id: str, suffixes: Sequence[str], what: str) -> Path:
    for suffix in suffixes:
        if (folder / f"{image_id}{suffix}").is_file():
            return folder / f"{image_id}{suffix}"
    raise DatasetLayoutError(
        f"{what}: {folder} has no {image_id}{' / '.join(suffixes)}; add it or drop the id"
    )


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except OSError as err:
        raise DatasetLayoutError(f"{path}: cannot be decoded ({err}); replace the file") from err


def convert(
    images: Path,
    labels: Path,
    classes: Path,
    out: Path,
    masks: Path | None = None,
    saliency: Path | None = None,
    val: Path | None = None,
) -> dict[str, int]:
    """Check every input, then write the layout under ``out``; returns counts per split."""

    names = read_classes(classes)
    image_labels = read_labels(labels, names)
    val_ids = [line.split()[0] for line in val.read_text().splitlines() if line.strip()] if val else []
    everything = list(dict.fromkeys([*image_labels, *val_ids]))
    sources = {i: _find(images, i, IMAGE_SUFFIXES, "--images") for i in everything}
    sizes = {i: _size(p) for i, p in sources.items()}
    mask_of: dict[str, np.ndarray] = {}
    if masks is not None:
        for image_id in everything:
            if (masks / f"{image_id}.png").is_file():
                path = masks / f"{image_id}.png"
                mask_of[image_id] = check_mask(read_index_png(path), path, sizes[image_id], len(names))
    missing_val = [i for i in val_ids if i not in mask_of]
    if missing_val:
        raise DatasetLayoutError(
            f"--val: {missing_val[0]} has no mask in {masks}: validation images need masks (eval scores them)"
        )
    if saliency is not None:
        for image_id in image_labels:
            path = _find(saliency, image_id, (".png",), "--saliency")
            if _size(path) != sizes[image_id]:
                raise DatasetLayoutError(f"{path}: saliency map size differs from its image's; recompute it")
    voc = out / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_id, source in sources.items():
        target = voc / "JPEGImages" / f"{image_id}.jpg"
        if source.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(source, target)
        else:
            with Image.open(source) as img:
                img.convert("RGB").save(target, format="JPEG", quality=95)
    for image_id, mask in mask_of.items():
        save_mask(voc / "SegmentationClassAug" / f"{image_id}.png", mask)
    if saliency is not None:
        (voc / "saliency").mkdir(exist_ok=True)
        for image_id in image_labels:
            shutil.copyfile(saliency / f"{image_id}.png", voc / "saliency" / f"{image_id}.png")
    train = [i for i in image_labels if i in mask_of] or list(image_labels)
    splits = {"train_aug": list(image_labels), "train": train, "val": val_ids or train}
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    lines = [" ".join([i, *map(str, c)]) for i, c in image_labels.items()]
    (voc / "labels.txt").write_text("\n".join(lines) + "\n")
    return {split: len(ids) for split, ids in splits.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a dataset with image-level labels for data=folder.")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True, help="'<id> <label> ...' lines, or a CSV")
    parser.add_argument("--classes", type=Path, required=True, help="one class name per line")
    parser.add_argument("--out", type=Path, required=True, help="the data.root to write")
    parser.add_argument("--masks", type=Path, default=None)
    parser.add_argument("--saliency", type=Path, default=None)
    parser.add_argument("--val", type=Path, default=None, help="ids of validation images (with masks)")
    args = parser.parse_args(argv)
    try:
        counts = convert(
            args.images, args.labels, args.classes, args.out, args.masks, args.saliency, args.val
        )
    except DatasetLayoutError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
