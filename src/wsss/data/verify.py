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

from wsss.data.voc import LIST_DIR, MASK_DIRS, DatasetLayoutError, VOCDataset
from wsss.errors import ConfigError

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
    """The splits of ``data`` that the stages ``stage_names`` read (see each stage's module doc), merged."""
    data = cfg.data
    saliency = bool(data.get("saliency_dir")) and str(cfg.pseudo.background) == "saliency"
    wanted: list[SplitCheck] = []
    for name in stage_names:
        if name == "cls":
            wanted += [
                SplitCheck(str(data.train_split), labels=True),
                SplitCheck(str(data.val_split), labels=True),
            ]
        elif name.startswith("maps_"):
            wanted += [SplitCheck(str(cfg.maps.split), labels=True), SplitCheck(str(data.eval_split))]
        elif name == "refine":
            wanted += [SplitCheck(str(data.maps_split), labels=True)]
        elif name == "pseudo":
            wanted += [SplitCheck(str(data.maps_split), saliency=saliency), SplitCheck(str(data.eval_split))]
        elif name == "seg":
            wanted += [SplitCheck(str(data.maps_split)), SplitCheck(str(data.val_split), require_masks=True)]
        elif name == "eval":
            wanted += [SplitCheck(str(cfg.eval.split), require_masks=True)]
        elif name == "predict":
            wanted += [SplitCheck(str(cfg.predict.split))]
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


def _file_key(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path.name}:-"
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def fingerprint(
    root: str | Path, check: SplitCheck, saliency_dir: str | Path | None, labels_file: Any
) -> str:
    """A hash of what the check of ``check.split`` depends on: the list file and the name, size and
    modification time of every image, mask (and saliency map) it names."""
    voc = VOCDataset(root, check.split)  # resolves the layout, reads the list
    parts = [str(voc.root.resolve()), repr(check), _file_key(voc.root / LIST_DIR / f"{check.split}.txt")]
    if labels_file:
        parts.append(_file_key(Path(labels_file)))
    folders = [voc.root / "JPEGImages", *(voc.root / d for d in MASK_DIRS)]
    if check.saliency and saliency_dir:
        parts.append(str(Path(saliency_dir).resolve()))
        folders.append(Path(saliency_dir))
    for folder in folders:
        suffix = ".jpg" if folder.name == "JPEGImages" else ".png"
        parts += [f"{folder.name}/{_file_key(folder / (i + suffix))}" for i in voc.ids]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def marker_dir(cfg: Any) -> Path:
    """Where passed checks are remembered: ``data.cache_dir`` if set, else ``<paths.runs>/.verified``."""
    cache = cfg.data.get("cache_dir")
    return Path(str(cache)) / "verified" if cache else Path(str(cfg.paths.runs)) / ".verified"


def check_class_count(cfg: Any) -> None:
    """``data.num_classes`` must be the number of classes the dataset names (``classes.txt``; VOC: 20)."""
    from wsss.data.voc import CLASSES_FILE, read_class_names, resolve_voc_root

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
    from wsss.artifacts import write_json
    from wsss.data.toy import ensure_toy

    stage_names = list(stage_names)
    if (
        "pseudo" in stage_names
        and str(cfg.pseudo.background) == "saliency"
        and not cfg.data.get("saliency_dir")
    ):
        from wsss.errors import MissingSaliencyError

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
    checked = []
    for check in checks:
        marker = marker_dir(cfg) / f"{check.split}-{fingerprint(root, check, saliency_dir, labels_file)}.json"
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
