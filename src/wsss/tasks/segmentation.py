"""Training of a DeepLab segmenter on pseudo labels (``stage=seg``), validated by mIoU on ground truth.

DeepLab v2's recipe: SGD (momentum 0.9, weight decay 5e-4) with the model's parameter groups (classifier
10x weights / 20x biases); poly learning rate ``lr * (1 - s / max_steps) ** power`` where ``s`` is the
optimizer step rounded down to a multiple of ``poly_step`` (1: every step; the release's DeepLab-V2 code
changes the rate every 10 steps), stepped after every optimizer step.

The model returns one logits tensor, or in training a list (the multi-scale wrapper
``wsss.models.deeplabv2.MultiScaleInputs``: full, scaled, max); the loss sums over them:

- ``loss="ce"``: cross-entropy ignoring 255, each output's logits upsampled to the label size (wsss);
- ``loss="release_v2"``: the release's DeepLab-V2 loss (``wsss.method.release_losses.release_deeplabv2_loss``):
  labels resized to each output (PIL nearest), plus the cross-entropy against the network's own
  prediction among the image's classes (``cls`` = the batch's ``label`` with background 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from wsss.constants import IGNORE_INDEX
from wsss.errors import ConfigError
from wsss.method.metrics import ConfusionMatrix
from wsss.method.release_losses import release_deeplabv2_loss, with_background
from wsss.tasks.build import base_lr, build_optimizer
from wsss.tasks.speed import channels_last_input, use_channels_last

LOSSES = ("ce", "release_v2")
DEEPLAB_SGD = {"_target_": "torch.optim.SGD", "lr": 2.5e-4, "momentum": 0.9}
"""DeepLab v2's optimizer (SGD, lr 2.5e-4, momentum 0.9; weight decay is set per parameter group)."""


def poly_factor(max_steps: int, power: float = 0.9, step: int = 1) -> Callable[[int], float]:
    """LR factor at optimizer step ``s`` (0-based): ``(1 - t / max_steps) ** power`` with ``t`` = ``s``
    rounded down to a multiple of ``step`` (0 from ``max_steps`` on).

    ``step=10`` is the release's ``PolynomialLR(step_size=10)``, stepped with the 1-based iteration after
    each update: iteration ``i`` runs at ``base * (1 - 10 * floor((i - 1) / 10) / max_steps) ** power``.
    """
    if max_steps < 1:
        raise ConfigError(f"seg.max_steps={max_steps}; the poly schedule needs at least 1 step")
    if step < 1:
        raise ConfigError(f"seg.poly_step={step}; give 1 (every step) or more")

    def factor(s: int) -> float:
        t = (s // step) * step
        return max(0.0, 1.0 - min(t, max_steps) / max_steps) ** power

    return factor


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) logits to ``size`` (no-op when already that size)."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmenterTask(pl.LightningModule):
    """Trains ``model`` (logits at output stride 8, or at the input size) on ``{"image", "mask"}`` batches of
    pseudo labels (plus ``label``, the (B, 20) image labels, for ``loss="release_v2"``).

    Validation batches hold ground truth at the original size (``{"image", "mask"}``, batch 1): the
    logits are upsampled to the mask, and a 21x21 confusion matrix (255 ignored) over the whole
    split gives ``val/miou`` (plus precision, recall, pixel accuracy).
    ``model`` must offer ``param_groups(lr, weight_decay)`` (``wsss.models.deeplab.DeepLab``).
    ``network`` (its ``_target_`` spec) is kept in the checkpoint so later stages rebuild it.
    ``channels_last``: ``wsss.tasks.speed``.
    """

    def __init__(
        self,
        model: nn.Module,
        network: dict[str, Any] | None = None,
        num_classes: int = 21,
        optimizer: dict[str, Any] | None = None,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        max_steps: int = 20000,
        loss: str = "ce",
        poly_step: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(num_classes)
        self.optimizer_spec = dict(optimizer or DEEPLAB_SGD)
        self.lr = base_lr(self.optimizer_spec, "seg.task.optimizer")
        self.weight_decay = float(weight_decay)
        self.poly_power = float(poly_power)
        self.max_steps = int(max_steps)
        if loss not in LOSSES:
            raise ConfigError(f"seg.loss={loss!r}; choose one of {', '.join(LOSSES)}")
        self.loss_name = str(loss)
        self.poly_step = int(poly_step)
        poly_factor(self.max_steps, self.poly_power, self.poly_step)  # checks the values now
        self.channels_last = bool(channels_last)
        use_channels_last(self.model, self.channels_last)
        self.save_hyperparameters(
            {
                "num_classes": self.num_classes,
                "optimizer": self.optimizer_spec,
                "weight_decay": self.weight_decay,
                "poly_power": self.poly_power,
                "max_steps": self.max_steps,
                "loss": self.loss_name,
                "poly_step": self.poly_step,
                "channels_last": self.channels_last,
                "network": dict(network or {}),
            }
        )
        self.val_confusion = ConfusionMatrix(self.num_classes)
        self.last_val_step = -1  # optimizer step of the latest full validation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) upsampled to the input size."""
        return resize_logits(self.model(channels_last_input(images, self.channels_last)), images.shape[-2:])

    def loss(self, outputs: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """Sum over the outputs of the cross-entropy (255 ignored) at the label size."""
        if not bool((masks != IGNORE_INDEX).any()):
            return sum(o.sum() for o in outputs) * 0.0  # nothing labelled: no gradient, no NaN
        total = outputs[0].new_zeros(())
        for logits in outputs:
            total = total + F.cross_entropy(
                resize_logits(logits, masks.shape[-2:]).float(), masks, ignore_index=IGNORE_INDEX
            )
        return total

    def release_v2_loss(
        self, outputs: Sequence[torch.Tensor], masks: torch.Tensor, image_labels: torch.Tensor
    ) -> torch.Tensor:
        """The release's two-term DeepLab-V2 loss (module doc); ``image_labels`` (B, 20) without background."""

        if not bool((masks != IGNORE_INDEX).any()):
            return sum(o.sum() for o in outputs) * 0.0  # the release would give NaN here; skip the batch
        cls = with_background(image_labels.float())
        return release_deeplabv2_loss([o.float() for o in outputs], masks, cls)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"].long()
        out = self.model(channels_last_input(images, self.channels_last))
        outputs = list(out) if isinstance(out, list | tuple) else [out]
        if self.loss_name == "release_v2":
            if "label" not in batch:
                raise ConfigError(
                    "seg.loss=release_v2 needs the image labels in the batch (WSSSDataModule(image_labels=True))"
                )
            loss = self.release_v2_loss(outputs, masks, batch["label"])
        else:
            loss = self.loss(outputs, masks)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"].long()
        logits = resize_logits(self.model(channels_last_input(images, self.channels_last)), masks.shape[-2:])
        self.val_confusion.update(logits.argmax(dim=1), masks)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_confusion.compute()
        self.val_confusion.reset()
        if not self.trainer.sanity_checking:
            self.last_val_step = self.global_step
        for key in ("miou", "precision", "recall", "pixel_accuracy"):
            # the confusion matrix is already summed over ranks, so every rank holds the same value
            self.log(f"val/{key}", scores[key], prog_bar=key == "miou", sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.model.param_groups(self.lr, self.weight_decay)
        optimizer = build_optimizer(self.optimizer_spec, groups, "seg.task.optimizer")
        factor = poly_factor(self.max_steps, self.poly_power, self.poly_step)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
