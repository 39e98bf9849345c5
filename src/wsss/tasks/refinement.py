"""The refinement network's training (DRS-dagger): regress the classifier's localization maps with MSE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from wsss.tasks.build import build_optimizer
from wsss.tasks.speed import channels_last_input, use_channels_last


def keep_top_class(maps: torch.Tensor) -> torch.Tensor:
    """Zero every class but each pixel's highest one in (B, C, H, W) maps (the release's target)."""
    return maps * (maps == maps.amax(dim=1, keepdim=True)).to(maps.dtype)


PAPER_ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-4}
"""The paper's refiner optimizer (Adam, lr 1e-4)."""


class RefinerTask(pl.LightningModule):
    """Trains ``model`` (a score-map network, no DRS) so that its upsampled output matches the maps.

    Batches are dicts with ``image`` (B, 3, H, W) and ``maps`` (B, C, H, W) dense maps in [0, 1].
    The optimizer spec (``wsss.tasks.build``; the paper's Adam 1e-4) with a MultiStepLR schedule
    stepped per epoch. ``channels_last``: ``wsss.tasks.speed``.
    """

    def __init__(
        self,
        model: nn.Module,
        network: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        lr_steps: Sequence[int] = (5, 10),
        lr_gamma: float = 0.1,
        top_class_only: bool = False,
        align_corners: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_spec = dict(optimizer or PAPER_ADAM)
        self.lr_steps = [int(s) for s in lr_steps]
        self.lr_gamma = float(lr_gamma)
        self.top_class_only = bool(top_class_only)
        self.align_corners = bool(align_corners)
        self.channels_last = bool(channels_last)
        use_channels_last(self.model, self.channels_last)
        self.save_hyperparameters(
            {
                "network": dict(network or {}),
                "optimizer": self.optimizer_spec,
                "lr_steps": self.lr_steps,
                "lr_gamma": self.lr_gamma,
                "top_class_only": self.top_class_only,
                "align_corners": self.align_corners,
                "channels_last": self.channels_last,
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Refined maps N (B, C, H, W): the network's scores upsampled bilinearly to the input size
        (``align_corners``: the release's grid)."""
        scores = self.model(channels_last_input(images, self.channels_last))
        return F.interpolate(
            scores, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )

    def target(self, maps: torch.Tensor) -> torch.Tensor:
        return keep_top_class(maps) if self.top_class_only else maps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, maps = batch["image"], batch["maps"]
        if maps.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"refine batch: maps {tuple(maps.shape[-2:])} and image {tuple(images.shape[-2:])} differ in size; "
                "the DataModule must resize and augment the maps together with the image"
            )
        pred = self(images)
        loss = F.mse_loss(pred.float(), self.target(maps.float()))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optimizer_spec, self.model.parameters(), "refine.task.optimizer")
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=self.lr_steps, gamma=self.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
