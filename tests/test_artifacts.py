"""The experiment-folder contract: atomic writes, .complete markers, upstream checks, unique names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsss.artifacts import (
    COMPLETE,
    Experiment,
    MissingArtifactError,
    atomic_path,
    read_json,
    save_npz,
    write_json,
)
from wsss.config import run_id


def test_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "maps" / "a.npz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_killed_writer_leaves_no_file_under_final_name(tmp_path: Path) -> None:
    target = tmp_path / "big.npz"
    started = tmp_path / "started"
    code = (
        "import sys, time, pathlib\n"
        "from wsss.artifacts import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    fh = open(tmp, 'wb'); fh.write(b'x' * 1000); fh.flush()\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started.exists()
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "started"]
    assert all(name.startswith(".tmp-") for name in leftovers)


def test_atomic_helpers_round_trip(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"miou": np.float32(0.5)})
    assert read_json(tmp_path / "m.json") == {"miou": 0.5}
    save_npz(tmp_path / "x.npz", a=np.arange(3))
    assert np.load(tmp_path / "x.npz")["a"].tolist() == [0, 1, 2]
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) != oct(0o600)


def test_missing_upstream_names_the_command(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "runs" / "group" / "e1", runs=tmp_path / "runs")
    with pytest.raises(MissingArtifactError) as err:
        exp.require("maps_cls")
    text = str(err.value)
    assert "does not exist" in text
    assert f"python train.py stage=maps maps.source=cls exp=group/e1 paths.runs={tmp_path / 'runs'}" in text


def test_unfinished_upstream_is_refused_until_complete(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "e1")
    folder = exp.begin("cls")
    (folder / "checkpoints").mkdir()
    with pytest.raises(MissingArtifactError, match=r"(?s)unfinished \(no \.complete marker\).*stage=cls"):
        exp.require("cls")
    exp.finish("cls", {"accuracy": 0.75})
    assert exp.require("cls") == folder
    assert exp.metrics("cls") == {"accuracy": 0.75}
    exp.begin("cls")  # a rerun invalidates the old marker
    assert not (folder / COMPLETE).exists()


def test_run_ids_are_unique_within_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = set()
    for _ in range(50):
        monkeypatch.delenv("WSSS_RUN_ID", raising=False)
        ids.add(run_id())
    assert len(ids) == 50
    assert run_id() == run_id()  # stable within a process (DDP ranks inherit it)
