"""Build VOC2012 ``train_aug`` from the SBD release (Hariharan et al., 2011).

    python -m wsss.data.sbd --sbd <benchmark_RELEASE> --voc <VOCdevkit/VOC2012>

Reads ``<sbd>/dataset/{cls/<id>.mat, train.txt, val.txt}`` (each .mat holds ``GTcls.Segmentation``,
a uint8 H x W class map) and writes into the VOC folder:

- ``SegmentationClassAug/<id>.png`` (VOC palette) for every id of VOC train + val and SBD train + val:
  the official ``SegmentationClass`` mask where VOC has one (it carries the 255 boundaries), else the
  SBD mask;
- ``ImageSets/Segmentation/train_aug.txt`` = (VOC train + SBD train + SBD val) minus VOC val, sorted;
  10,582 ids for the full datasets;
- ``JPEGImages/<id>.jpg`` copied from ``<sbd>/dataset/img`` for ids the VOC folder lacks.

Existing masks are kept unless ``--overwrite``. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsss.data.palette import read_index_png, save_mask
from wsss.data.voc import LIST_DIR, check_mask
from wsss.errors import DatasetLayoutError, MissingFolderError, MissingListError
from wsss.pipeline.artifacts import atomic_path, write_text

EXPECTED_TRAIN_AUG = 10_582


def read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingListError(f"{path} not found; expected an id list (one image id per line)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_sbd_mask(path: str | Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as uint8 (H, W)."""
    from scipy.io import loadmat

    try:
        gt = loadmat(str(path), struct_as_record=False)["GTcls"]
        seg = (gt.flat[0] if isinstance(gt, np.ndarray) else gt).Segmentation
    except (OSError, ValueError, KeyError, AttributeError, TypeError, IndexError) as err:
        raise DatasetLayoutError(
            f"{path}: not an SBD class .mat with GTcls.Segmentation ({err}); re-extract benchmark.tgz"
        ) from err
    return check_mask(np.asarray(seg, dtype=np.uint8), Path(path), None)


def train_aug_ids(
    voc_train: list[str], voc_val: list[str], sbd_train: list[str], sbd_val: list[str]
) -> list[str]:
    """(VOC train + SBD train + SBD val) minus VOC val, sorted."""
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _convert_one(image_id: str, voc: Path, sbd: Path, out_dir: Path, overwrite: bool) -> str:
    """Write one SegmentationClassAug mask; returns its source: voc, sbd, kept or missing."""
    target = out_dir / f"{image_id}.png"
    if target.is_file() and not overwrite:
        return "kept"
    official = voc / "SegmentationClass" / f"{image_id}.png"
    if official.is_file():
        save_mask(target, check_mask(read_index_png(official), official, None))
        return "voc"
    mat = sbd / "dataset" / "cls" / f"{image_id}.mat"
    if mat.is_file():
        save_mask(target, load_sbd_mask(mat))
        return "sbd"
    return "missing"


def _copy_image(image_id: str, voc: Path, sbd: Path) -> bool:
    target = voc / "JPEGImages" / f"{image_id}.jpg"
    if target.is_file():
        return False
    source = sbd / "dataset" / "img" / f"{image_id}.jpg"
    if not source.is_file():
        return False
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return True


def convert(sbd: str | Path, voc: str | Path, overwrite: bool = False, workers: int = 4) -> dict[str, int]:
    """Write SegmentationClassAug and train_aug.txt into ``voc``; returns the counts (see module doc)."""
    sbd, voc = Path(sbd), Path(voc)
    if not (sbd / "dataset" / "cls").is_dir():
        raise MissingFolderError(
            f"--sbd {sbd}: no dataset/cls folder; pass the benchmark_RELEASE folder extracted from "
            "SBD's benchmark.tgz"
        )
    if not (voc / LIST_DIR).is_dir():
        raise MissingFolderError(
            f"--voc {voc}: no {LIST_DIR} folder; pass the VOCdevkit/VOC2012 folder of the VOC2012 trainval archive"
        )
    voc_train, voc_val = read_ids(voc / LIST_DIR / "train.txt"), read_ids(voc / LIST_DIR / "val.txt")
    sbd_train, sbd_val = read_ids(sbd / "dataset" / "train.txt"), read_ids(sbd / "dataset" / "val.txt")
    train_aug = train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
    everything = sorted(set(train_aug) | set(voc_val))

    out_dir = voc / "SegmentationClassAug"
    out_dir.mkdir(exist_ok=True)
    (voc / "JPEGImages").mkdir(exist_ok=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        sources = list(pool.map(lambda i: _convert_one(i, voc, sbd, out_dir, overwrite), everything))
        copied = sum(pool.map(lambda i: _copy_image(i, voc, sbd), everything))
    missing = [i for i, s in zip(everything, sources, strict=True) if s == "missing"]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} ids have neither a VOC SegmentationClass mask nor an SBD cls .mat "
            f"(first: {', '.join(missing[:5])}); check that --sbd and --voc point at complete extractions"
        )
    write_text(voc / LIST_DIR / "train_aug.txt", "".join(f"{i}\n" for i in train_aug))
    return {
        "voc_train": len(voc_train),
        "voc_val": len(voc_val),
        "sbd_train": len(sbd_train),
        "sbd_val": len(sbd_val),
        "train_aug": len(train_aug),
        "masks_from_voc": sources.count("voc"),
        "masks_from_sbd": sources.count("sbd"),
        "masks_kept": sources.count("kept"),
        "images_copied": copied,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sbd", required=True, type=Path, help="the benchmark_RELEASE folder of SBD")
    parser.add_argument("--voc", required=True, type=Path, help="the VOCdevkit/VOC2012 folder")
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    parser.add_argument("--workers", type=int, default=4, help="threads converting masks")
    args = parser.parse_args(argv)
    counts = convert(args.sbd, args.voc, args.overwrite, args.workers)
    print(
        f"VOC train {counts['voc_train']}, VOC val {counts['voc_val']}, SBD train {counts['sbd_train']}, "
        f"SBD val {counts['sbd_val']}"
    )
    print(
        f"SegmentationClassAug: {counts['masks_from_voc']} from VOC, {counts['masks_from_sbd']} from SBD, "
        f"{counts['masks_kept']} kept; {counts['images_copied']} images copied from SBD"
    )
    status = "as expected" if counts["train_aug"] == EXPECTED_TRAIN_AUG else "differs from the full datasets"
    print(f"train_aug: {counts['train_aug']} ids (expected {EXPECTED_TRAIN_AUG:,}: {status})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
