"""The experiment-folder contract between stages.

Every stage writes under ``<paths.runs>/<exp>/<stage dir>`` and finishes by writing
``metrics.json`` and then a ``.complete`` marker. A stage refuses to start when an input
stage lacks ``.complete`` and names the command that produces it. Files are written under a
temporary name and renamed into place, so a later stage never reads a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

COMPLETE = ".complete"
METRICS = "metrics.json"

STAGE_DIRS: dict[str, str] = {
    "cls": "cls",
    "maps_cls": "maps/cls",
    "refine": "refine",
    "maps_refine": "maps/refine",
    "pseudo": "pseudo",
    "seg": "seg",
    "eval": "eval",
    "predict": "predict",
    "probe": "probe",
}
"""Pipeline stage name -> folder inside the experiment folder."""

PRODUCER_ARGS: dict[str, str] = {
    "cls": "stage=cls",
    "maps_cls": "stage=maps maps.source=cls",
    "refine": "stage=refine",
    "maps_refine": "stage=maps maps.source=refine",
    "pseudo": "stage=pseudo",
    "seg": "stage=seg",
    "eval": "stage=eval",
    "predict": "stage=predict",
    "probe": "stage=probe",
}
"""Pipeline stage name -> the train.py arguments that produce its folder."""


_UMASK = os.umask(0)
os.umask(_UMASK)


class MissingArtifactError(RuntimeError):
    """An upstream stage's output is absent or unfinished."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (so writers that look at it still work) and starts
    with ``.tmp-`` so it is never mistaken for a finished file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; finished files get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, numpy scalars converted)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_to_builtin) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):  # torch scalars
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


class Experiment:
    """One experiment folder: ``<runs>/<exp>``, holding one sub-folder per stage."""

    def __init__(
        self, root: str | Path, runs: str | Path | None = None, command_prefix: str = "python train.py"
    ) -> None:
        self.root = Path(root)
        self.runs = Path(runs) if runs is not None else self.root.parent
        self.command_prefix = command_prefix

    @property
    def name(self) -> str:
        """The ``exp`` value that selects this folder under ``paths.runs``."""
        try:
            return self.root.relative_to(self.runs).as_posix()
        except ValueError:
            return self.root.name

    def stage_dir(self, stage: str) -> Path:
        """Folder of a pipeline stage (see ``STAGE_DIRS``)."""
        if stage not in STAGE_DIRS:
            raise KeyError(f"unknown stage {stage!r}; known stages: {', '.join(STAGE_DIRS)}")
        return self.root / STAGE_DIRS[stage]

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / COMPLETE).is_file()

    def producer_command(self, stage: str) -> str:
        return f"{self.command_prefix} {PRODUCER_ARGS[stage]} exp={self.name} paths.runs={self.runs}"

    def require(self, stage: str) -> Path:
        """Return the folder of a finished upstream stage, or raise naming the command that makes it."""
        folder = self.stage_dir(stage)
        if not (folder / COMPLETE).is_file():
            state = "is unfinished (no .complete marker)" if folder.exists() else "does not exist"
            raise MissingArtifactError(
                f"Upstream artifact {folder} {state}. Produce it first with:\n"
                f"    {self.producer_command(stage)}"
            )
        return folder

    def begin(self, stage: str) -> Path:
        """Create a stage folder for (re)writing and drop any stale ``.complete`` marker."""
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPLETE).unlink(missing_ok=True)
        return folder

    def finish(self, stage: str, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` then the ``.complete`` marker (the marker is always last)."""
        folder = self.stage_dir(stage)
        write_json(folder / METRICS, metrics)
        write_text(folder / COMPLETE, "")
        return folder

    def metrics(self, stage: str) -> dict[str, Any]:
        path = self.stage_dir(stage) / METRICS
        return read_json(path) if path.is_file() else {}
