"""Seconds per training step and per inference image, measured on the machine at hand.

``fit_seconds_per_step`` runs a LightningModule under the stages' Trainer for a few steps
and times the steady state (after ``warmup`` steps: allocator, kernel choice, worker start-up);
``loop_seconds_per_step`` times a plain training loop the same way, so the two compare. These are the
measurement functions of the cost model (``wsss.bench.estimate``) and of the benchmarks under bench/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from wsss.pipeline.artifacts import write_json
from wsss.tasks.trainer import build_trainer


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where a measurement ran: platform, CPU model, cores, torch threads and version, device, python."""
    import os
    import platform

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


Clock = Callable[[], float]


class StepTimer(Callback):
    """Records ``clock()`` (default ``time.perf_counter``) at the start of every training batch and at
    the end of the last."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.end: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _sync(pl_module.device)
        self.starts.append(self.clock())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _sync(pl_module.device)
        self.end = self.clock()

    def seconds_per_step(self, warmup: int) -> float:
        """Mean seconds of the batches after the first ``warmup`` (data loading included)."""
        if self.end is None or len(self.starts) <= warmup:
            raise RuntimeError(
                f"StepTimer saw {len(self.starts)} batches; it needs more than warmup={warmup} "
                "(is the loader shorter than warmup + steps?)"
            )
        return (self.end - self.starts[warmup]) / (len(self.starts) - warmup)


def fit_seconds_per_step(
    task: pl.LightningModule,
    data: Any,
    steps: int,
    warmup: int = 2,
    clock: Clock = time.perf_counter,
    callbacks: list[Callback] | None = None,
    **trainer_kwargs: Any,
) -> float:
    """Seconds per optimizer step of ``task`` trained on ``data`` (a DataLoader or a LightningDataModule)
    for ``warmup + steps`` batches by the Trainer the stages get (``wsss.tasks.trainer.build_trainer``, with its
    callbacks and its CPU allocator setting), without logger, validation, checkpoints or progress bar.

    ``trainer_kwargs`` (accelerator, precision, benchmark, ...) override those defaults; ``clock`` is wall
    time unless given (``time.process_time``: CPU seconds, steadier on a shared machine).
    Assumes one batch per optimizer step (no gradient accumulation).
    """
    import tempfile

    from omegaconf import OmegaConf

    if steps < 1:
        raise ValueError(f"steps={steps}; measure at least one step")
    timer = StepTimer(clock)
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": warmup + steps,
        "max_epochs": -1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs)
    cfg = OmegaConf.create({"trainer": kwargs})
    with tempfile.TemporaryDirectory(prefix="wsss-measure-") as out:
        trainer = build_trainer(
            cfg, "measure", out, logger=False, checkpoint=False, callbacks=[*(callbacks or []), timer]
        )
        if isinstance(data, pl.LightningDataModule):
            trainer.fit(task, datamodule=data)
        else:
            trainer.fit(task, train_dataloaders=data)
    return timer.seconds_per_step(warmup)


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``loader`` without end (a new epoch whenever it runs out)."""
    while True:
        yield from loader


def loop_seconds_per_step(
    step: Callable[[Any], object],
    loader: Iterable[Any],
    steps: int,
    warmup: int = 2,
    device: torch.device | None = None,
    clock: Clock = time.perf_counter,
) -> float:
    """Seconds per call of ``step(batch)`` over batches of ``loader``, after ``warmup`` calls
    (data loading included, as in ``fit_seconds_per_step``)."""
    if steps < 1:
        raise ValueError(f"steps={steps}; measure at least one step")
    batches = cycle(loader)
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    start = clock()
    for _ in range(steps):
        step(next(batches))
    _sync(device)
    return (clock() - start) / steps


def seconds_per_image(
    run: Callable[[Any], object],
    batches: Iterable[Any],
    images_in: Callable[[Any], int],
    warmup: int = 1,
    device: torch.device | None = None,
    clock: Clock = time.perf_counter,
) -> float:
    """Seconds per image of ``run(batch)`` (inference) over ``batches`` after ``warmup`` batches;
    ``images_in(batch)`` counts a batch's images."""
    items = list(batches)
    if len(items) <= warmup:
        raise ValueError(f"{len(items)} batches; give more than warmup={warmup}")
    for batch in items[:warmup]:
        run(batch)
    _sync(device)
    start = clock()
    images = 0
    for batch in items[warmup:]:
        run(batch)
        images += images_in(batch)
    _sync(device)
    return (clock() - start) / images


class PhaseTimer(Callback):
    """Records when every training, validation and predict batch ends (``time.perf_counter``) and writes
    them to ``path`` (JSON) when the Trainer is done: ``{"train": [[epoch, t], ...], "val": [[pass, t], ...],
    "predict": [[images, t], ...], "start", "end"}``.

    Added to a stage through the config (``callbacks.bench_timer``), so the cost model times the stages
    themselves; ``wsss.bench.trial`` turns the times into seconds per step, per image and per epoch.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.times: dict[str, Any] = {"train": [], "val": [], "predict": [], "start": None, "end": None}
        self._val_pass = -1

    def _now(self, pl_module: pl.LightningModule) -> float:
        _sync(pl_module.device)
        return time.perf_counter()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.times["start"] is None:
            self.times["start"] = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.times["train"].append([trainer.current_epoch, self._now(pl_module)])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._val_pass += 1

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: ANN001
        self.times["val"].append([self._val_pass, self._now(pl_module)])

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self.times["predict"].append([len(batch), self._now(pl_module)])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from pathlib import Path

        self.times["end"] = self._now(pl_module)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.times)
