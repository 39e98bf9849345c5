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

from wsss.constants import COMPLETE, RECORD
from wsss.pipeline.artifacts import Experiment, atomic_path, read_json, save_npz, write_json
from wsss.pipeline.config import run_id


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
        "from wsss.pipeline.artifacts import atomic_path\n"
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


def test_non_finite_metrics_are_written_as_null(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"loss": float("nan"), "per_class": [1.0, float("inf")]})
    assert read_json(tmp_path / "m.json") == {"loss": None, "per_class": [1.0, None]}  # valid JSON


def test_begin_and_finish_keep_the_record_and_the_marker_last(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "runs" / "group" / "e1", runs=tmp_path / "runs")
    assert exp.name == "group/e1" and exp.stage_dir("maps_cls") == tmp_path / "runs/group/e1/maps/cls"
    record = {"stage": "cls", "identity": "abc", "config": {}, "upstream": {}}
    folder = exp.begin("cls", record)
    assert read_json(folder / RECORD) == record and not exp.is_complete("cls")
    exp.finish("cls", {"accuracy": 0.75}, record)
    assert exp.is_complete("cls") and exp.metrics("cls") == {"accuracy": 0.75} and exp.record("cls") == record
    exp.begin("cls")  # a rerun invalidates the old marker
    assert not (folder / COMPLETE).exists()


def test_run_ids_are_unique_within_one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.pipeline.config

    monkeypatch.setattr(wsss.pipeline.config.secrets, "token_hex", lambda n: "00" * n)  # no luck involved
    ids = set()
    for _ in range(50):
        monkeypatch.delenv("WSSS_RUN_ID", raising=False)
        ids.add(run_id())
    assert len(ids) == 50
    assert run_id() == run_id()  # stable within a process (DDP ranks inherit it)


def test_a_figure_that_fails_half_way_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every figure (Figure 1, pseudo labels, segmentation, cls validation) is written by save_grid."""
    import numpy as np
    from PIL import Image

    from wsss.data.figures import save_grid

    target = tmp_path / "figures" / "figure1.png"
    save_grid([[np.zeros((4, 4, 3), np.uint8)]], target)
    before = target.read_bytes()

    def disk_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_grid([[np.full((4, 4, 3), 255, np.uint8)]], target)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["figure1.png"]
