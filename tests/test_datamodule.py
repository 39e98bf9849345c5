"""WSSSDataModule on a small generated toy dataset: sample contents per stage, batch sizes, errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from conftest import compose_config
from wsss.data.datamodule import StageDataset, WSSSDataModule
from wsss.data.maps_io import save_maps
from wsss.data.palette import save_mask
from wsss.data.transforms import build_transforms
from wsss.data.voc import VOCDataset
from wsss.errors import MissingArtifactError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("dm") / "runs"
    overrides = [
        "data=toy",
        "data.toy.num_train=10",
        "data.toy.num_val=3",
        "data.toy.num_test=2",
        "data.toy.size=40",
    ]
    overrides += ["data.crop_size=32", "data.batch_size=4"]
    return compose_config(overrides, runs=runs)


def voc(cfg, split: str) -> VOCDataset:
    return VOCDataset(cfg.data.root, split)


def denormalise(image: torch.Tensor) -> np.ndarray:
    return (image.numpy().transpose(1, 2, 0) * STD + MEAN) * 255


def test_cls_generates_the_toy_data_and_gives_labels(cfg) -> None:
    dm = WSSSDataModule(cfg.data, "cls")
    dm.prepare_data()
    assert (Path(cfg.data.root) / "VOCdevkit" / "VOC2012" / "toy.json").is_file()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "id"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    train = voc(cfg, "train_aug")
    for k, image_id in enumerate(batch["id"]):
        np.testing.assert_array_equal(batch["label"][k].numpy(), train.label(train.ids.index(image_id)))
    assert len(dm.train_dataloader()) == 2  # 10 images, batch 4, last partial batch dropped
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"image", "label", "id", "mask"}
    assert val["image"].shape == (1, 3, 40, 40) and val["mask"].dtype == torch.long
    gt = voc(cfg, "val")
    np.testing.assert_array_equal(val["mask"][0].numpy(), gt.mask(0))
    np.testing.assert_allclose(denormalise(val["image"][0]), gt.image(0), atol=0.01)


def test_global_batch_size_is_split_over_processes(cfg) -> None:
    dm = WSSSDataModule(cfg.data, "cls")
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.train_dataloader().batch_size == 2
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match=r"data.batch_size=4 .* divisible by the 3 processes"):
        dm.train_dataloader()


def test_loader_options(cfg) -> None:
    data = cfg.data.copy()
    with open_dict(data):
        data.num_workers, data.persistent_workers, data.pin_memory = 0, True, "auto"
    dm = WSSSDataModule(data, "eval")
    dm.setup("test")
    loader = dm.test_dataloader()
    assert loader.num_workers == 0 and not loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()
    with open_dict(data):
        data.num_workers = 1
    assert WSSSDataModule(data, "cls")._loader(dm.test_set, 1, False, "x").persistent_workers


def test_refine_maps_follow_the_image_geometry(cfg, tmp_path: Path) -> None:
    train = voc(cfg, "train_aug")
    maps_dir = tmp_path / "maps"
    for i, image_id in enumerate(train.ids):
        gt = train.mask(i)
        classes = np.nonzero(train.label(i))[0]
        full = np.stack([(gt == c + 1).astype(np.float32) for c in classes])
        save_maps(maps_dir / f"{image_id}.npz", classes, full[:, ::2, ::2])  # stored at half size
    dm = WSSSDataModule(cfg.data, "refine", maps_dir=maps_dir)
    dm.setup("fit")
    flips = set()
    for batch in dm.train_dataloader():
        assert batch["maps"].shape == (4, 20, 32, 32) and batch["label"].shape == (4, 20)
        for k, image_id in enumerate(batch["id"]):
            i = train.ids.index(image_id)
            maps, label = batch["maps"][k].numpy(), batch["label"][k].numpy()
            assert (maps[label == 0] == 0).all()  # absent classes stay empty
            # find the crop + flip that maps the original image onto the sample, then check the maps
            original = train.image(i).astype(np.float32).mean(axis=2)
            sample = denormalise(batch["image"][k]).mean(axis=2)
            best = min(
                (
                    (np.corrcoef(view[y : y + 32, x : x + 32].ravel(), sample.ravel())[0, 1] * -1, y, x, f)
                    for f, view in enumerate((original, original[:, ::-1]))
                    for y in range(9)
                    for x in range(9)
                ),
            )
            _, y, x, f = best
            flips.add(f)
            gt = train.mask(i)[:, ::-1] if f else train.mask(i)
            fg = (gt[y : y + 32, x : x + 32] > 0).astype(np.float32)
            agree = ((maps.max(axis=0) > 0.5) == (fg > 0.5)).mean()
            assert agree > 0.9, (image_id, agree)
    assert flips == {0, 1}


def test_refine_and_seg_name_the_missing_stage(cfg, tmp_path: Path) -> None:
    with pytest.raises(MissingArtifactError, match=r"stage=maps maps.source=cls"):
        WSSSDataModule(cfg.data, "refine", maps_dir=tmp_path / "none").setup("fit")
    (tmp_path / "pseudo").mkdir()
    with pytest.raises(MissingArtifactError, match=r"10 of 10 images have no pseudo labels .* stage=pseudo"):
        WSSSDataModule(cfg.data, "seg", pseudo_dir=tmp_path / "pseudo").setup("fit")


def test_seg_reads_pseudo_labels_and_validates_at_full_size(cfg, tmp_path: Path) -> None:
    train = voc(cfg, "train_aug")
    pseudo = tmp_path / "pseudo"
    for i, image_id in enumerate(train.ids):
        label = train.mask(i).copy()
        label[:4] = 255
        save_mask(pseudo / f"{image_id}.png", label)
    dm = WSSSDataModule(cfg.data, "seg", pseudo_dir=pseudo)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "id"} and batch["mask"].shape == (4, 32, 32)
    values = set(torch.unique(batch["mask"]).tolist())
    assert 255 in values and values <= set(range(21)) | {255}
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"image", "mask", "id", "size"} and val["size"].tolist() == [[40, 40]]
    shutil.copy(pseudo / f"{train.ids[0]}.png", tmp_path / "x.png")
    save_mask(pseudo / f"{train.ids[0]}.png", np.zeros((20, 40), np.uint8))
    dm = WSSSDataModule(cfg.data, "seg", pseudo_dir=pseudo)  # a new stage reads the files again
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"pseudo label is 40x20 but its image is 40x40"):
        dm.train_set[0]


def test_infer_eval_and_predict(cfg) -> None:
    dm = WSSSDataModule(cfg.data, "infer", infer_size=24, batch_size=3)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"image", "label", "id", "size"}
    assert batch["image"].shape == (3, 3, 24, 24) and batch["size"].tolist() == [[40, 40]] * 3
    full = WSSSDataModule(cfg.data, "infer")
    full.setup("predict")
    assert next(iter(full.predict_dataloader()))["image"].shape == (1, 3, 40, 40)

    ev = WSSSDataModule(cfg.data, "eval")
    ev.setup("test")
    assert next(iter(ev.test_dataloader()))["id"] == ["toy_val_0000"]
    pr = WSSSDataModule(cfg.data, "predict")
    pr.setup("predict")
    sample = next(iter(pr.predict_dataloader()))
    assert set(sample) == {"image", "id", "size"} and sample["id"] == ["toy_test_0000"]
    with pytest.raises(RuntimeError, match=r"no such loader"):
        pr.train_dataloader()


class Constant:
    """Ten copies of one image (duck-typed VOCDataset)."""

    ids = [f"c{i}" for i in range(10)]

    def __len__(self) -> int:
        return 10

    def image(self, i: int) -> np.ndarray:
        return np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)

    def label(self, i: int) -> np.ndarray:
        return np.zeros(20, np.float32)


def test_workers_draw_different_augmentations() -> None:
    transform = build_transforms("cls", 24, True, MEAN, STD)
    dataset = StageDataset(Constant(), "cls", transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    images = [b["image"][0] for b in loader]
    # items 2k and 2k+1 come from different workers: identical streams would make them equal
    assert sum(torch.equal(images[2 * k], images[2 * k + 1]) for k in range(5)) <= 1


def test_bad_stage_and_missing_folders_are_named(cfg) -> None:
    with pytest.raises(ValueError, match=r"stage='train'"):
        WSSSDataModule(cfg.data, "train")
    with pytest.raises(ValueError, match=r"needs maps_dir"):
        WSSSDataModule(cfg.data, "refine")
    with pytest.raises(ValueError, match=r"needs pseudo_dir"):
        WSSSDataModule(cfg.data, "seg")


def _epochs(dm: WSSSDataModule, epochs: int) -> list[dict]:
    """Samples of ``epochs`` passes over a fresh train set, whose augmentation is seeded from torch's seed."""
    torch.manual_seed(0)
    return [dm.train_set[i] for _ in range(epochs) for i in range(len(dm.train_set))]


@pytest.mark.parametrize("kind", ["cls", "refine", "seg"])
def test_the_decoded_input_cache_gives_the_same_samples(cfg, tmp_path: Path, kind: str) -> None:
    WSSSDataModule(cfg.data, "cls").prepare_data()  # the toy data, when this test runs alone
    train = voc(cfg, "train_aug")
    folders = {}
    if kind == "refine":
        folders["maps_dir"] = tmp_path / "maps"
        for i, image_id in enumerate(train.ids):
            classes = np.nonzero(train.label(i))[0]
            maps = np.random.default_rng(i).random((len(classes), 20, 20), dtype=np.float32)
            save_maps(folders["maps_dir"] / f"{image_id}.npz", classes, maps)
    if kind == "seg":
        folders["pseudo_dir"] = tmp_path / "pseudo"
        for i, image_id in enumerate(train.ids):
            save_mask(folders["pseudo_dir"] / f"{image_id}.png", train.mask(i))
    samples = {}
    for megabytes in (0, 64):
        dm = WSSSDataModule(_with_cache(cfg, megabytes), kind, **folders)
        dm.setup("fit")
        samples[megabytes] = _epochs(dm, 3)  # 3 epochs: the cached inputs are not changed by the pipeline
        assert (dm.train_set._cached_bytes > 0) == (megabytes > 0)
        assert len(dm.train_set._cache) == (len(train) if megabytes else 0)
    for plain, cached in zip(samples[0], samples[64], strict=True):
        assert plain.keys() == cached.keys()
        for key, value in plain.items():
            assert torch.equal(value, cached[key]) if torch.is_tensor(value) else value == cached[key], key


def _with_cache(cfg, megabytes: object):
    """A copy of the ``data`` config with ``cache_mb`` set (the module's cfg stays as it is)."""
    data = cfg.data.copy()
    with open_dict(data):
        data.cache_mb = megabytes
    return data


class _InPlace:
    """A transform that writes into its input arrays (albumentations' do not; a user's may)."""

    def set_random_seed(self, seed: int) -> None:
        pass

    def __call__(self, **inputs):
        inputs["image"] += 1
        return {"image": inputs["image"].astype(np.float32)}


def test_a_transform_that_writes_in_place_does_not_change_the_cache(cfg) -> None:
    WSSSDataModule(cfg.data, "cls").prepare_data()
    ds = StageDataset(voc(cfg, "train_aug"), "cls", _InPlace(), cache_bytes=2**20)
    first, again = ds[0]["image"], ds[0]["image"]
    assert len(ds._cache) == 1 and torch.equal(first, again)


def test_the_cache_stops_at_its_budget_and_refuses_a_bad_size(cfg) -> None:
    dm = WSSSDataModule(_with_cache(cfg, 0.01), "cls")  # ~10 KB: two 40 px images (4.8 KB each) fit
    dm.setup("fit")
    _epochs(dm, 1)
    assert 0 < dm.train_set._cached_bytes <= 0.01 * 2**20
    assert len(dm.train_set._cache) == 2 < len(dm.train_set)
    for bad in (-1, "lots"):
        with pytest.raises(ValueError, match=rf"data.cache_mb={bad} must be a number of megabytes >= 0"):
            WSSSDataModule(_with_cache(cfg, bad), "cls").setup("fit")
