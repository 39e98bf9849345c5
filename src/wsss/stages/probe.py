"""``stage=probe``: a seconds-long check that the Trainer set-up works (devices, DDP, logging).

Trains a one-layer model on random data for a few steps and records, from every rank, which
rank ran and how many samples it saw, gathered on all ranks. Use it to check a cluster set-up:
``python train.py stage=probe trainer=ddp``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wsss.pipeline.runner import StageContext
from wsss.tasks.trainer import build_trainer


class _ProbeModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.samples_seen = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.samples_seen += x.shape[0]
        loss = nn.functional.mse_loss(self.layer(x).squeeze(1), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, out = ctx.cfg, ctx.out
    generator = torch.Generator().manual_seed(int(cfg.seed))
    x = torch.randn(32, 4, generator=generator)
    data = DataLoader(TensorDataset(x, x.sum(1)), batch_size=4)
    module = _ProbeModule()
    trainer = build_trainer(cfg, "probe", out, max_epochs=1, checkpoint=False)
    trainer.fit(module, data)
    report = torch.tensor([trainer.global_rank, module.samples_seen], dtype=torch.float32)
    gathered = module.all_gather(report).reshape(-1, 2)
    metrics = {
        "world_size": trainer.world_size,
        "ranks": sorted(int(r) for r in gathered[:, 0].tolist()),
        "samples_per_rank": [int(s) for s in gathered[:, 1].tolist()],
        "loss": float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))),
    }
    return metrics
