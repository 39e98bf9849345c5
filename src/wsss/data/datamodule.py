"""One LightningDataModule for every stage; what a sample carries depends on the stage.

===========  ==========================  ==================================================================
stage        loaders                     sample (before collation)
===========  ==========================  ==================================================================
``cls``      train: ``data.train_split``  image (3, H, W) float normalised, label (C,) float, id
             val: ``data.val_split``      image at original size, label, id, mask (H, W) long if the split
                                          has masks (batch 1, no crop: the validation map-mIoU is scored at
                                          full resolution)
``refine``   train: ``data.maps_split``   image, maps (C, H, W) float in [0, 1] from ``maps_dir/<id>.npz``
                                          (resized to the image before the augmentation, so both get the
                                          same geometry; with a squash, maps stored at the squash size go
                                          in as they are, others are resized once to it), label, id
``seg``      train: ``data.maps_split``   image, mask (H, W) long pseudo label from ``pseudo_dir/<id>.png``, id;
                                          with ``image_labels`` also label (C,) (the release's DeepLab-V2
                                          loss needs the image label)
             val: ``data.val_split``      image, mask (ground truth), id, size; original size, batch 1
``infer``    predict: ``data.maps_split`` image (squashed to ``infer_size`` if given, else original size),
                                          label, id, size (H, W) of the original
``eval``     test: ``data.val_split``     image at original size, mask if any, id, size; batch 1
``predict``  predict: ``data.test_split`` image at original size, mask if any, id, size; batch 1
===========  ==========================  ==================================================================

``split`` overrides the split of the stage's main loader. Masks are long with 255 = ignore; ``size``
is a long tensor (2,) = (H, W); C is the dataset's class count (``data.num_classes``). The global
``data.batch_size`` is divided by the trainer's world size.
``prepare_data`` generates the toy dataset on first use (``data.generate``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsss.data.maps_io import dense_maps, load_maps
from wsss.data.palette import read_index_png
from wsss.data.resumable import ResumableLoader
from wsss.data.toy import ensure_toy
from wsss.data.transforms import JITTER, SEG_SCALES, build_transforms
from wsss.data.voc import VOCDataset, check_mask, preview_ids
from wsss.errors import ConfigError, MaskSizeError, MissingArtifactError
from wsss.method.localization import resize_maps
from wsss.pipeline.registry import STAGES

KINDS = tuple(dict.fromkeys([s.data for s in STAGES.values() if s.data] + ["eval", "predict"]))
"""What each stage needs from the data (``Stage.data`` in ``wsss.pipeline.registry``), plus whole-split
loaders (``eval``, ``predict``: original-size images, batch 1) for tools and notebooks."""


class StageDataset(Dataset):
    """Samples of one stage from a ``VOCDataset`` and an albumentations pipeline.

    Args:
        voc: the split.
        kind: cls, refine, seg, infer or eval (which keys a sample has; see the module doc).
        transform: the pipeline (``build_transforms``).
        maps_dir: ``refine``: folder of ``<id>.npz`` maps.
        pseudo_dir: ``seg`` training: folder of ``<id>.png`` pseudo labels.
        with_mask: add the ground-truth ``mask`` (cls validation, eval).
        with_size: add ``size`` (H, W) of the original image.
        with_label: add the image label (always for cls, refine and infer).
        maps_squashed: ``refine``: the pipeline squashes the maps with the image (``Squash``), so they
            are not resized to the original image first.
        cache_bytes: keep up to this many bytes of decoded inputs (image, maps, label; before the
            random augmentation, so samples are unchanged) in memory for the next epochs; 0: none.
    """

    def __init__(
        self,
        voc: VOCDataset,
        kind: str,
        transform: A.Compose,
        maps_dir: Path | None = None,
        pseudo_dir: Path | None = None,
        with_mask: bool = False,
        with_size: bool = False,
        with_label: bool = False,
        maps_squashed: bool = False,
        cache_bytes: int = 0,
    ) -> None:
        self.voc = voc
        self.ids = voc.ids
        self.kind = kind
        self.transform = transform
        self.maps_dir = maps_dir
        self.pseudo_dir = pseudo_dir
        self.with_mask = with_mask
        self.with_size = with_size
        self.with_label = with_label or kind in ("cls", "refine", "infer")
        self.maps_squashed = maps_squashed
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cached_bytes = 0
        self._seeded_pid: int | None = None

    def __len__(self) -> int:
        return len(self.voc)

    def _seed_transform(self) -> None:
        """Give each process (each DataLoader worker) its own augmentation stream, from torch's seed.

        albumentations keeps its generator in the pipeline object, which workers would otherwise
        inherit identically; torch seeds every worker differently (and seed_everything the main process).
        """
        pid = os.getpid()
        if self._seeded_pid != pid:
            self.transform.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_pid = pid

    def _generators(self) -> list[Any]:
        """The augmentation pipeline and each of its transforms (each holds its own generators)."""
        found, todo = [], [self.transform]
        while todo:
            node = todo.pop(0)
            found.append(node)
            todo.extend(getattr(node, "transforms", None) or [])
        return found

    def random_state(self) -> list[tuple[dict, tuple]]:
        """The augmentation generators' states (numpy and Python), for an exact mid-epoch resume."""
        self._seed_transform()
        return [
            (node.random_generator.bit_generator.state, node.py_random.getstate())
            for node in self._generators()
        ]

    def set_random_state(self, state: list[tuple[dict, tuple]]) -> None:
        """Continue the augmentation stream ``random_state`` saved (in this process)."""
        nodes = self._generators()
        if len(nodes) != len(state):
            raise ValueError(f"augmentation state of {len(state)} transforms for a pipeline of {len(nodes)}")
        for node, (numpy_state, python_state) in zip(nodes, state, strict=True):
            node.random_generator.bit_generator.state = numpy_state
            node.py_random.setstate(python_state)
        self._seeded_pid = os.getpid()

    def _inputs(self, i: int) -> dict[str, np.ndarray]:
        """The decoded inputs of sample ``i`` (copies from the cache when it holds them)."""
        cached = self._cache.get(i)
        if cached is None:
            cached = self._decode(i)
            nbytes = sum(a.nbytes for a in cached.values())
            if self._cached_bytes + nbytes > self.cache_bytes:
                return cached
            self._cache[i] = cached
            self._cached_bytes += nbytes
        return {key: array.copy() for key, array in cached.items()}  # a transform may write in place

    def _decode(self, i: int) -> dict[str, np.ndarray]:
        image = self.voc.image(i)
        size = image.shape[:2]
        inputs: dict[str, np.ndarray] = {"image": image}
        if self.kind == "refine":
            assert self.maps_dir is not None
            classes, maps = load_maps(self.maps_dir / f"{self.ids[i]}.npz", self.voc.num_classes)
            if not self.maps_squashed:  # one interpolation only: to the image, or by the squash
                maps = resize_maps(maps, size)
            maps = dense_maps(classes, maps, self.voc.num_classes)
            inputs["maps"] = np.ascontiguousarray(
                maps.transpose(1, 2, 0)
            )  # (H, W, C): albumentations' layout
        if self.kind == "seg" and self.pseudo_dir is not None:
            path = self.pseudo_dir / f"{self.ids[i]}.png"
            label = read_index_png(path)
            if label.shape != size:
                raise MaskSizeError(
                    f"{path}: pseudo label is {label.shape[1]}x{label.shape[0]} but its image is "
                    f"{size[1]}x{size[0]}; rerun stage=pseudo (pseudo.overwrite=true)"
                )
            inputs["mask"] = check_mask(label, path, None)
        elif self.with_mask:
            inputs["mask"] = self.voc.mask(i)
        return inputs

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._seed_transform()
        inputs = self._inputs(i)
        size = inputs["image"].shape[:2]
        out = self.transform(**inputs)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "id": self.ids[i],
        }
        if "mask" in out:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
        if "maps" in out:
            sample["maps"] = torch.from_numpy(np.ascontiguousarray(out["maps"].transpose(2, 0, 1))).float()
        if self.with_label:
            sample["label"] = torch.from_numpy(self.voc.label(i))
        if self.with_size:
            sample["size"] = torch.tensor(size, dtype=torch.long)
        return sample


def _require_files(folder: Path, ids: list[str], suffix: str, what: str, command: str) -> None:
    if not folder.is_dir():
        raise MissingArtifactError(f"{what} folder {folder} does not exist; make it with: {command}")
    have = {p.name for p in folder.iterdir()}
    lacking = [i for i in ids if f"{i}{suffix}" not in have]
    if lacking:
        raise MissingArtifactError(
            f"{len(lacking)} of {len(ids)} images have no {what} in {folder}: {preview_ids(lacking)}; "
            f"(re)run: {command}"
        )


def evaluation_generator() -> torch.Generator:
    """A private generator for the loaders that do not shuffle: starting one draws a seed from its
    loader's generator, so with torch's global one, how often a stage validates would change the random
    numbers of its training (and ``trainer.check_val_every_n_epoch`` is not part of a stage's identity)."""
    return torch.Generator().manual_seed(0)


class WSSSDataModule(pl.LightningDataModule):
    """The data of one stage (see the module doc).

    Args:
        data_cfg: the ``data`` config group.
        stage: what the stage needs (``KINDS``): cls, refine, seg, infer, eval or predict.
        crop_size: training crop of cls/refine/seg (default ``data.crop_size``).
        squash_size: cls/refine training: squash to this square side before the crop (None: no squash).
        maps_dir: ``refine``: the maps folder (``<exp>/maps/cls``).
        pseudo_dir: ``seg``: the pseudo-label folder (``<exp>/pseudo``).
        infer_size: ``infer``: square side to squash images to (None: original size, batch 1).
        batch_size: the global batch size of the training loader, and of ``infer`` when ``infer_size`` is
            set (default ``data.batch_size``).
        split: the split of the stage's main loader instead of the configured one.
        seg_scales, seg_scale_range, seg_resize: ``seg`` training's random scale
            (``wsss.data.transforms.build_transforms``).
        image_labels: ``seg`` training samples also carry the image label.
    """

    def __init__(
        self,
        data_cfg: Any,
        stage: str,
        crop_size: int | None = None,
        squash_size: int | None = None,
        maps_dir: str | Path | None = None,
        pseudo_dir: str | Path | None = None,
        infer_size: int | None = None,
        batch_size: int | None = None,
        split: str | None = None,
        seg_scales: Sequence[float] = SEG_SCALES,
        seg_scale_range: Sequence[float] | None = None,
        seg_resize: str = "cv2",
        image_labels: bool = False,
    ) -> None:
        super().__init__()
        if stage not in KINDS:
            raise ValueError(f"WSSSDataModule stage={stage!r}; choose one of {', '.join(KINDS)}")
        if stage == "refine" and maps_dir is None:
            raise ValueError("the refine stage needs maps_dir (the <exp>/maps/cls folder)")
        if stage == "seg" and pseudo_dir is None:
            raise ValueError("the seg stage needs pseudo_dir (the <exp>/pseudo folder)")
        self.cfg = data_cfg
        self.stage = stage
        self.crop_size = None if crop_size is None else int(crop_size)
        self.squash_size = None if squash_size is None else int(squash_size)
        self.maps_dir = None if maps_dir is None else Path(maps_dir)
        self.pseudo_dir = None if pseudo_dir is None else Path(pseudo_dir)
        self.infer_size = None if infer_size is None else int(infer_size)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.split = split
        self.seg_scales = [float(s) for s in seg_scales]
        self.seg_scale_range = None if seg_scale_range is None else [float(s) for s in seg_scale_range]
        self.seg_resize = str(seg_resize)
        self.image_labels = bool(image_labels)
        self.train_set: StageDataset | None = None
        self.val_set: StageDataset | None = None
        self.test_set: StageDataset | None = None
        self.predict_set: StageDataset | None = None

    # -- config helpers -------------------------------------------------------------------------
    def _get(self, key: str, default: Any = None) -> Any:
        value = self.cfg.get(key, default) if hasattr(self.cfg, "get") else getattr(self.cfg, key, default)
        return default if value is None else value

    def _voc(self, split: str, require_masks: bool = False) -> VOCDataset:
        return VOCDataset(
            str(self.cfg.root),
            str(split),
            saliency_dir=None,
            require_masks=require_masks,
            labels_file=self._get("labels_file"),
            cache_dir=self._get("cache_dir"),
        )

    def _transforms(self, stage: str, train: bool) -> A.Compose:
        crop = self.crop_size or int(self.cfg.crop_size)
        squash = self.squash_size if stage in ("cls", "refine") else None
        jitter = self.cfg.get("color_jitter", JITTER)  # absent: the release's; null: none
        return build_transforms(
            stage,
            crop,
            train,
            list(self.cfg.mean),
            list(self.cfg.std),
            squash_size=squash,
            color_jitter=list(jitter) if jitter else None,
            seg_scales=self.seg_scales,
            seg_scale_range=self.seg_scale_range,
            seg_resize=self.seg_resize,
        )

    def _cache_bytes(self) -> int:
        """``data.cache_mb``: decoded inputs kept in memory per training/validation set and loader process."""
        value = self._get("cache_mb", 0)
        try:
            megabytes = float(value)
        except (TypeError, ValueError):
            megabytes = -1.0
        if not megabytes >= 0:  # also NaN
            raise ConfigError(f"data.cache_mb={value} must be a number of megabytes >= 0 (0: no cache)")
        return int(megabytes * 2**20)

    def per_device_batch_size(self) -> int:
        """``data.batch_size`` divided by the world size of the attached trainer (1 without one)."""
        total = int(self.batch_size or self.cfg.batch_size)
        trainer = getattr(self, "trainer", None)
        world = int(trainer.world_size) if trainer is not None else 1
        if total % world:
            raise ConfigError(
                f"data.batch_size={total} is the global batch size and must be divisible by the "
                f"{world} processes (devices x nodes); set data.batch_size to a multiple of {world}"
            )
        return total // world

    # -- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:

        ensure_toy(self.cfg)

    def setup(self, stage: str | None = None) -> None:
        """Build only the datasets this module's stage needs (Lightning's ``stage`` argument is ignored)."""

        ensure_toy(self.cfg)  # idempotent; covers use without a Trainer (prepare_data not called)
        kind = self.stage
        cache = self._cache_bytes() if kind in ("cls", "refine", "seg") else 0  # sets read every epoch
        if kind == "cls":
            train = self._voc(self.split or self.cfg.train_split)
            train.labels()  # derive once here, before workers fork
            self.train_set = StageDataset(train, "cls", self._transforms("cls", True), cache_bytes=cache)
            val = self._voc(self.cfg.val_split)
            val.labels()
            self.val_set = StageDataset(
                val, "cls", self._transforms("eval", False), with_mask=val.has_masks, cache_bytes=cache
            )
        elif kind == "refine":
            train = self._voc(self.split or self.cfg.maps_split)
            assert self.maps_dir is not None
            _require_files(
                self.maps_dir, train.ids, ".npz", "localization maps", "stage=maps maps.source=cls"
            )
            train.labels()
            self.train_set = StageDataset(
                train,
                "refine",
                self._transforms("refine", True),
                maps_dir=self.maps_dir,
                maps_squashed=self.squash_size is not None,
                cache_bytes=cache,
            )
        elif kind == "seg":
            train = self._voc(self.split or self.cfg.maps_split)
            assert self.pseudo_dir is not None
            _require_files(self.pseudo_dir, train.ids, ".png", "pseudo labels", "stage=pseudo")
            if self.image_labels:
                train.labels()  # derive once here, before workers fork
            self.train_set = StageDataset(
                train,
                "seg",
                self._transforms("seg", True),
                pseudo_dir=self.pseudo_dir,
                with_label=self.image_labels,
                cache_bytes=self._cache_bytes(),
            )
            val = self._voc(self.cfg.val_split, require_masks=True)
            self.val_set = StageDataset(
                val,
                "eval",
                self._transforms("eval", False),
                with_mask=True,
                with_size=True,
                cache_bytes=cache,
            )
        elif kind == "infer":
            voc = self._voc(self.split or self.cfg.maps_split)
            voc.labels()
            transform = build_transforms(
                "infer", self.infer_size, False, list(self.cfg.mean), list(self.cfg.std)
            )
            self.predict_set = StageDataset(voc, "infer", transform, with_size=True)
        else:
            split = self.split or (self.cfg.val_split if kind == "eval" else self.cfg.test_split)
            voc = self._voc(split, require_masks=kind == "eval")
            dataset = StageDataset(
                voc, "eval", self._transforms("eval", False), with_mask=voc.has_masks, with_size=True
            )
            if kind == "eval":
                self.test_set = dataset
            self.predict_set = dataset

    # -- loaders --------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool, hook: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{hook}: the {self.stage!r} data module has no such loader (call setup first; "
                f"stages and their loaders are listed in wsss.data.datamodule)"
            )
        workers = int(self._get("num_workers", 0))
        pin = self._get("pin_memory", "auto")
        pin = torch.cuda.is_available() if pin == "auto" else bool(pin)
        trainer = getattr(self, "trainer", None)
        single = trainer is None or trainer.world_size == 1
        loader, extra = DataLoader, {}
        if shuffle and single:  # resumes mid-epoch exactly (wsss.data.resumable); DDP: Lightning's sampler
            loader = ResumableLoader
        elif not shuffle:
            extra["generator"] = evaluation_generator()
        return loader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=workers,
            persistent_workers=bool(self._get("persistent_workers", False)) and workers > 0,
            pin_memory=pin,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.per_device_batch_size(), True, "train_dataloader")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, 1, False, "val_dataloader")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, 1, False, "test_dataloader")

    def predict_dataloader(self) -> DataLoader:
        batch = 1
        if self.stage == "infer" and self.infer_size is not None:
            batch = int(self.batch_size or self.cfg.batch_size)
        return self._loader(self.predict_set, batch, False, "predict_dataloader")
