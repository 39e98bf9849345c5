"""Two CPU processes (gloo, ddp_spawn) share the maps writing: every id is written exactly once."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from wsss.data.maps_io import load_maps
from wsss.ddp.sync import ReleaseSpawnedProcessGroup
from wsss.stages.maps_writer import MapPredictor, MapRecord, MapWriter, write_maps

NUM_CLASSES = 20


class Scores(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].repeat(1, NUM_CLASSES, 1, 1)


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.ids = [f"id_{i:02d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        label = torch.zeros(NUM_CLASSES)
        label[i % NUM_CLASSES] = 1
        image = torch.full((3, 8, 8), float(i + 1))
        return {"image": image, "label": label, "id": self.ids[i]}


class LoggingWriter(MapWriter):
    """Appends "<rank> <id>" to a log for every file it writes (O_APPEND: safe across processes)."""

    def __init__(self, out_dir: Path, log: Path) -> None:
        super().__init__(out_dir, dtype="uint8", threads=2)
        self.log_path = log
        self.rank = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.rank = trainer.global_rank

    def _save(self, record: MapRecord) -> None:
        super()._save(record)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{self.rank} {record.image_id}\n".encode())
        finally:
            os.close(fd)


def _two_ranks() -> pl.Trainer:
    # Lightning leaves the port of a finished spawn run in os.environ; reusing it can hit a socket
    # still in TIME_WAIT, so every run picks a fresh one.
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ReleaseSpawnedProcessGroup()],  # as build_trainer adds to every stage's Trainer
    )


def test_two_ranks_write_every_id_exactly_once(tmp_path: Path) -> None:
    out, log = tmp_path / "maps", tmp_path / "written.log"
    n = 11  # odd: the ranks get 6 and 5 images, no padding repeats
    write_maps(
        _two_ranks(), MapPredictor(Scores()), Images(n), out, batch_size=2, writer=LoggingWriter(out, log)
    )
    lines = [line.split() for line in log.read_text().splitlines()]
    per_id = Counter(image_id for _, image_id in lines)
    assert per_id == Counter({f"id_{i:02d}": 1 for i in range(n)})
    per_rank = Counter(rank for rank, _ in lines)
    assert per_rank == Counter({"0": 6, "1": 5})
    assert sorted(p.name for p in out.iterdir()) == [f"id_{i:02d}.npz" for i in range(n)]
    classes, maps = load_maps(out / "id_03.npz")
    assert classes.tolist() == [3] and maps.shape == (1, 8, 8)

    # resume with one image left (fewer than ranks): rank 1 has nothing to do, nothing else is rewritten
    (out / "id_04.npz").unlink()
    log.unlink()
    write_maps(
        _two_ranks(), MapPredictor(Scores()), Images(n), out, batch_size=2, writer=LoggingWriter(out, log)
    )
    assert log.read_text() == "0 id_04\n"
    assert (out / "id_04.npz").is_file()
