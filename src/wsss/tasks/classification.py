"""Training of the DRS classifier on image-level labels (stage ``cls``).

Loss: multi-label soft margin on GAP(F). Optimizer: a ``_target_`` spec (``wsss.tasks.build``; SGD with
momentum, weight decay and ``nesterov`` as the release, or Adam for the toy recipe), with one lr group
(``lr_groups="single"``, the paper) or the release's four
(``"release"``: backbone weights x1, backbone biases x2, new conv weights and all DRS controllers x10,
new conv biases x20). MultiStepLR per epoch at ``lr_steps + lr_step_offset`` finished epochs: the release
drops at the start of its (1-based) epochs 5 and 10, i.e. after 4 and 9 finished epochs (offset -1).

Validation metrics (torchmetrics, DDP-safe): ``val/loss``, ``val/accuracy`` (exact match of the whole
label vector at sigmoid >= 0.5, the paper's "classification accuracy"), ``val/map`` (mean average
precision over classes with a positive image). With ``map_miou=True`` and masks in the batch,
``val/map_miou``: the localization maps of the labelled classes turned into a segmentation
(background = 1 - saliency when the batch has ``saliency``, the release's rule with object cues >=
``map_threshold``; else background where no map exceeds ``map_threshold``) scored against the
ground-truth masks. That uses ground truth; choosing a checkpoint on it is the release's model
selection, and the stage records it. A grid of validation images and their maps is handed to the
logger every validation (``wsss.tasks.trainer.log_image``), the only file this module writes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelExactMatch, MultilabelStatScores

from wsss.constants import IMAGENET_MEAN, IMAGENET_STD
from wsss.data.figures import overlay_heatmap, save_grid
from wsss.errors import ConfigError
from wsss.method.localization import class_maps
from wsss.method.metrics import ConfusionMatrix, exact_match_accuracy
from wsss.method.seed_labels import maps_to_segmentation
from wsss.tasks.build import base_lr, build_optimizer
from wsss.tasks.speed import channels_last_input, use_channels_last
from wsss.tasks.trainer import log_image

log = logging.getLogger(__name__)

LR_GROUPS = ("single", "release")
PAPER_SGD = {"_target_": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}
"""The paper's classifier optimizer (SGD lr 1e-3, momentum 0.9, weight decay 5e-4)."""
RELEASE_LR_MULT = {"backbone_weight": 1.0, "backbone_bias": 2.0, "new_weight": 10.0, "new_bias": 20.0}


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) normalised tensors -> (B, H, W, 3) uint8."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    rgb = (images.float() * s + m).clamp(0, 1) * 255.0
    return rgb.round().byte().permute(0, 2, 3, 1).cpu().numpy()


class ClassifierTask(pl.LightningModule):
    """Multi-label training of ``model`` (``model(x)`` -> class score maps F (B, C, h, w)).

    Batches are dicts: ``image`` (B, 3, H, W), ``label`` (B, C) multi-hot; validation may add
    ``mask`` (B, H, W) with 255 = ignore and ``saliency`` (B, H, W) in [0, 1].
    """

    def __init__(
        self,
        model: nn.Module,
        network: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        lr_groups: str = "single",
        lr_step_offset: int = 0,
        lr_steps: Sequence[int] = (5, 10),
        lr_gamma: float = 0.1,
        num_classes: int = 20,
        map_miou: bool = False,
        map_threshold: float = 0.2,
        log_images: int = 4,
        channels_last: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model
        if lr_groups not in LR_GROUPS:
            raise ConfigError(f"cls.lr_groups={lr_groups!r} is not one of {LR_GROUPS}")
        self.optimizer_spec = dict(optimizer or PAPER_SGD)
        self.lr = base_lr(self.optimizer_spec, "cls.task.optimizer")
        self.lr_groups = lr_groups
        self.lr_step_offset = int(lr_step_offset)
        self.lr_steps = [int(s) for s in lr_steps]
        self.lr_gamma = float(lr_gamma)
        self.num_classes = int(num_classes)
        self.map_miou = bool(map_miou)
        self.map_threshold = float(map_threshold)
        self.log_images = int(log_images)
        self.channels_last = bool(channels_last)
        self.mean, self.std = tuple(mean), tuple(std)
        self.save_hyperparameters(ignore=["model"])
        use_channels_last(self.model, self.channels_last)
        self.val_accuracy = MultilabelExactMatch(num_labels=self.num_classes, threshold=0.5)
        self.val_ap = MultilabelAveragePrecision(num_labels=self.num_classes, average=None)
        self.val_support = MultilabelStatScores(num_labels=self.num_classes, average=None)
        self.val_confusion = ConfusionMatrix(self.num_classes + 1)
        self._figure: list[tuple[np.ndarray, np.ndarray]] = []
        if self.map_miou:
            log.warning(
                "cls: validation map mIoU (val/map_miou) scores localization maps against ground-truth "
                "masks; selecting a checkpoint on it uses ground truth (the authors' release does this)."
            )

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class score maps F (B, C, h, w)."""
        return self.model(channels_last_input(images, self.channels_last))

    @staticmethod
    def pool(scores: Tensor) -> Tensor:
        return scores.float().mean(dim=(2, 3))

    def _step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images, labels = batch["image"], batch["label"].float()
        if labels.shape[-1] != self.num_classes:
            raise ValueError(
                f"cls batch: labels have {labels.shape[-1]} classes but the model has {self.num_classes}; "
                "check data.num_classes"
            )
        scores = self(images)
        logits = self.pool(scores)
        return scores, logits, labels, F.multilabel_soft_margin_loss(logits, labels)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        _, logits, labels, loss = self._step(batch)
        n = labels.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        acc = exact_match_accuracy(logits.detach(), labels)
        self.log("train/accuracy", acc, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    # -- validation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        scores, logits, labels, loss = self._step(batch)
        n = labels.shape[0]
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        probs, targets = torch.sigmoid(logits), labels.round().long()
        self.val_accuracy.update(probs, targets)
        self.val_ap.update(probs, targets)
        self.val_support.update(probs, targets)
        size = tuple(batch["image"].shape[-2:])
        want_figure = len(self._figure) < self.log_images and not self.trainer.sanity_checking
        maps = class_maps(scores, labels, size) if (want_figure or self.map_miou) else None
        if self.map_miou and "mask" in batch:
            self._update_map_miou(maps, batch)
        if want_figure:
            rgb = denormalize(batch["image"][: self.log_images - len(self._figure)], self.mean, self.std)
            heat = maps[: len(rgb)].amax(dim=1).cpu().numpy()
            self._figure += list(zip(rgb, heat, strict=True))

    def _update_map_miou(self, maps: Tensor, batch: dict[str, Any]) -> None:
        masks, saliency = batch["mask"], batch.get("saliency")
        for i in range(maps.shape[0]):
            mask = torch.as_tensor(masks[i], device=maps.device).long()
            m = maps[i : i + 1]
            if tuple(mask.shape) != tuple(m.shape[-2:]):
                m = F.interpolate(m, size=tuple(mask.shape), mode="bilinear", align_corners=False)
            sal = None
            if saliency is not None:
                sal = torch.as_tensor(saliency[i], device=maps.device).float()
                sal = sal / 255.0 if sal.max() > 1.0 else sal
                if tuple(sal.shape) != tuple(mask.shape):
                    sal = F.interpolate(sal[None, None], size=tuple(mask.shape), mode="bilinear")[0, 0]
                sal = sal[None]
            pred = maps_to_segmentation(m, self.map_threshold, sal)[0]
            self.val_confusion.update(pred.flatten(), mask.flatten())

    def mean_average_precision(self) -> Tensor:
        """Mean AP over the classes with at least one positive validation image (others are undefined)."""
        with warnings.catch_warnings():  # "no positive samples" for the classes left out below
            warnings.filterwarnings("ignore", message="No positive samples")
            ap = self.val_ap.compute()
        support = self.val_support.compute()[:, 4]
        present = support > 0
        if not bool(present.any()):
            return torch.tensor(float("nan"), device=ap.device)
        return ap[present].mean()

    def on_validation_epoch_end(self) -> None:
        self.log("val/accuracy", self.val_accuracy.compute(), prog_bar=True)
        self.log("val/map", self.mean_average_precision())
        self.val_accuracy.reset()
        self.val_ap.reset()
        self.val_support.reset()
        if self.map_miou:
            scores = self.val_confusion.compute()
            if scores["pixels"] == 0 and not self.trainer.sanity_checking:
                raise ConfigError(
                    "cls.map_miou is on but no validation batch carried a 'mask' with labelled pixels; "
                    "validate on a split with masks or set cls.map_miou=false cls.select_on_map_miou=false"
                )
            miou = scores["miou"] if scores["pixels"] > 0 else float("nan")
            self.log("val/map_miou", torch.tensor(miou, dtype=torch.float32), prog_bar=True)
            self.val_confusion.reset()
        if self._figure and self.trainer.is_global_zero:
            self._log_figure()
        self._figure = []

    def _log_figure(self) -> None:

        rows = [[rgb, overlay_heatmap(rgb, heat)] for rgb, heat in self._figure]
        path = Path(self.trainer.default_root_dir) / "figures" / f"cls_val_epoch{self.current_epoch:03d}.png"
        save_grid(rows, path, titles=["image", "maps of labelled classes"])
        log_image(self.logger, "val/maps", path, step=self.global_step)

    # -- optimisation ----------------------------------------------------------------------------
    def milestones(self) -> list[int]:
        """MultiStepLR milestones in finished epochs: ``lr_steps + lr_step_offset`` (see module doc)."""
        return [max(0, s + self.lr_step_offset) for s in self.lr_steps]

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one group or the release's four with lr multipliers."""
        if self.lr_groups == "single":
            return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.lr}]
        if not hasattr(self.model, "param_groups"):
            raise ConfigError(
                f"cls.lr_groups=release needs a model with param_groups(); {type(self.model).__name__} has none"
            )
        groups = self.model.param_groups()
        return [
            {"params": groups[name], "lr": self.lr * mult, "name": name}
            for name, mult in RELEASE_LR_MULT.items()
            if groups.get(name)
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_spec, self.param_groups(), "cls.task.optimizer")
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=self.milestones(), gamma=self.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
