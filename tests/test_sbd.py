"""SBD -> SegmentationClassAug + train_aug.txt on .mat files written here with scipy.io."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from wsss.data.palette import read_index_png, save_mask
from wsss.data.sbd import load_sbd_mask, main, train_aug_ids
from wsss.data.voc import DatasetLayoutError, MissingFolderError, VOCDataset

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000010", "2007_000011"]
SBD_TRAIN = ["2007_000002", "2007_000010", "2008_000001", "2008_000002"]  # overlaps VOC train and VOC val
SBD_VAL = ["2008_000003", "2007_000011", "2008_000001"]  # overlaps VOC val and SBD train
EXPECTED_TRAIN_AUG = [
    "2007_000001",
    "2007_000002",
    "2007_000003",
    "2008_000001",
    "2008_000002",
    "2008_000003",
]


def sbd_mask(image_id: str) -> np.ndarray:
    """A distinct class map per id (no 255, as SBD masks have none)."""
    k = int(image_id[-1]) + 10 * int(image_id[3])
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:6] = k % 20 + 1
    mask[0, 0] = (k + 3) % 20 + 1
    return mask


def voc_mask(image_id: str) -> np.ndarray:
    mask = sbd_mask(image_id).copy()
    mask[4, :] = 255  # official masks carry void boundaries
    return mask


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    sbd = tmp_path / "benchmark_RELEASE"
    (sbd / "dataset" / "cls").mkdir(parents=True)
    (sbd / "dataset" / "img").mkdir()
    for image_id in sorted(set(SBD_TRAIN) | set(SBD_VAL)):
        gtcls = {"Segmentation": sbd_mask(image_id), "Boundaries": np.zeros((1, 1)), "CategoriesPresent": [1]}
        scipy.io.savemat(sbd / "dataset" / "cls" / f"{image_id}.mat", {"GTcls": gtcls})
        Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(sbd / "dataset" / "img" / f"{image_id}.jpg")
    (sbd / "dataset" / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "dataset" / "val.txt").write_text("\n".join(SBD_VAL) + "\n")

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for image_id in VOC_TRAIN + VOC_VAL:
        save_mask(voc / "SegmentationClass" / f"{image_id}.png", voc_mask(image_id))
        Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    return sbd, voc


def test_set_arithmetic_by_hand() -> None:
    assert train_aug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL) == EXPECTED_TRAIN_AUG


def test_mat_round_trip(tmp_path: Path) -> None:
    mask = sbd_mask("2008_000003")
    scipy.io.savemat(tmp_path / "x.mat", {"GTcls": {"Segmentation": mask}})
    np.testing.assert_array_equal(load_sbd_mask(tmp_path / "x.mat"), mask)
    scipy.io.savemat(tmp_path / "y.mat", {"GTinst": {"Segmentation": mask}})
    with pytest.raises(DatasetLayoutError, match=r"y\.mat: not an SBD class \.mat with GTcls\.Segmentation"):
        load_sbd_mask(tmp_path / "y.mat")


def test_conversion_writes_masks_list_and_images(folders, capsys: pytest.CaptureFixture[str]) -> None:
    sbd, voc = folders
    assert main(["--sbd", str(sbd), "--voc", str(voc), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "VOC train 3, VOC val 2, SBD train 4, SBD val 3" in out
    assert "5 from VOC, 3 from SBD, 0 kept; 3 images copied" in out
    assert "train_aug: 6 ids (expected 10,582: differs from the full datasets)" in out

    listed = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert listed == EXPECTED_TRAIN_AUG
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(EXPECTED_TRAIN_AUG + VOC_VAL)
    for image_id in sorted(set(EXPECTED_TRAIN_AUG + VOC_VAL)):
        with Image.open(aug / f"{image_id}.png") as img:
            assert img.mode == "P"
        expected = voc_mask(image_id) if image_id in VOC_TRAIN + VOC_VAL else sbd_mask(image_id)
        np.testing.assert_array_equal(read_index_png(aug / f"{image_id}.png"), expected, err_msg=image_id)

    ds = VOCDataset(voc, "train_aug", require_masks=True)  # the result is a usable split
    assert ds.ids == EXPECTED_TRAIN_AUG and ds.mask_path(0).parent.name == "SegmentationClassAug"


def test_second_run_keeps_existing_masks(folders, capsys: pytest.CaptureFixture[str]) -> None:
    sbd, voc = folders
    main(["--sbd", str(sbd), "--voc", str(voc)])
    capsys.readouterr()
    main(["--sbd", str(sbd), "--voc", str(voc)])
    assert "0 from VOC, 0 from SBD, 8 kept; 0 images copied" in capsys.readouterr().out


def test_missing_inputs_are_named(folders, tmp_path: Path) -> None:
    sbd, voc = folders
    with pytest.raises(MissingFolderError, match=r"no dataset/cls folder.*benchmark_RELEASE"):
        main(["--sbd", str(tmp_path), "--voc", str(voc)])
    (sbd / "dataset" / "cls" / "2008_000002.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 ids have neither .* \(first: 2008_000002\)"):
        main(["--sbd", str(sbd), "--voc", str(voc)])
