"""Localization-map inference and the per-image map writer.

For a class score map F (output stride 8) of an image, the localization map of a class c present in
the image label is ``M_c = ReLU(F_c) / (max ReLU(F_c) + 1e-5)``; absent classes are not stored.
Multi-scale inference resizes the (already squashed or original-size) input to every scale, upsamples
each scale's F bilinearly to the input size, normalises it by its own per-class max and fuses the
scales (and, with ``flip``, the mirrored views, each normalised on its own) by element-wise max.

``MapPredictor`` runs the network batch-wise under Lightning's ``trainer.predict`` (inference mode);
``MapWriter`` stores one ``<id>.npz`` per image as soon as its batch is done (``wsss.data.maps_io``),
so memory does not grow with the number of images and a killed run resumes where it stopped.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from wsss.data.maps_io import MAP_DTYPES, dense_maps, load_maps, save_maps
from wsss.figures import overlay_heatmap, save_grid

EPS = 1e-5
"""Added to the per-class max before dividing (as the release does), so an all-zero map stays 0."""

ABSOLUTE_MIN = 16
"""Scales >= this are absolute square sizes in pixels; smaller ones are factors of the input size."""


def scale_sizes(scales: Sequence[float], base_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Input sizes (h, w) for each scale: a factor (< 16) of ``base_hw`` or an absolute square side."""
    if not scales:
        raise ValueError("maps.scales is empty; give at least one scale, e.g. [1.0] or [256, 320, 384]")
    sizes = []
    for s in scales:
        s = float(s)
        if s <= 0:
            raise ValueError(f"maps.scales holds {s}; scales must be positive factors or sizes in pixels")
        if s >= ABSOLUTE_MIN:
            sizes.append((int(round(s)), int(round(s))))
        else:
            sizes.append((max(1, int(round(base_hw[0] * s))), max(1, int(round(base_hw[1] * s)))))
    return sizes


def normalize_maps(scores: torch.Tensor) -> torch.Tensor:
    """``ReLU(F) / (max ReLU(F) + 1e-5)`` per image and class over the spatial dims of (B, C, H, W)."""
    pos = F.relu(scores)
    return pos / (pos.amax(dim=(-2, -1), keepdim=True) + EPS)


def view_scores(
    model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> list[torch.Tensor]:
    """Raw class scores (B, C, h, w) of every view: each scale, and its mirror image with ``flip``.

    Each scale runs as one batch (both orientations together); mirrored scores are flipped back.
    """
    base = tuple(images.shape[-2:])
    views = []
    for size in scale_sizes(scales, base):
        x = images if size == base else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        scores = model(x).float()
        if flip:
            plain, mirrored = scores.chunk(2)
            views += [plain, mirrored.flip(-1)]
        else:
            views.append(scores)
    return views


def fuse_views(views: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Upsample every view to ``size``, normalise each by its own per-class max, fuse by max."""
    fused: torch.Tensor | None = None
    for scores in views:
        maps = normalize_maps(F.interpolate(scores, size=size, mode="bilinear", align_corners=False))
        fused = maps if fused is None else torch.maximum(fused, maps)
    if fused is None:
        raise ValueError("no views to fuse")
    return fused


def multiscale_maps(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused localization maps (B, C, H, W) in [0, 1] at the size of ``images`` (B, 3, H, W).

    With ``labels`` (B, C) absent classes are 0.
    """
    fused = fuse_views(view_scores(model, images, scales, flip), tuple(images.shape[-2:]))
    if labels is not None:
        fused = fused * (labels[:, :, None, None] > 0).to(fused.dtype)
    return fused


def present_class_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (present class indices (K,), their fused maps (K, H, W)).

    Same values as ``multiscale_maps``, but only the K present classes of each image are upsampled
    and normalised (about 1.5 of 20 on VOC), which is most of the work after the forward passes.
    """
    views = view_scores(model, images, scales, flip)
    size = tuple(images.shape[-2:])
    out = []
    for i in range(images.shape[0]):
        present = torch.nonzero(labels[i] > 0).flatten()
        if present.numel() == 0:
            out.append((present, images.new_zeros((0, *size))))
            continue
        maps = fuse_views([v[i : i + 1, present] for v in views], size)[0]
        out.append((present, maps))
    return out


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
    """Wraps a score-map network for ``trainer.predict``; batches samples of equal image size."""

    def __init__(self, net: nn.Module, scales: Sequence[float] = (1.0,), flip: bool = False) -> None:
        super().__init__()
        self.net = net
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        # a resumed run may leave fewer images than ranks: a rank with nothing to do is fine
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def on_predict_start(self) -> None:
        if self.device.type == "cpu":  # batched activations exceed glibc's mmap threshold: keep them
            from wsss.cpu_memory import retain_freed_memory

            retain_freed_memory()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return multiscale_maps(self.net, images, self.scales, self.flip, labels)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[MapRecord]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, sample in enumerate(batch):
            groups[tuple(sample["image"].shape)].append(i)
        records: list[MapRecord | None] = [None] * len(batch)
        for members in groups.values():
            images = torch.stack([batch[i]["image"] for i in members])
            labels = torch.stack([torch.as_tensor(batch[i]["label"]) for i in members]).to(images.device)
            per_image = present_class_maps(self.net, images, labels, self.scales, self.flip)
            for i, (present, maps) in zip(members, per_image, strict=True):
                records[i] = MapRecord(
                    image_id=str(batch[i]["id"]),
                    classes=present.cpu().numpy(),
                    maps=maps.float().cpu().numpy(),
                )
        return [r for r in records if r is not None]


class MapWriter(BasePredictionWriter):
    """Writes each batch's maps as ``<out_dir>/<id>.npz`` (atomic) from a few background threads.

    At most ``max_pending`` files wait in memory; all writes are flushed before predict ends.
    """

    def __init__(self, out_dir: str | Path, dtype: str = "uint8", threads: int = 2, max_pending: int = 64):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.dtype = dtype
        self.threads = max(0, int(threads))
        self.max_pending = max(1, int(max_pending))
        self.written = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def _save(self, record: MapRecord) -> None:
        save_maps(self.out_dir / f"{record.image_id}.npz", record.classes, record.maps, self.dtype)

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


def pending_indices(ids: Sequence[str], out_dir: str | Path, overwrite: bool = False) -> list[int]:
    """Dataset indices whose ``<id>.npz`` is missing from ``out_dir`` (all of them with ``overwrite``)."""
    out_dir = Path(out_dir)
    return [i for i, image_id in enumerate(ids) if overwrite or not (out_dir / f"{image_id}.npz").is_file()]


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


def write_maps(
    trainer: pl.Trainer,
    net: nn.Module,
    dataset: Dataset,
    out_dir: str | Path,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    dtype: str = "uint8",
    batch_size: int = 8,
    overwrite: bool = False,
    num_workers: int = 0,
    writer_threads: int = 2,
    writer: MapWriter | None = None,
) -> dict[str, int]:
    """Write ``<out_dir>/<id>.npz`` for every image of ``dataset`` (which has ``.ids``) lacking one.

    The images still to do are listed once, before any rank writes, and split across DDP ranks by
    ``ShardSampler`` (no repeats), so each id is written exactly once. Nothing is kept in
    memory after its batch. ``writer`` replaces the default ``MapWriter(out_dir, dtype, writer_threads)``.
    Returns this process's counts: images, skipped (done before), written.
    """
    if dtype not in MAP_DTYPES:
        raise ValueError(f"maps.dtype={dtype!r} is not supported; choose one of {', '.join(MAP_DTYPES)}")
    ids = [str(i) for i in dataset.ids]  # type: ignore[attr-defined]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_indices(ids, out_dir, overwrite)
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
        writer = writer or MapWriter(out_dir, dtype=dtype, threads=writer_threads)
        trainer.callbacks.append(writer)
        try:
            trainer.predict(MapPredictor(net, scales, flip), loader, return_predictions=False)
        finally:
            if writer in trainer.callbacks:
                trainer.callbacks.remove(writer)
        written = writer.written
    barrier()  # every rank has flushed its files
    return {"images": len(ids), "skipped": len(ids) - len(todo), "written": written}


def load_state(path: str | Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The network weights of a Lightning checkpoint (keys under ``prefix``, prefix removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the stage that writes it first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise KeyError(f"{path}: no weights under '{prefix}' (keys start with {sorted(state)[:3]})")
    return picked


def _heat(maps_dir: Path, image_id: str) -> np.ndarray | None:
    path = Path(maps_dir) / f"{image_id}.npz"
    if not path.is_file():
        return None
    classes, maps = load_maps(path)
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=np.float32)
    return dense_maps(classes, maps).max(axis=0)


def figure1(
    image_ids: Sequence[str],
    voc_dataset: Any,
    map_dirs: Mapping[str, str | Path],
    out_path: str | Path,
    cell: int = 160,
) -> Path:
    """A Figure-1-style grid: one row per image, columns image | one heat map per map set.

    ``map_dirs`` maps a column title (e.g. "CAM", "DRS", "DRS†") to a folder of ``<id>.npz``; folders
    that do not exist are left out, and an image missing from a folder gets a grey panel. The heat map
    is the max over the image's present classes, resized to the image.
    """
    columns = {title: Path(d) for title, d in map_dirs.items() if Path(d).is_dir()}
    index = {image_id: i for i, image_id in enumerate(voc_dataset.ids)}
    rows = []
    for image_id in image_ids:
        if image_id not in index:
            raise KeyError(f"figure1: image {image_id!r} is not in the dataset's split")
        image = np.asarray(voc_dataset.image(index[image_id]), dtype=np.uint8)
        row = [image]
        for folder in columns.values():
            heat = _heat(folder, image_id)
            row.append(np.full_like(image, 128) if heat is None else overlay_heatmap(image, heat))
        rows.append(row)
    if not rows:
        raise ValueError("figure1: no image ids given")
    rows = [[_fit(panel, cell) for panel in row] for row in rows]
    return save_grid(rows, out_path, titles=["image", *columns], cell=cell)


def _fit(panel: np.ndarray, cell: int) -> np.ndarray:
    """Scale a panel so its longer side fills the cell (small toy images are enlarged too)."""
    h, w = panel.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.BILINEAR))
