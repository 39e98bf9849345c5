"""What several benchmarks build: networks with random weights, in-memory batches, Trainers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fixtures import NUM_CLASSES, REPO
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wsss.drs import LAYERS

BACKBONES: dict[str, dict[str, Any]] = {
    "vgg16": {"name": "vgg16", "weights": None},
    "tiny": {"name": "tiny", "width": 8, "weights": None},
}


def quiet() -> None:
    """Silence the random-weights warning and Lightning's start-up messages."""
    for name in ("wsss.models.classifier", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def classifier(backbone: str, drs: str = "learnable") -> nn.Module:
    """The DRS classifier (DRS on layer1..layer6) with random weights; ``drs="off"`` = the refiner."""
    from wsss.models.classifier import build_classifier

    cfg = OmegaConf.create({"mode": drs, "delta": 0.55, "placement": list(LAYERS)})
    return build_classifier(OmegaConf.create(BACKBONES[backbone]), cfg, NUM_CLASSES)


def segmenter(name: str) -> nn.Module:
    """The DeepLab of conf/segmenter/<name>.yaml (largefov_tiny, largefov_vgg16, aspp_r101) with random weights."""
    from wsss.models.deeplab import build_segmenter

    cfg = OmegaConf.load(REPO / "conf" / "segmenter" / f"{name}.yaml")
    return build_segmenter(OmegaConf.to_container(cfg, resolve=True), NUM_CLASSES + 1)


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
    """Images and labels as the map writer reads them: ``{"image", "label", "id"}`` samples, ``.ids``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.ids = [f"b{i:05d}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "id": self.ids[i]}


def squashed(image: np.ndarray, side: int) -> torch.Tensor:
    """An RGB uint8 image squashed to side x side (PIL bilinear), ImageNet-normalised, (3, side, side)."""
    from PIL import Image

    from wsss.tasks.classifier import IMAGENET_MEAN, IMAGENET_STD

    resized = (
        np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    )
    x = (resized - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def lightning_trainer(**kwargs: Any):
    """A CPU Trainer without logger, checkpoints, progress bar or summary (what a predict needs)."""
    import lightning.pytorch as pl

    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**defaults, **kwargs})
