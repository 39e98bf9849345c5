"""The experiment folder: the contract between stages, and atomic file writing.

Every stage writes under ``<paths.runs>/<exp>/<Stage.folder>``. When it starts it records what it is
making (``identity.json``, see ``wsss.pipeline.provenance``); when it finishes it writes ``metrics.json``, the
record again, and then a ``.complete`` marker (always last). A reader accepts an upstream folder only
when it is complete and its record matches what the current config expects; otherwise it refuses,
naming the keys that differ (or the command that makes the missing artifact). Files are written under
a temporary name and renamed into place, so a later stage never reads a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wsss.constants import COMPLETE, METRICS, RECORD, TMP_PREFIX
from wsss.ddp.locks import unique_suffix
from wsss.pipeline.registry import stage as declaration
from wsss.pipeline.store import link

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (so writers that look at it still work) and starts
    with ``.tmp-`` so it is never mistaken for a finished file.
    """

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = (
        tempfile.mkstemp(  # host and pid in the name: no two writers on a shared file system collide
            prefix=f"{TMP_PREFIX}{path.stem}-{unique_suffix()}-", suffix=path.suffix, dir=path.parent
        )
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; finished files get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder: str | Path) -> int:
    """Remove the half-written files (``TMP_PREFIX``) a killed run left anywhere under ``folder``; the
    runner calls it once a stage has finished on every rank. Returns how many it removed."""
    removed = 0
    for tmp in Path(folder).rglob(f"{TMP_PREFIX}*"):
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN), recursively."""
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Comma-separated ``rows`` under ``header``, written atomically (floats with 6 decimals; pass
    other formats as strings; a cell holding a comma or a quote is quoted). The one CSV writer of wsss."""

    def cell(value: Any) -> str:
        return f"{value:.6f}" if isinstance(value, float) else str(value)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([cell(v) for v in row] for row in rows)
    write_text(path, buf.getvalue())


PER_CLASS_CSV = "per_class_iou.csv"
"""The per-class IoU file of a stage that scores segmentations (maps, pseudo, eval): ``class,iou`` rows."""


def write_per_class_iou(path: str | Path, per_class: dict[str, float]) -> None:
    """``class,iou`` rows, written atomically (a class absent from truth and prediction: nan)."""
    write_csv(path, ("class", "iou"), per_class.items())


def read_per_class_iou(path: str | Path) -> list[list[Any]]:
    """The ``[class, iou]`` rows of a file ``write_per_class_iou`` wrote."""
    rows = Path(path).read_text().splitlines()[1:]
    return [[name, float(iou)] for name, iou in (row.rsplit(",", 1) for row in rows if row)]


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, numpy scalars converted, NaN/inf written as null)."""
    text = json.dumps(
        _finite(_to_plain(data)), indent=2, sort_keys=True, allow_nan=False, default=_to_builtin
    )
    write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.generic | np.ndarray) or (hasattr(value, "item") and not isinstance(value, str)):
        return _to_builtin(value)
    return value


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):  # torch scalars
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


class Experiment:
    """One experiment folder: ``<runs>/<exp>``, holding one sub-folder per stage (``Stage.folder``).

    With a ``store`` (``wsss.pipeline.store``) each stage sub-folder is a link to the store entry of the artifact's
    identity (``attach``); without one it is a plain folder.
    """

    def __init__(self, root: str | Path, runs: str | Path | None = None, store: Any = None) -> None:
        self.root = Path(root)
        self.runs = Path(runs) if runs is not None else self.root.parent
        self.store = store

    @property
    def name(self) -> str:
        """The ``exp`` value that selects this folder under ``paths.runs``."""
        try:
            return self.root.relative_to(self.runs).as_posix()
        except ValueError:
            return self.root.name

    def stage_dir(self, stage: str) -> Path:
        """Folder of a pipeline stage (its ``Stage.folder``)."""

        return self.root / declaration(stage).folder

    def is_complete(self, stage: str) -> bool:
        return (self.stage_dir(stage) / COMPLETE).is_file()

    def record(self, stage: str) -> dict[str, Any] | None:
        """The ``identity.json`` of a stage folder, or None."""
        path = self.stage_dir(stage) / RECORD
        return read_json(path) if path.is_file() else None

    def metrics(self, stage: str) -> dict[str, Any]:
        path = self.stage_dir(stage) / METRICS
        return read_json(path) if path.is_file() else {}

    def begin(self, stage: str, record: dict[str, Any] | None = None) -> Path:
        """Create a stage folder for (re)writing, drop any stale ``.complete``, record what it makes."""
        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPLETE).unlink(missing_ok=True)
        if record is not None:
            write_json(folder / RECORD, record)
        return folder

    def finish(self, stage: str, metrics: dict[str, Any], record: dict[str, Any] | None = None) -> Path:
        """Write ``metrics.json`` (and the record), then the ``.complete`` marker (always last).

        Non-finite values are written as null and listed under ``non_finite`` (JSON has no NaN)."""
        folder = self.stage_dir(stage)
        non_finite = sorted(
            k
            for k, v in metrics.items()
            if isinstance(v, float | np.floating) and not math.isfinite(float(v))
        )
        write_json(folder / METRICS, {**metrics, "non_finite": non_finite} if non_finite else metrics)
        if record is not None:
            write_json(folder / RECORD, record)
        write_text(folder / COMPLETE, "")
        return folder

    def stored(self, stage: str, identity: str) -> bool:
        """Whether the store holds a complete artifact of ``stage`` with ``identity``."""
        return self.store is not None and (self.store.entry(stage, identity) / COMPLETE).is_file()

    def attach(self, stage: str, identity: str) -> Path:
        """Point this experiment's stage folder at the store entry of ``identity`` (made if absent)."""

        entry = self.store.entry(stage, identity)
        entry.mkdir(parents=True, exist_ok=True)
        link(self.stage_dir(stage), entry)
        return entry

    def detach(self, stage: str) -> None:
        """This experiment stops using its artifact of ``stage`` (a stored entry stays in the store)."""
        folder = self.stage_dir(stage)
        if folder.is_symlink():
            folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)

    def clear(self, stage: str) -> None:
        """Remove everything in a stage's folder (a stored entry's files too) and the folder itself."""
        folder = self.stage_dir(stage)
        if folder.is_symlink():
            shutil.rmtree(folder.resolve(), ignore_errors=True)
        self.detach(stage)
