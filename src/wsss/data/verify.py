"""Check a VOC-layout dataset file by file before a long run.

    python -m wsss.data.verify --root DATA_ROOT --split train_aug [--split val] [--saliency-dir DIR]

Opening ``VOCDataset`` already checks the folders, the list and that every listed image exists;
this also decodes every image, mask and saliency map, so a corrupt file, a mask of the wrong size or
with values outside 0..20 and 255, or a missing saliency map is found now, not hours into training.
The first problem raises its ``DatasetLayoutError`` (the message names the file and the fix).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.data.voc import DatasetLayoutError, VOCDataset


def verify_split(
    root: str | Path,
    split: str,
    saliency_dir: str | Path | None = None,
    require_masks: bool = False,
) -> dict[str, int]:
    """Decode every file of ``split``; returns counts of images, masks and saliency maps checked."""
    ds = VOCDataset(
        root,
        split,
        saliency_dir=saliency_dir,
        require_masks=require_masks,
        require_saliency=saliency_dir is not None,
    )
    counts = {"images": 0, "masks": 0, "saliency": 0}
    for i in range(len(ds)):
        ds.image(i)
        counts["images"] += 1
        if ds.mask(i) is not None:  # size and values are checked on read
            counts["masks"] += 1
        if saliency_dir is not None:
            ds.saliency(i)
            counts["saliency"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="folder holding VOCdevkit/VOC2012 (or that folder)")
    parser.add_argument("--split", action="append", help="split(s) to check (default: train, val)")
    parser.add_argument("--saliency-dir", default=None, help="also check one saliency PNG per image")
    parser.add_argument("--require-masks", action="store_true", help="every image must have a mask")
    args = parser.parse_args(argv)
    for split in args.split or ["train", "val"]:
        try:
            counts = verify_split(args.root, split, args.saliency_dir, args.require_masks)
        except DatasetLayoutError as err:
            print(f"{split}: FAILED\n  {type(err).__name__}: {err}")
            return 1
        print(
            f"{split}: ok ({counts['images']} images, {counts['masks']} masks, {counts['saliency']} saliency maps)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
