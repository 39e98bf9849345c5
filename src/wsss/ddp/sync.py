"""DDP at run time: barriers, a sharding sampler, and process-group clean-up."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset, DistributedSampler


def end_job() -> None:
    """Destroy the process group a job created, so the next job starts clean."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class ReleaseSpawnedProcessGroup(Callback):
    """In a worker Lightning spawned (``ddp_spawn``), destroy the process group when the Trainer is done.

    Left to interpreter shutdown, gloo's threads can abort a worker whose work is finished ("terminate
    called without an active exception"), which fails the run. Runs after the strategy's own teardown;
    script-launched DDP (``ddp``) keeps its group for the next stage (``end_job`` ends it).
    """

    def teardown(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

        launcher = getattr(trainer.strategy, "launcher", None)
        if isinstance(launcher, _MultiProcessingLauncher) and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every DDP rank (no-op without an initialised process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class ShardSampler(DistributedSampler):
    """This rank's share of a dataset: indices ``rank, rank + world_size, ...``, no padding, no repeats.

    Unlike Lightning's predict sampler it accepts ranks with nothing to do (fewer images left than
    ranks, as when resuming). The rank is read when iterating, so the sampler can be built before the
    processes start.
    """

    def __init__(self, dataset: Dataset) -> None:  # no super().__init__: it needs a process group
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        self.shuffle = False
        self.epoch = 0

    def _indices(self) -> range:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        return range(rank, self.size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
