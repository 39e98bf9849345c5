"""A training loader that resumes mid-epoch exactly: the same batches, the same random numbers.

Lightning saves the state of a loader that has ``state_dict`` / ``load_state_dict`` in every checkpoint
(``loops.fit_loop.state_dict.combined_loader``) and hands it back before the resumed epoch starts; it
then counts the epoch's batches on from where the checkpoint was taken, expecting the loader to yield
only the rest. ``ResumableLoader`` does that for a shuffled single-process training loader:

- ``ResumableSampler`` draws its permutation exactly as ``torch.utils.data.RandomSampler`` does (a seed
  from torch's global generator when the epoch starts), so an uninterrupted run sees the same order as
  with ``shuffle=True``; its state is that seed, and the resumed epoch skips the samples already trained on;
- the state also holds the random generators as they are when the checkpoint is written (torch's,
  numpy's, Python's and the dataset's augmentation generators, ``StageDataset.random_state``): a
  checkpoint is written after a step (or after validation), before the next batch is drawn, so the
  resumed run restores them right where the next batch is loaded and continues with the same numbers.

With ``data.num_workers > 0`` the augmentation generators live in the worker processes, which a
checkpoint cannot reach: the resumed epoch keeps the order and the step, but draws new augmentations
(logged). Under DDP Lightning's ``DistributedSampler`` is used instead (``WSSSDataModule``), whose
interrupted epoch restarts from its first batch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


def generator_states() -> dict[str, Any]:
    """torch's (CPU and CUDA), numpy's and Python's global random states (tensors and plain values only:
    checkpoints are read with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_generator_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableSampler(Sampler[int]):
    """``RandomSampler(dataset)``'s order (same draws), which can start part-way through an epoch."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.seed: int | None = None  # of the current epoch's permutation
        self.yielded = 0
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.size

    def resume(self, seed: int, skip: int) -> None:
        """The next epoch is the one of ``seed``, without its first ``skip`` samples."""
        self._resume = {"seed": int(seed), "skip": int(skip)}

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            seed, skip = self._resume["seed"], self._resume["skip"]
            self._resume = None
        else:
            seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        self.seed, self.yielded = seed, skip
        generator = torch.Generator()
        generator.manual_seed(seed)
        order = torch.randperm(self.size, generator=generator).tolist()
        for index in order[skip:]:
            self.yielded += 1
            yield index


class ResumableLoader(DataLoader):
    """A shuffled training ``DataLoader`` (``ResumableSampler``) with Lightning's loader-state interface."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        kwargs.pop("shuffle", None)
        if kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs["sampler"] = ResumableSampler(len(dataset))  # else Lightning rebuilt it (overfit_batches)
        super().__init__(dataset, **kwargs)
        self._restore: dict[str, Any] | None = None
        self.batches = 0  # batches handed out in the current epoch (Lightning takes one per step)

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()  # as DataLoader does: this draws a seed from torch's generator
        restore, self._restore = self._restore, None
        self.batches = 0
        if restore is not None:
            # the interrupted run's next batch is this epoch's next one: give it the random numbers it had
            set_generator_states(restore["generators"])
            restore_dataset = getattr(self.dataset, "set_random_state", None)
            if restore.get("dataset") is not None and restore_dataset is not None:
                restore_dataset(restore["dataset"])
            self.batches = int(restore["batches"])
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands and the random generators now (called when a checkpoint is written)."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return {"seed": None}
        dataset_state = getattr(self.dataset, "random_state", None)
        return {
            "seed": sampler.seed,
            "batches": self.batches,
            "samples": self.batches * int(self.batch_size or 1),
            "generators": generator_states(),
            "dataset": dataset_state() if dataset_state is not None and self.num_workers == 0 else None,
            "exact": self.num_workers == 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch with the next epoch's iteration (Lightning calls this on resume)."""
        sampler = self.sampler
        if state.get("seed") is None or not isinstance(sampler, ResumableSampler):
            return  # saved before the first epoch started, or the loader was rebuilt with another sampler
        sampler.resume(state["seed"], state["samples"])
        self._restore = state  # applied when the epoch's iteration starts (see __iter__)
        if not state.get("exact", True) or self.num_workers > 0:
            log.warning(
                "resuming mid-epoch with data.num_workers > 0: the same samples in the same order from batch "
                "%d on, with new augmentation draws (the worker processes' generators are not in a checkpoint)",
                state["batches"],
            )
