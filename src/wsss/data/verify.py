"""Check a VOC-layout dataset file by file before a long run.

    python -m wsss.data.verify --root DATA_ROOT --split train_aug [--split val] [--saliency-dir DIR]

Opening ``VOCDataset`` already checks the folders, the list and that every listed image exists;
this also decodes every image, mask and saliency map, so a corrupt file, a mask of the wrong size or
with values outside 0..20 and 255, or a missing saliency map is found now, not hours into training.
The first problem raises its ``DatasetLayoutError`` (the message names the file and the fix).

``train.py`` runs the same check before the first stage that reads a dataset (``verify_for_stages``):
the splits those stages read, once. A passed check leaves a marker keyed by the names, sizes and
modification times of the split's files (under ``data.cache_dir``, else ``<paths.runs>/.verified``;
never inside the data folder), so later runs skip it until a file changes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from wsss.data.content import DigestCache, cache_path, marker_dir, split_fingerprint
from wsss.data.toy import ensure_toy
from wsss.data.voc import CLASSES_FILE, DatasetLayoutError, VOCDataset, read_class_names, resolve_voc_root
from wsss.errors import ConfigError, MissingSaliencyError
from wsss.pipeline.artifacts import write_json
from wsss.pipeline.registry import stage, uses_saliency

log = logging.getLogger(__name__)


def verify_split(
    root: str | Path,
    split: str,
    saliency_dir: str | Path | None = None,
    require_masks: bool = False,
    threads: int = 4,
    labels_file: str | Path | None = None,
    require_labels: bool = False,
) -> dict[str, int]:
    """Decode every file of ``split``; returns counts of images, masks and saliency maps checked.

    ``require_labels``: an image without a mask needs a ``labels_file`` entry (its image-level label).
    Images are checked in ``threads`` threads; the first problem (in list order) is raised.
    """
    ds = VOCDataset(
        root,
        split,
        saliency_dir=saliency_dir,
        require_masks=require_masks,
        require_saliency=saliency_dir is not None,
        labels_file=labels_file,
    )

    def check(i: int) -> tuple[int, int]:
        ds.image(i)
        has_mask = ds.mask(i) is not None  # size and values are checked on read
        if require_labels and not has_mask:
            ds.label(i)  # an image without a mask needs a labels-file entry
        if saliency_dir is not None:
            ds.saliency(i)  # decodes, and must have the image's size
        return int(has_mask), int(saliency_dir is not None)

    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        done = list(pool.map(check, range(len(ds))))  # map re-raises the first failure in order
    return {
        "images": len(done),
        "masks": sum(m for m, _ in done),
        "saliency": sum(s for _, s in done),
    }


@dataclass(frozen=True)
class SplitCheck:
    """One split a stage reads, and what it needs of it."""

    split: str
    require_masks: bool = False
    saliency: bool = False
    labels: bool = False


def splits_read(cfg: Any, stage_names: Iterable[str]) -> list[SplitCheck]:
    """The splits of ``data`` that the stages ``stage_names`` read (each stage's ``splits``), merged."""
    saliency = uses_saliency(cfg)
    wanted = [
        SplitCheck(
            str(OmegaConf.select(cfg, read.split)), read.masks, read.saliency and saliency, read.labels
        )
        for name in stage_names
        for read in stage(name).splits
    ]
    merged: dict[str, SplitCheck] = {}
    for check in wanted:
        old = merged.get(check.split, SplitCheck(check.split))
        merged[check.split] = SplitCheck(
            check.split,
            old.require_masks or check.require_masks,
            old.saliency or check.saliency,
            old.labels or check.labels,
        )
    return list(merged.values())


def check_class_count(cfg: Any) -> None:
    """``data.num_classes`` must be the number of classes the dataset names (``classes.txt``; VOC: 20)."""
    voc = resolve_voc_root(str(cfg.data.root))
    names = read_class_names(voc)
    if len(names) != int(cfg.data.num_classes):
        source = voc / CLASSES_FILE if (voc / CLASSES_FILE).is_file() else f"{voc} (VOC: no {CLASSES_FILE})"
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes} but {source} names {len(names)} classes; set "
            f"data.num_classes={len(names)} data.seg_classes={len(names) + 1} (data=folder and data=coco read them)"
        )


def verify_for_stages(cfg: Any, stage_names: Iterable[str], threads: int = 4) -> list[str]:
    """Verify (``verify_split``) every split the stages read, unless a marker says it passed with exactly
    these files; returns the splits checked now. The first problem raises its ``DatasetLayoutError``."""

    stage_names = list(stage_names)
    if (
        "pseudo" in stage_names
        and str(cfg.pseudo.background) == "saliency"
        and not cfg.data.get("saliency_dir")
    ):
        raise MissingSaliencyError(
            "stage pseudo with pseudo.background=saliency needs saliency maps but data.saliency_dir is not set: "
            "point data.saliency_dir=<folder> at one grayscale PNG per image (same name as the JPEG), or make "
            "labels without saliency with pseudo.background=fallback"
        )
    checks = splits_read(cfg, stage_names)
    if not checks:
        return []
    ensure_toy(cfg.data)  # generated data exists before it is checked
    check_class_count(cfg)
    root, saliency_dir = str(cfg.data.root), cfg.data.get("saliency_dir")
    labels_file = cfg.data.get("labels_file")
    cache = DigestCache(cache_path(cfg))
    checked = []
    for check in checks:
        content = split_fingerprint(
            root, check.split, cache, saliency_dir if check.saliency else None, labels_file
        )
        key = hashlib.sha1(f"{check!r}:{content}".encode()).hexdigest()[:20]
        marker = marker_dir(cfg) / f"{check.split}-{key}.json"
        if marker.is_file():
            continue
        log.info(
            "checking every file of split %s of %s (once; `python -m wsss.data.verify` does it by hand)",
            check.split,
            root,
        )
        counts = verify_split(
            root,
            check.split,
            saliency_dir if check.saliency else None,
            check.require_masks,
            threads,
            labels_file,
            check.labels,
        )
        write_json(marker, {"root": root, "split": check.split, **counts})
        checked.append(check.split)
    cache.save()
    return checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="folder holding VOCdevkit/VOC2012 (or that folder)")
    parser.add_argument("--split", action="append", help="split(s) to check (default: train, val)")
    parser.add_argument("--saliency-dir", default=None, help="also check one saliency PNG per image")
    parser.add_argument("--require-masks", action="store_true", help="every image must have a mask")
    parser.add_argument("--labels-file", default=None, help="'<id> <0-based class ids>' lines")
    parser.add_argument(
        "--require-labels", action="store_true", help="images without a mask need a --labels-file entry"
    )
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    for split in args.split or ["train", "val"]:
        try:
            counts = verify_split(
                args.root,
                split,
                args.saliency_dir,
                args.require_masks,
                args.threads,
                args.labels_file,
                args.require_labels,
            )
        except DatasetLayoutError as err:
            print(f"{split}: FAILED\n  {type(err).__name__}: {err}")
            return 1
        print(
            f"{split}: ok ({counts['images']} images, {counts['masks']} masks, {counts['saliency']} saliency maps)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
