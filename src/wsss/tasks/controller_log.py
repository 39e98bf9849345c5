"""The learnable DRS controller G over training: per layer, its mean and its spread over channels.

``G = sigmoid(FC(GAP(X)))`` depends on the image, so it is measured on the training batches themselves:
a forward hook on every learnable DRS module recomputes G for the batch (no gradient) and adds its
batch mean per channel to the epoch's sums. At the end of every training epoch ``ControllerLog``
turns them into one row per layer: the mean of G over the epoch's images and channels, the standard
deviation over channels of the per-channel means (do channels learn different caps?), and the smallest
and largest channel mean. The first training batch (before any update) is row ``epoch = -1``: G at
initialisation (~0.5, as the FC starts at N(0, 0.01)).

The rows go to the stage's logger (``controller/<layer>_mean``, ``controller/<layer>_sd``, stepped
at the optimizer step) and to ``<stage folder>/controller.csv`` (rewritten atomically every epoch; a
resumed run keeps the rows of the epochs it does not repeat). ``final_summary`` reads the last
epoch's rows back for ``metrics.json`` and the demo.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from wsss.method.drs import DRS
from wsss.pipeline.artifacts import write_text

CSV = "controller.csv"
COLUMNS = ("epoch", "step", "layer", "channels", "g_mean", "g_sd", "g_min", "g_max")
"""``controller.csv``'s columns: epoch (-1: the first batch, before any update), optimizer step at the
end of that epoch, layer name, channel count, and G's mean, sd over channels, min and max channel mean."""


def learnable_controllers(model: nn.Module) -> dict[str, DRS]:
    """The learnable DRS modules of ``model`` by layer name: the block (``layer3``), with ``.1``, ``.2``
    .. when a block holds several (VGG-16's layer1 has two convs), in forward order."""
    found = [m for m in model.modules() if isinstance(m, DRS) and m.mode == "learnable"]
    per_block: dict[str, int] = {}
    for m in found:
        per_block[m.block or "drs"] = per_block.get(m.block or "drs", 0) + 1
    names: dict[str, DRS] = {}
    seen: dict[str, int] = {}
    for m in found:
        block = m.block or "drs"
        seen[block] = seen.get(block, 0) + 1
        names[block if per_block[block] == 1 else f"{block}.{seen[block]}"] = m
    return names


class ControllerLog(pl.Callback):
    """Logs G per learnable DRS layer every training epoch (module doc); ``out_dir``: the stage folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / CSV
        self.rows: list[dict[str, Any]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._hooks: list[Any] = []
        self._first = False

    # -- measuring -------------------------------------------------------------------------------
    def _hook(self, name: str):
        def record(module: DRS, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not module.training:
                return
            with torch.no_grad():
                x = torch.relu(inputs[0].detach())
                g = module.fc(x.mean(dim=(2, 3)))
                total = g.float().sum(dim=0)
            self._sums[name] = self._sums.get(name, torch.zeros_like(total)) + total
            self._counts[name] = self._counts.get(name, 0) + int(g.shape[0])

        return record

    def _rows(self, epoch: int, step: int, reset: bool = True) -> list[dict[str, Any]]:
        """One row per layer from the sums so far; ``reset``: start new sums (the epoch's end)."""
        rows = []
        for name, total in self._sums.items():
            per_channel = (total / max(1, self._counts[name])).cpu()
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "layer": name,
                    "channels": int(per_channel.numel()),
                    "g_mean": float(per_channel.mean()),
                    "g_sd": float(per_channel.std(unbiased=False)),
                    "g_min": float(per_channel.min()),
                    "g_max": float(per_channel.max()),
                }
            )
        if reset:
            self._sums, self._counts = {}, {}
        return rows

    # -- Lightning hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        controllers = learnable_controllers(pl_module)
        self._hooks = [m.register_forward_hook(self._hook(name)) for name, m in controllers.items()]
        start = int(trainer.current_epoch)
        self.rows = [r for r in read_rows(self.path) if int(r["epoch"]) < start] if start > 0 else []
        self._first = start == 0 and bool(controllers)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._first:  # G of the first batch, measured in its forward pass (before the update)
            self.rows += self._rows(-1, 0, reset=False)  # the batch counts in epoch 0 too
            self._first = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._counts:
            return
        rows = self._rows(int(trainer.current_epoch), int(trainer.global_step))
        self.rows += rows
        metrics = {f"controller/{r['layer']}_{k}": r[f"g_{k}"] for r in rows for k in ("mean", "sd")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=int(trainer.global_step))
        if trainer.is_global_zero:
            write_rows(self.path, self.rows)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """``controller.csv`` (``COLUMNS``), written to a temporary name and renamed."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6f}" if k.startswith("g_") else row[k]) for k in COLUMNS})
    write_text(Path(path), buffer.getvalue())


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``controller.csv`` (numbers as numbers); none when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ints = ("epoch", "step", "channels")
    return [
        {k: (int(v) if k in ints else v if k == "layer" else float(v)) for k, v in r.items()} for r in rows
    ]


def final_summary(path: str | Path) -> dict[str, dict[str, float]]:
    """Per layer, G at initialisation and in the last epoch: ``{layer: {start, mean, sd, min, max}}``."""
    rows = read_rows(path)
    if not rows:
        return {}
    last = max(int(r["epoch"]) for r in rows)
    start = {r["layer"]: r["g_mean"] for r in rows if int(r["epoch"]) == -1}
    return {
        r["layer"]: {
            "start": start.get(r["layer"], float("nan")),
            "mean": r["g_mean"],
            "sd": r["g_sd"],
            "min": r["g_min"],
            "max": r["g_max"],
        }
        for r in rows
        if int(r["epoch"]) == last
    }
