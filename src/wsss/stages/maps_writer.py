"""Writing localization maps for a whole split: a predictor under ``trainer.predict`` and a file writer.

``MapPredictor`` runs the network batch-wise (inference mode) and computes each image's maps of its
present classes (``wsss.method.localization``); ``MapWriter`` stores one ``<id>.npz`` per image as soon as its
batch is done (``wsss.data.maps_io``), so memory does not grow with the number of images and a killed
run resumes where it stopped. ``write_maps`` ties both together and shards the work over DDP ranks.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from wsss.constants import NUM_CLASSES
from wsss.data.maps_io import MAP_DTYPES, QUANTIZE, maps_file_problem, save_maps
from wsss.ddp.sync import ShardSampler, barrier
from wsss.errors import ConfigError
from wsss.method.localization import PAPER_MATHS, MapMaths, present_class_maps

log = logging.getLogger(__name__)

MAP_SIZES = ("input", "original")
"""Maps are made at the network input's size (after any squash) or at the original image size."""


@dataclass
class MapRecord:
    """The maps of one image: present class indices (0-based) and their maps (K, H, W) on the CPU."""

    image_id: str
    classes: np.ndarray
    maps: np.ndarray


def collate_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of samples: images of different sizes cannot be stacked."""
    return samples


class MapPredictor(pl.LightningModule):
    """Wraps a score-map network for ``trainer.predict``; batches samples of equal image size.

    ``size="original"`` makes each image's maps at its original size (samples carry ``size``).
    """

    def __init__(
        self,
        net: nn.Module,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        maths: MapMaths = PAPER_MATHS,
        size: str = "input",
    ) -> None:
        super().__init__()
        if size not in MAP_SIZES:
            raise ConfigError(f"maps size={size!r}; choose one of {', '.join(MAP_SIZES)}")
        self.net = net
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        self.maths = maths
        self.size = size
        # a resumed run may leave fewer images than ranks: a rank with nothing to do is fine
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[MapRecord]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, sample in enumerate(batch):
            groups[tuple(sample["image"].shape)].append(i)
        records: list[MapRecord | None] = [None] * len(batch)
        for members in groups.values():
            images = torch.stack([batch[i]["image"] for i in members])
            labels = torch.stack([torch.as_tensor(batch[i]["label"]) for i in members]).to(images.device)
            sizes = (
                [tuple(int(v) for v in batch[i]["size"]) for i in members]
                if self.size == "original"
                else None
            )
            per_image = present_class_maps(
                self.net, images, labels, self.scales, self.flip, self.maths, sizes
            )
            for i, (present, maps) in zip(members, per_image, strict=True):
                records[i] = MapRecord(str(batch[i]["id"]), present.cpu().numpy(), maps.float().cpu().numpy())
        return [r for r in records if r is not None]


class MapWriter(BasePredictionWriter):
    """Writes each batch's maps as ``<out_dir>/<id>.npz`` (atomic) from a few background threads.

    At most ``max_pending`` files wait in memory; all writes are flushed before predict ends.
    """

    def __init__(
        self,
        out_dir: str | Path,
        dtype: str = "uint8",
        quantize: str = "round",
        threads: int = 2,
        max_pending: int = 64,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.dtype = dtype
        self.quantize = quantize
        self.threads = max(0, int(threads))
        self.max_pending = max(1, int(max_pending))
        self.written = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def _save(self, record: MapRecord) -> None:
        path = self.out_dir / f"{record.image_id}.npz"
        save_maps(path, record.classes, record.maps, self.dtype, self.quantize)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: list[MapRecord],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for record in prediction:
            if self.threads == 0:
                self._save(record)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="maps-writer")
                self._pending.append(self._pool.submit(self._save, record))
                while len(self._pending) > self.max_pending:
                    self._pending.popleft().result()
            self.written += 1

    def flush(self) -> None:
        """Wait for every queued file; re-raise the first write error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.flush()


def pending_indices(
    ids: Sequence[str], out_dir: str | Path, overwrite: bool = False, num_classes: int = NUM_CLASSES
) -> list[int]:
    """Dataset indices whose ``<id>.npz`` is missing from ``out_dir`` or cannot be read back (a damaged
    file is made again, with a warning); all of them with ``overwrite``."""
    out_dir = Path(out_dir)
    todo = []
    for i, image_id in enumerate(ids):
        path = out_dir / f"{image_id}.npz"
        problem = None if overwrite or not path.is_file() else maps_file_problem(path, num_classes)
        if problem:
            log.warning("%s: %s; making it again", path, problem)
        if overwrite or problem or not path.is_file():
            todo.append(i)
    return todo


def write_maps(
    trainer: pl.Trainer,
    predictor: MapPredictor,
    dataset: Dataset,
    out_dir: str | Path,
    dtype: str = "uint8",
    quantize: str = "round",
    batch_size: int = 8,
    overwrite: bool = False,
    num_workers: int = 0,
    writer_threads: int = 2,
    writer: MapWriter | None = None,
) -> dict[str, int]:
    """Write ``<out_dir>/<id>.npz`` for every image of ``dataset`` (which has ``.ids``) lacking one.

    The images still to do are listed once, before any rank writes, and split across DDP ranks by
    ``ShardSampler`` (no repeats), so each id is written exactly once. Nothing is kept in memory after
    its batch. ``writer`` replaces the default ``MapWriter(out_dir, dtype, quantize, writer_threads)``.
    Returns this process's counts: images, skipped (done before), written.
    """
    if dtype not in MAP_DTYPES:
        raise ConfigError(f"maps dtype={dtype!r} is not supported; choose one of {', '.join(MAP_DTYPES)}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"maps quantize={quantize!r} is not supported; choose one of {', '.join(QUANTIZE)}")
    ids = [str(i) for i in dataset.ids]  # type: ignore[attr-defined]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    voc = getattr(dataset, "voc", None)  # the StageDataset's split: its class count bounds the stored ids
    todo = pending_indices(ids, out_dir, overwrite, int(getattr(voc, "num_classes", NUM_CLASSES)))
    barrier()  # every rank has listed the pending ids before anyone writes
    written = 0
    if todo:
        subset = Subset(dataset, todo)
        loader = DataLoader(
            subset,
            batch_size=int(batch_size),
            sampler=ShardSampler(subset),
            num_workers=int(num_workers),
            collate_fn=collate_samples,
            persistent_workers=False,
        )
        writer = writer or MapWriter(out_dir, dtype=dtype, quantize=quantize, threads=writer_threads)
        trainer.callbacks.append(writer)
        try:
            trainer.predict(predictor, loader, return_predictions=False)
        finally:
            if writer in trainer.callbacks:
                trainer.callbacks.remove(writer)
        written = writer.written
    barrier()  # every rank has flushed its files
    return {"images": len(ids), "skipped": len(ids) - len(todo), "written": written}
