"""What several benchmarks build: networks with random weights, in-memory batches, Trainers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fixtures import NUM_CLASSES
from torch import nn
from torch.utils.data import DataLoader, Dataset


def quiet() -> None:
    """Silence the random-weights warning and Lightning's start-up messages."""
    names = (
        "wsss.models.weights",
        "wsss.tasks.classification",
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
    )
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)


def classifier(backbone: str, drs: str = "learnable") -> nn.Module:
    """The classifier of ``wsss/conf/backbone/<backbone>`` with ``wsss/conf/drs/<drs>`` (DRS on layer1..layer6),
    random weights, built as the cls stage builds it."""
    from wsss.models.networks import classifier_from_files

    return classifier_from_files(backbone, drs, num_classes=NUM_CLASSES)


def refiner(backbone: str) -> nn.Module:
    """The refinement network (the classifier's architecture with plain ReLUs), random weights."""
    from wsss.models.networks import classifier_from_files

    return classifier_from_files(backbone, "off", num_classes=NUM_CLASSES, refiner=True)


def segmenter(name: str) -> nn.Module:
    """The DeepLab of wsss/conf/segmenter/<name>.yaml (largefov_tiny, largefov_vgg16, aspp_r101), random weights."""
    from wsss.models.networks import segmenter_from_files

    return segmenter_from_files(name)


def one_hot_labels(n: int, classes_per_image: int = 1, seed: int = 0) -> torch.Tensor:
    """(n, 20) multi-hot labels with ``classes_per_image`` classes each."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, NUM_CLASSES)
    for i in range(n):
        labels[i, torch.randperm(NUM_CLASSES, generator=g)[:classes_per_image]] = 1
    return labels


class Batches(Dataset):
    """Prepared batches (dicts of tensors) served as they are: ``DataLoader(Batches(...), batch_size=None)``."""

    def __init__(self, batches: Sequence[dict[str, Any]]) -> None:
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


def batch_loader(make: Any, n: int, seed: int = 0) -> DataLoader:
    """A loader of ``n`` batches ``make(generator)``, made once (in memory, no workers)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(Batches([make(g) for _ in range(n)]), batch_size=None, shuffle=False)


class Images(Dataset):
    """Images and labels as the map writer reads them: ``{"image", "label", "id"}`` samples (plus the
    original ``size`` when given), ``.ids``."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None
    ) -> None:
        self.images, self.labels, self.sizes = images, labels, sizes
        self.ids = [f"b{i:05d}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {"image": self.images[i], "label": self.labels[i], "id": self.ids[i]}
        if self.sizes is not None:
            sample["size"] = self.sizes[i]
        return sample


def squashed(image: np.ndarray, side: int) -> torch.Tensor:
    """An RGB uint8 image squashed to side x side (PIL bilinear), ImageNet-normalised, (3, side, side)."""
    from PIL import Image

    from wsss.constants import IMAGENET_MEAN, IMAGENET_STD

    resized = (
        np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    )
    x = (resized - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def stage_trainer(**trainer_kwargs: Any):
    """The Trainer a stage gets (``wsss.tasks.trainer.build_trainer``: its callbacks, its CPU allocator setting)
    on the CPU, without logger, checkpoints, progress bar or summary (what a predict needs)."""
    import tempfile

    from omegaconf import OmegaConf

    from wsss.tasks.trainer import build_trainer

    node = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **trainer_kwargs,
    }
    out = tempfile.mkdtemp(prefix="bench_trainer_")
    return build_trainer(OmegaConf.create({"trainer": node}), "bench", out, logger=False, checkpoint=False)


def config(*overrides: str):
    """The config train.py composes from ``overrides`` (no logger, no figures), for building a stage's
    task exactly as the stage does (``wsss.stages.<stage>.build_task``); networks get random weights."""
    from wsss.pipeline.config import compose

    return compose(["logger=none", "cls.log_images=0", *overrides])


def cls_task(backbone: str, protocol: str = "paper"):
    """The cls stage's ``ClassifierTask`` for ``backbone=<backbone> protocol=<protocol>``."""
    from wsss.stages.cls import build_task

    return build_task(config(f"backbone={backbone}", f"protocol={protocol}"))


def refine_task(backbone: str, protocol: str = "paper"):
    """The refine stage's ``RefinerTask`` for ``backbone=<backbone> protocol=<protocol>``."""
    from wsss.stages.refine import build_task

    return build_task(config(f"backbone={backbone}", f"protocol={protocol}"))


def seg_task(segmenter_name: str, protocol: str = "paper"):
    """The seg stage's ``SegmenterTask`` for ``segmenter=<name> protocol=<protocol>`` (20k steps)."""
    from wsss.stages.seg import build_task

    return build_task(config(f"segmenter={segmenter_name}", f"protocol={protocol}"))


def map_stage(net: nn.Module, source: str = "cls", protocol: str = "release") -> tuple[Any, dict[str, str]]:
    """The maps stage's ``MapPredictor`` for ``net`` under ``protocol`` (its scales and the maths of
    ``maps.<source>``) and the storage arguments of ``write_maps`` (dtype, quantize)."""
    from wsss.method.localization import MapMaths
    from wsss.stages.maps_writer import MapPredictor

    maps = config(f"protocol={protocol}").maps
    recipe = maps[source]
    scales = [float(s) for s in maps.scales]
    predictor = MapPredictor(net, scales, bool(maps.flip), MapMaths.from_config(recipe), str(recipe.size))
    return predictor, {"dtype": str(recipe.dtype), "quantize": str(recipe.quantize)}
