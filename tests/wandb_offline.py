"""Read what an offline W&B run wrote: the records of its ``run-<id>.wandb`` file, for tests.

wandb (0.31) no longer ships a Python reader of its transaction log, so this is one, of the format its
``datastore`` documents: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of
LevelDB-log records (CRC32, length, type FULL/FIRST/MIDDLE/LAST), each payload a protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    out, pos, pending = [], 7, b""
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        pos += RECORD_HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


def _items(items: Any) -> dict[str, Any]:
    """``{key: value}`` of history/summary/config items (nested keys joined with '.')."""
    out = {}
    for item in items:
        key = item.key or ".".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    """What one offline run holds: its run record, config, history rows, files and artifacts."""

    folder: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)

    @property
    def outputs(self) -> list[Any]:
        """Artifacts the run logged as its own (``log_artifact``), tables excluded."""
        return [a for a in self.artifacts if not a.use_after_commit and a.type != "run_table"]

    @property
    def inputs(self) -> list[Any]:
        """Artifacts the run used (``use_artifact``; offline: logged with ``use_after_commit``)."""
        return [a for a in self.artifacts if a.use_after_commit]

    def scalars(self) -> dict[str, Any]:
        """Every history key with its last value."""
        out: dict[str, Any] = {}
        for row in self.history:
            out |= row
        return out


def read_run(folder: str | Path) -> OfflineRun:
    """The records of ``<folder>/run-<id>.wandb`` (an ``offline-run-...`` folder)."""
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    (log_file,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for payload in _payloads(log_file.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            run.config |= {k: v for k, v in _items(record.run.config.update).items() if k != "_wandb"}
        elif kind == "config":
            run.config |= _items(record.config.update)
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run


def references(artifact: Any) -> dict[str, str]:
    """``{path in the artifact: reference}`` of every entry of an artifact's manifest."""
    return {entry.path: entry.ref for entry in artifact.manifest.contents}
