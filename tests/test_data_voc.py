"""VOCDataset on real VOC files (masks, labels, layout) and every layout error on tiny made-up folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.palette import VOC_CLASSES, save_mask
from wsss.data.verify import main as verify_main
from wsss.data.verify import verify_split
from wsss.data.voc import (
    CorruptImageError,
    DatasetLayoutError,
    MaskSizeError,
    MaskValueError,
    MissingFolderError,
    MissingImageError,
    MissingLabelsError,
    MissingListError,
    MissingRootError,
    MissingSaliencyError,
    VOCDataset,
    label_from_mask,
    resolve_voc_root,
)

QUIRK = "2010_003321"  # SBD mask shows only a dog; the image-level label lists dog and person


def provenance_class_ids(shared: Path) -> dict[str, set[int]]:
    """id -> mask class ids, from the table in voc_sample/PROVENANCE.md."""
    rows = re.findall(
        r"^\| (\d{4}_\d{6}) \| [^|]+ \| ([\d,]+) \|",
        (shared / "voc_sample" / "PROVENANCE.md").read_text(),
        re.M,
    )
    return {image_id: {int(v) for v in ids.split(",")} for image_id, ids in rows}


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> tuple[Path, list[VOCDataset]]:
    root = shared_data / "voc_sample"
    return root, [VOCDataset(root, "train_aug"), VOCDataset(root, "val")]


def test_real_masks_decode_to_the_listed_class_ids(shared_data: Path, sample) -> None:
    listed = provenance_class_ids(shared_data)
    seen = 0
    for ds in sample[1]:
        assert ds.has_masks
        for i, image_id in enumerate(ds.ids):
            mask = ds.mask(i)
            assert mask.dtype == np.uint8 and mask.shape == ds.image(i).shape[:2]
            assert set(np.unique(mask).tolist()) == listed[image_id], image_id
            seen += 1
    assert seen == 46


def test_derived_labels_equal_the_published_image_labels_except_the_known_quirk(
    shared_data: Path, sample
) -> None:
    published = np.load(
        shared_data / "voc_sample" / "metadata" / "cls_labels_seam_full.npy", allow_pickle=True
    ).item()
    for ds in sample[1]:
        labels = ds.labels()
        assert labels.shape == (len(ds), 20) and labels.dtype == np.float32
        for i, image_id in enumerate(ds.ids):
            expected = np.asarray(published[image_id], dtype=np.float32)
            if image_id == QUIRK:
                dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
                assert np.nonzero(labels[i])[0].tolist() == [dog]
                assert np.nonzero(expected)[0].tolist() == [dog, person]
            else:
                np.testing.assert_array_equal(labels[i], expected, err_msg=image_id)
            np.testing.assert_array_equal(ds.label(i), labels[i])


def test_authors_label_lists_agree_with_derived_labels_and_override_masks(
    shared_data: Path, tmp_path: Path
) -> None:
    root = shared_data / "voc_sample"
    derived = VOCDataset(root, "train_aug")
    listed = VOCDataset(root, "train_aug", labels_file=root / "metadata" / "drs_cls_subset.txt")
    # The authors' list, like the masks, has only the dog for the quirk image.
    np.testing.assert_array_equal(listed.labels(), derived.labels())
    override = tmp_path / "labels.txt"
    override.write_text(f"{QUIRK} 11 14\n2007_000063 8\n")
    ds = VOCDataset(root, "train_aug", labels_file=override)
    assert np.nonzero(ds.label(ds.ids.index(QUIRK)))[0].tolist() == [11, 14]
    assert np.nonzero(ds.label(ds.ids.index("2007_000063")))[0].tolist() == [8]
    k = ds.ids.index("2007_000363")  # not in the file: from its mask (class id 3, bird)
    assert np.nonzero(ds.label(k))[0].tolist() == [VOC_CLASSES.index("bird")]


def test_root_may_be_the_parent_of_vocdevkit_or_the_voc2012_folder(shared_data: Path) -> None:
    voc = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    assert resolve_voc_root(shared_data / "voc_sample") == voc
    assert resolve_voc_root(voc) == voc
    assert VOCDataset(voc, "val").ids == VOCDataset(shared_data / "voc_sample", "val").ids


def test_saliency_is_read_as_grayscale_of_image_size(shared_data: Path) -> None:
    voc = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    ds = VOCDataset(voc, "val", saliency_dir=voc / "saliency_isnet_imgly", require_saliency=True)
    sal = ds.saliency(0)
    assert sal.dtype == np.uint8 and sal.shape == ds.image(0).shape[:2]
    with Image.open(voc / "saliency_isnet_imgly" / f"{ds.ids[0]}.png") as img:
        np.testing.assert_array_equal(sal, np.asarray(img))


def test_label_from_mask_ignores_background_and_void() -> None:
    mask = np.array([[0, 255, 3], [20, 3, 0]], np.uint8)
    expected = np.zeros(20, np.float32)
    expected[[2, 19]] = 1
    np.testing.assert_array_equal(label_from_mask(mask), expected)
    assert label_from_mask(np.array([[0, 255]], np.uint8)).sum() == 0


# ---- tiny made-up layouts --------------------------------------------------------------------------


def make_voc(base: Path, ids: list[str], size: tuple[int, int] = (6, 8), aug: bool = True) -> Path:
    """A VOC2012 folder with solid-colour images and masks (class k+1 in the left half of image k)."""
    voc = base / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for k, image_id in enumerate(ids):
        Image.fromarray(np.full((*size, 3), 40 * k % 255, np.uint8)).save(
            voc / "JPEGImages" / f"{image_id}.jpg"
        )
        mask = np.zeros(size, np.uint8)
        mask[:, : size[1] // 2] = k % 20 + 1
        save_mask(voc / ("SegmentationClassAug" if aug else "SegmentationClass") / f"{image_id}.png", mask)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def test_masks_prefer_segmentationclassaug_and_fall_back_to_segmentationclass(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a", "b"])
    (voc / "SegmentationClass").mkdir()
    save_mask(voc / "SegmentationClass" / "a.png", np.full((6, 8), 7, np.uint8))  # loses to Aug
    shutil.move(voc / "SegmentationClassAug" / "b.png", voc / "SegmentationClass" / "b.png")
    ds = VOCDataset(tmp_path, "train")
    assert ds.mask_path(0) == voc / "SegmentationClassAug" / "a.png"
    assert ds.mask_path(1) == voc / "SegmentationClass" / "b.png"
    assert np.nonzero(ds.label(0))[0].tolist() == [0] and np.nonzero(ds.label(1))[0].tolist() == [1]


def test_missing_root_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingRootError, match=r"does not exist.*data\.root"):
        VOCDataset(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFolderError, match=r"VOCdevkit/VOC2012/JPEGImages"):
        VOCDataset(tmp_path / "empty", "train")


def test_missing_list_names_the_file_and_the_sbd_tool(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a"])
    with pytest.raises(MissingListError, match=r"train_aug\.txt not found.*python -m wsss\.data\.sbd"):
        VOCDataset(tmp_path, "train_aug")


def test_list_naming_an_absent_image(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a", "b"])
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(MissingImageError, match=r"1 of 2 images .* not in .*JPEGImages: b\b"):
        VOCDataset(tmp_path, "train")


def test_mask_of_the_wrong_size(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a"])
    save_mask(voc / "SegmentationClassAug" / "a.png", np.zeros((5, 8), np.uint8))
    ds = VOCDataset(tmp_path, "train")
    with pytest.raises(MaskSizeError, match=r"a\.png: mask is 8x5 .* image is 8x6"):
        ds.mask(0)
    with pytest.raises(MaskSizeError):
        verify_split(tmp_path, "train")


def test_mask_values_outside_the_classes(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a"])
    bad = np.zeros((6, 8), np.uint8)
    bad[0, 0], bad[1, 1], bad[2, 2] = 30, 255, 21
    save_mask(voc / "SegmentationClassAug" / "a.png", bad)
    with pytest.raises(MaskValueError, match=r"a\.png: mask holds values \[21, 30\] outside 0\.\.20 and 255"):
        VOCDataset(tmp_path, "train").mask(0)


def test_missing_saliency(tmp_path: Path) -> None:
    make_voc(tmp_path, ["a", "b"])
    sal = tmp_path / "sal"
    sal.mkdir()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(sal / "a.png")
    with pytest.raises(MissingSaliencyError, match=r"1 images have no saliency map in .*sal: b"):
        VOCDataset(tmp_path, "train", saliency_dir=sal, require_saliency=True)
    with pytest.raises(MissingSaliencyError, match=r"data\.saliency_dir is null"):
        VOCDataset(tmp_path, "train", require_saliency=True)
    ds = VOCDataset(tmp_path, "train", saliency_dir=sal)  # not required: fails only when read
    assert ds.saliency(0).shape == (6, 8)
    with pytest.raises(MissingSaliencyError, match=r"b\.png: saliency map of image 'b' is missing"):
        ds.saliency(1)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a", "b"])
    (voc / "JPEGImages" / "b.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = VOCDataset(tmp_path, "train")
    assert ds.image(0).shape == (6, 8, 3)
    with pytest.raises(CorruptImageError, match=r"b\.jpg: cannot be decoded as an image"):
        ds.image(1)
    assert verify_main(["--root", str(tmp_path), "--split", "train"]) == 1


def test_labels_need_masks_or_a_labels_file(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, ["a", "b"])
    (voc / "SegmentationClassAug" / "b.png").unlink()
    ds = VOCDataset(tmp_path, "train")
    assert not ds.has_masks and ds.mask(1) is None
    with pytest.raises(MissingLabelsError, match=r"'b' .* no mask .* data\.labels_file"):
        ds.label(1)
    with pytest.raises(MissingImageError, match=r"needs masks but 1 images have none"):
        VOCDataset(tmp_path, "train", require_masks=True)
    labels = tmp_path / "labels.txt"
    labels.write_text("b 4 19\n")
    np.testing.assert_array_equal(
        np.nonzero(VOCDataset(tmp_path, "train", labels_file=labels).labels())[1], [0, 4, 19]
    )


def test_labels_are_cached_outside_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    voc = make_voc(tmp_path / "data", ["a", "b", "c"])
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    first = VOCDataset(voc, "train", cache_dir=tmp_path / "cache").labels()
    assert len(list((tmp_path / "cache").glob("labels-train-*.npz"))) == 1
    import wsss.data.voc as voc_module

    def no_masks(path: Path) -> np.ndarray:
        raise AssertionError("labels were derived again instead of read from the cache")

    monkeypatch.setattr(voc_module, "read_index_png", no_masks)
    np.testing.assert_array_equal(VOCDataset(voc, "train", cache_dir=tmp_path / "cache").labels(), first)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before


def test_every_layout_error_is_a_value_error() -> None:
    for cls in (MissingRootError, MissingFolderError, MissingImageError, MaskSizeError, CorruptImageError):
        assert issubclass(cls, DatasetLayoutError) and issubclass(cls, ValueError)


@pytest.mark.slow
def test_all_12031_derived_labels_equal_the_authors_lists_and_spec_counts(shared_data: Path) -> None:
    """Labels from every SegmentationClassAug mask equal DRS's own list files (SEAM's XML-based labels
    differ on 818 images, 2010_003321 among them); the train_aug histogram matches docs/protocol.md."""
    from concurrent.futures import ThreadPoolExecutor

    from wsss.data.voc import read_index_png, read_labels_file

    meta = shared_data / "voc_sample" / "metadata"
    listed = {
        **read_labels_file(meta / "drs_train_aug_cls.txt"),
        **read_labels_file(meta / "drs_val_cls.txt"),
    }
    paths = sorted((shared_data / "voc_masks_all" / "SegmentationClassAug").glob("*.png"))
    assert len(paths) == len(listed) == 12031
    with ThreadPoolExecutor(4) as pool:
        derived = list(pool.map(lambda p: label_from_mask(read_index_png(p)), paths))
    assert [
        p.stem for p, d in zip(paths, derived, strict=True) if not np.array_equal(d, listed[p.stem])
    ] == []
    train_aug = set(read_labels_file(meta / "drs_train_aug_cls.txt"))
    counts = np.array(
        [d.sum() for p, d in zip(paths, derived, strict=True) if p.stem in train_aug], dtype=int
    )
    assert {k: int((counts == k).sum()) for k in range(1, 6)} == {1: 6746, 2: 2894, 3: 774, 4: 141, 5: 27}


def test_training_labels_are_read_from_checked_masks(tmp_path: Path) -> None:
    """Finding 4: stage=cls derived labels from a mask of half the image size or with values outside 0..20/255."""
    voc = make_voc(tmp_path, ["a", "b"])
    save_mask(voc / "SegmentationClassAug" / "b.png", np.zeros((3, 4), np.uint8))
    with pytest.raises(MaskSizeError, match=r"b\.png: mask is 4x3 .* image is 8x6"):
        VOCDataset(tmp_path, "train").labels(threads=1)
    bad = np.zeros((6, 8), np.uint8)
    bad[0, 0] = 50
    save_mask(voc / "SegmentationClassAug" / "b.png", bad)
    with pytest.raises(MaskValueError, match=r"b\.png: mask holds values \[50\]"):
        VOCDataset(tmp_path, "train").label(1)
