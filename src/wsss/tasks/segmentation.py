"""Training of a DeepLab segmenter on pseudo labels (``stage=seg``), validated by mIoU on ground truth.

DeepLab v2's recipe: cross-entropy ignoring 255; SGD (momentum 0.9, weight decay 5e-4) with the
model's parameter groups (classifier 10x weights / 20x biases); poly learning rate
``lr * (1 - step / max_steps) ** power`` stepped after every optimizer step; optionally multi-scale
inputs (scales 1, 0.75, 0.5 and their element-wise max, a loss on each, summed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from wsss.constants import IGNORE_INDEX
from wsss.metrics import ConfusionMatrix


def poly_factor(max_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """LR factor at optimizer step ``s``: ``(1 - s / max_steps) ** power`` (0 from ``max_steps`` on)."""
    if max_steps < 1:
        raise ValueError(f"seg.max_steps={max_steps}; the poly schedule needs at least 1 step")

    def factor(step: int) -> float:
        return max(0.0, 1.0 - min(step, max_steps) / max_steps) ** power

    return factor


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) logits to ``size`` (no-op when already that size)."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def multi_scale_logits(model: nn.Module, images: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
    """DeepLab v2 multi-scale inputs: logits of each scaled input, all at the size of the first scale's
    logits, followed by their element-wise max."""
    outputs: list[torch.Tensor] = []
    for s in scales:
        x = images
        if float(s) != 1.0:
            x = F.interpolate(images, scale_factor=float(s), mode="bilinear", align_corners=False)
        logits = model(x)
        outputs.append(logits if not outputs else resize_logits(logits, outputs[0].shape[-2:]))
    if len(outputs) > 1:
        outputs.append(torch.stack(outputs).amax(dim=0))
    return outputs


class SegmenterTask(pl.LightningModule):
    """Trains ``model`` (logits at output stride 8) on ``{"image", "mask"}`` batches of pseudo labels.

    Validation batches hold ground truth at the original size (``{"image", "mask"}``, batch 1): the
    logits are upsampled to the mask, and a 21x21 confusion matrix (255 ignored) over the whole
    split gives ``val/miou`` (plus precision, recall, pixel accuracy).
    ``model`` must offer ``param_groups(lr, weight_decay)`` (``wsss.models.deeplab.DeepLab``).
    ``network`` (its ``_target_`` spec) is kept in the checkpoint so later stages rebuild it.
    """

    def __init__(
        self,
        model: nn.Module,
        network: dict[str, Any] | None = None,
        num_classes: int = 21,
        lr: float = 2.5e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        max_steps: int = 20000,
        multi_scale_inputs: bool = False,
        input_scales: Sequence[float] = (1.0, 0.75, 0.5),
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(num_classes)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.poly_power = float(poly_power)
        self.max_steps = int(max_steps)
        self.multi_scale_inputs = bool(multi_scale_inputs)
        self.input_scales = [float(s) for s in input_scales] if multi_scale_inputs else [1.0]
        if self.input_scales[0] != 1.0:
            raise ValueError(
                f"seg.input_scales={list(input_scales)} must start with 1.0 (the full-size input)"
            )
        self.save_hyperparameters(
            {
                "num_classes": self.num_classes,
                "lr": self.lr,
                "momentum": self.momentum,
                "weight_decay": self.weight_decay,
                "poly_power": self.poly_power,
                "max_steps": self.max_steps,
                "multi_scale_inputs": self.multi_scale_inputs,
                "input_scales": self.input_scales,
                "network": dict(network or {}),
            }
        )
        self.val_confusion = ConfusionMatrix(self.num_classes)
        self.last_val_step = -1  # optimizer step of the latest full validation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) upsampled to the input size."""
        return resize_logits(self.model(images), images.shape[-2:])

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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"].long()
        outputs = multi_scale_logits(self.model, images, self.input_scales)
        loss = self.loss(outputs, masks)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"].long()
        logits = resize_logits(self.model(images), masks.shape[-2:])
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
        optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_factor(self.max_steps, self.poly_power))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
