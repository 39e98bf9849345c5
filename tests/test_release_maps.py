"""protocol=release: classifier maps, refined maps, pseudo labels and refinement targets equal the release's.

Each test runs wsss's own path (the composed release config, the infer / refine DataModule, MapPredictor,
the maps files, the pseudo-label worker) on real VOC images and a random-weight tiny network, and compares
with ``release_maps_reference`` (the release's formulas, written from docs/protocol.md).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from release_maps_reference import (
    release_cls_maps,
    release_input,
    release_pseudo_label,
    release_refine_target,
    release_refined_maps,
    release_store,
)

from conftest import compose_config, make_classifier
from wsss.data.datamodule import WSSSDataModule
from wsss.data.maps_io import dense_maps, load_maps
from wsss.data.palette import read_index_png
from wsss.data.transforms import build_transforms
from wsss.data.voc import VOCDataset, read_saliency
from wsss.method.localization import MapMaths
from wsss.pipeline.artifacts import save_npz
from wsss.stages.maps import infer_dataset
from wsss.stages.maps_writer import MapPredictor, write_maps
from wsss.stages.pseudo_rules import LabelJob, PseudoRule, label_image, release_label, set_job
from wsss.tasks.refinement import RefinerTask

SPLIT = "train"
PICKED = (0, 1, 2, 3, 10)  # real VOC train images of several sizes; #10 has three classes (torch resizes
# 3-channel stacks on another code path, which once made its maps differ from the release's 20-class ones)


@pytest.fixture(scope="module")
def voc_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOC folder with ``PICKED`` of the sample's train images (images, masks, saliency, train list)."""
    import shutil

    src = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    root = tmp_path_factory.mktemp("voc")
    dst = root / "VOCdevkit" / "VOC2012"
    ids = (src / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    ids = [ids[i] for i in PICKED]
    for folder, suffix in (
        ("JPEGImages", ".jpg"),
        ("SegmentationClassAug", ".png"),
        ("saliency_isnet_imgly", ".png"),
    ):
        (dst / folder).mkdir(parents=True)
        for image_id in ids:
            shutil.copy(src / folder / f"{image_id}{suffix}", dst / folder / f"{image_id}{suffix}")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "train_aug", "val"):
        (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def cfg(voc_root: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("release_maps") / "runs"
    overrides = [
        "protocol=release",
        "data=voc",
        f"data.root={voc_root}",
        "backbone=tiny",
        "data.num_workers=0",
    ]
    return compose_config(overrides, runs=runs)


@pytest.fixture(scope="module")
def voc(voc_root: Path) -> VOCDataset:
    return VOCDataset(str(voc_root), SPLIT)


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )


def _predictor(cfg, net: torch.nn.Module, source: str) -> MapPredictor:
    recipe = cfg.maps[source]
    return MapPredictor(net, list(cfg.maps.scales), False, MapMaths.from_config(recipe), str(recipe.size))


def _write(cfg, net, source: str, out: Path, batch_size: int | None = None):
    dataset = infer_dataset(cfg, SPLIT, int(cfg.maps.infer_size))
    recipe = cfg.maps[source]
    predictor = _predictor(cfg, net, source)
    write_maps(
        _trainer(),
        predictor,
        dataset,
        out,
        dtype=str(recipe.dtype),
        quantize=str(recipe.quantize),
        batch_size=batch_size or int(cfg.maps.batch_size),
    )
    return dataset, predictor


def test_the_release_config_is_the_release_s_recipe(cfg) -> None:
    assert (cfg.maps.infer_size, [float(s) for s in cfg.maps.scales]) == (320, [0.8, 1.0, 1.2])
    assert dict(cfg.maps.cls) == {
        "relu": "before",
        "normalize": True,
        "align_corners": True,
        "size": "input",
        "dtype": "uint8",
        "quantize": "truncate",
    }
    assert (cfg.maps.refine.size, cfg.maps.refine.dtype, cfg.maps.refine.normalize) == (
        "original",
        "float32",
        False,
    )
    assert (cfg.refine.squash_size, cfg.refine.crop_size, cfg.refine.top_class_only) == (320, 320, True)


def test_the_infer_input_is_the_release_s_to_the_bit(cfg, voc: VOCDataset) -> None:
    dataset = infer_dataset(cfg, SPLIT, int(cfg.maps.infer_size))
    for i in range(3):
        assert torch.equal(dataset[i]["image"], release_input(voc.image(i))[0])


def test_squash_is_pil_bilinear_not_cv2(voc: VOCDataset) -> None:
    """cv2's linear resize does not antialias: shrinking a VOC image to 320 moves pixels by many grey levels."""
    import cv2

    image = voc.image(0)
    squashed = build_transforms(
        "refine", 320, True, (0.0,) * 3, (1 / 255,) * 3, squash_size=320, color_jitter=None
    )
    pil = np.asarray(Image.fromarray(image).resize((320, 320), Image.BILINEAR)).astype(np.float32)
    out = squashed(image=image)["image"]
    assert np.abs(out - pil).max() < 1e-3 or np.abs(out - pil[:, ::-1]).max() < 1e-3  # maybe flipped
    by_cv2 = cv2.resize(image, (320, 320), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(by_cv2 - pil).max() > 10


def test_classifier_maps_and_their_files_equal_the_release(cfg, voc: VOCDataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = make_classifier("tiny").eval()
    # batch 1, as the release runs: batched convolutions round differently (then ~0.005% of the stored
    # values move by one level; the float maps still agree to 1e-6)
    dataset, predictor = _write(cfg, net, "cls", tmp_path, batch_size=1)
    for i, image_id in enumerate(voc.ids):
        label = torch.from_numpy(voc.label(i))
        reference = release_cls_maps(net, release_input(voc.image(i)), label)
        with torch.inference_mode():  # as under trainer.predict
            (record,) = predictor.predict_step([dataset[i]], 0)
        present = np.flatnonzero(label.numpy())
        assert record.classes.tolist() == present.tolist()
        np.testing.assert_allclose(record.maps, reference[present], rtol=0, atol=1e-6)
        assert not reference[np.flatnonzero(label.numpy() == 0)].any()  # absent classes are 0: not stored
        with np.load(tmp_path / f"{image_id}.npz") as data:
            stored = data["maps"]
        assert stored.dtype == np.uint8 and stored.shape == (present.size, 320, 320)
        np.testing.assert_array_equal(stored, release_store(reference)[present])


def _scaled_refiner() -> torch.nn.Module:
    """A random refiner whose raw outputs span about [-1.5, 1.5]: every step of the label rule fires."""
    torch.manual_seed(1)
    net = make_classifier("tiny", refiner=True).eval()
    with torch.no_grad():
        net.classifier.weight.mul_(6.0)
        net.classifier.bias.fill_(0.4)
    return net


def test_refined_maps_files_and_pseudo_labels_equal_the_release(
    cfg, voc: VOCDataset, voc_root: Path, tmp_path: Path
) -> None:
    net = _scaled_refiner()
    maps_dir, labels_dir = tmp_path / "maps", tmp_path / "pseudo"
    labels_dir.mkdir()
    dataset, predictor = _write(cfg, net, "refine", maps_dir)
    saliency_dir = voc_root / "VOCdevkit" / "VOC2012" / "saliency_isnet_imgly"
    set_job(LabelJob(voc, maps_dir, labels_dir, saliency_dir, PseudoRule(rule="release"), None))
    seen: set[int] = set()
    for i, image_id in enumerate(voc.ids):
        label = torch.from_numpy(voc.label(i))
        size = voc.image(i).shape[:2]
        reference = release_refined_maps(net, release_input(voc.image(i)), label, size)
        classes, stored = load_maps(maps_dir / f"{image_id}.npz")
        with torch.inference_mode():  # as under trainer.predict
            (record,) = predictor.predict_step([dataset[i]], 0)
        np.testing.assert_array_equal(stored, record.maps)  # float32 storage is exact
        np.testing.assert_allclose(stored, reference[classes], rtol=0, atol=1e-6)
        assert not reference[np.flatnonzero(label.numpy() == 0)].any()
        saliency = read_saliency(saliency_dir / f"{image_id}.png")
        expected = release_pseudo_label(reference, saliency)
        label_image(i)  # the pseudo stage's worker: maps file + saliency PNG -> label PNG
        written = read_index_png(labels_dir / f"{image_id}.png")
        mismatch = int((written != expected).sum())
        # wsss's maps agree with the reference to 1e-6, not to the bit: a value within 1e-6 of a threshold
        # (0.2, 0.9) or of another channel could flip; none does on these images
        assert mismatch == 0, f"{image_id}: {mismatch} pixels differ"
        np.testing.assert_array_equal(release_label(dense_maps(classes, stored), saliency), expected)
        seen |= set(np.unique(expected).tolist())
    assert {0, 255} <= seen and len(seen - {0, 255}) >= 3  # background, ignore and several classes


def test_release_rule_ties_and_thresholds_on_hand_built_maps() -> None:
    """Equal channels: the first wins (background before classes, lower class before higher)."""
    maps = np.zeros((20, 1, 7), np.float32)
    sal = np.array([[255, 255, 0, 255, 255, 255, 255]], np.uint8)
    maps[[2, 5], 0, 0] = 0.7  # tie of two classes: class id 3
    maps[4, 0, 1] = 0.2  # exactly alpha survives (values < alpha are zeroed)
    maps[1, 0, 2] = 1.0  # tie with the background score 1 on a non-salient pixel: background
    maps[[0, 1], 0, 3] = 0.95  # two confident channels (the background is 0 here): kept
    maps[[0, 1, 2], 0, 4] = 0.95  # three confident channels: 255
    maps[3, 0, 5] = 0.1999  # below alpha on a salient pixel: background -> 255
    maps[6, 0, 6] = np.float32(0.9) + np.float32(1e-7)
    expected = release_pseudo_label(maps, sal)
    assert expected[0].tolist() == [3, 5, 0, 1, 255, 255, 7]
    np.testing.assert_array_equal(release_label(maps, sal), expected)


def test_refinement_targets_equal_the_release_s(cfg, voc: VOCDataset, tmp_path: Path) -> None:
    """Stored 320 x 320 maps / 255 go straight to the squashed image (no resize), flip with it, top class."""
    rng = np.random.default_rng(0)
    stored: dict[str, np.ndarray] = {}
    for i, image_id in enumerate(voc.ids):
        present = np.flatnonzero(voc.label(i))
        maps = rng.integers(0, 256, (present.size, 320, 320), dtype=np.uint8)
        maps[:, :40] = 77  # equal values: ties keep every maximum
        save_npz(tmp_path / f"{image_id}.npz", classes=present.astype(np.int16), maps=maps)
        dense = np.zeros((20, 320, 320), np.uint8)
        dense[present] = maps
        stored[image_id] = dense
    data = cfg.data.copy()
    data.color_jitter = None  # the release jitters with torchvision's ColorJitter: not reproducible here
    dm = WSSSDataModule(
        data,
        "refine",
        crop_size=cfg.refine.crop_size,
        squash_size=cfg.refine.squash_size,
        maps_dir=tmp_path,
        split=SPLIT,
    )
    dm.setup("fit")
    task = RefinerTask(torch.nn.Identity(), top_class_only=bool(cfg.refine.top_class_only))
    flips = set()
    for _ in range(3):
        for i, image_id in enumerate(voc.ids):
            sample = dm.train_set[i]
            image = release_input(voc.image(i))[0]
            flipped = not torch.allclose(sample["image"], image, atol=1e-5)
            if flipped:
                torch.testing.assert_close(sample["image"], image.flip(-1), atol=1e-5, rtol=0)
            target = task.target(sample["maps"][None])[0]
            assert torch.equal(target, release_refine_target(stored[image_id], flipped))
            flips.add(flipped)
    assert flips == {True, False}


def test_refinement_loss_is_the_release_s_mse_on_the_aligned_corner_upsampling(cfg) -> None:
    """train_refine.py: MSE(model(img), target), the model upsampling its scores with aligned corners."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    net = make_classifier("tiny", refiner=True)
    task = RefinerTask(net, top_class_only=True, align_corners=bool(cfg.refine.align_corners))
    task.log = lambda *a, **k: None  # no trainer attached
    images = torch.randn(2, 3, 40, 40)
    maps = torch.rand(2, 20, 40, 40)
    loss = task.training_step({"image": images, "maps": maps}, 0)
    up = F.interpolate(net(images), size=(40, 40), mode="bilinear", align_corners=True)
    expected = torch.nn.MSELoss()(up, maps * (maps == maps.max(1, keepdim=True)[0]).float())
    assert abs(float(loss.detach()) - float(expected.detach())) <= 1e-6 * float(expected.detach())
    half_pixel = RefinerTask(net, top_class_only=True)  # the paper protocol's grid
    half_pixel.log = lambda *a, **k: None
    other = half_pixel.training_step({"image": images, "maps": maps}, 0)
    assert abs(float(other.detach()) - float(expected.detach())) > 1e-6
