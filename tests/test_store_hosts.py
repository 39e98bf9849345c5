"""The store on a file system shared by several hosts: two processes that pretend to be two hosts
(``WSSS_HOST``) make a missing artifact once; gc leaves an entry under a live lock alone; a dead holder's
lock is taken over after its timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsss.ddp.locks import HostLock, read_holder
from wsss.pipeline.store import Store

# One "job" on one "host": make <store>/cls/abc unless it is complete, under the entry's lock.
JOB = r"""
import os, sys, time
from pathlib import Path
from wsss.pipeline.store import Store
store = Store(sys.argv[1], lock_timeout_s=float(sys.argv[2]), heartbeat_s=0.2)
entry = store.entry("cls", "abc")
with store.lock("cls", "abc"):
    if (entry / ".complete").is_file():
        print("reused", flush=True)
    else:
        entry.mkdir(parents=True, exist_ok=True)
        with open(Path(sys.argv[1]) / "computed.log", "a") as fh:
            fh.write(os.environ["WSSS_HOST"] + "\n")
        time.sleep(float(sys.argv[3]))  # the work; the other host waits meanwhile
        (entry / ".complete").write_text("")
        print("computed", flush=True)
"""

# A holder that takes the lock, says so, then hangs until it is killed (it never releases it).
HOLDER = r"""
import sys, time
from wsss.pipeline.store import Store
store = Store(sys.argv[1], lock_timeout_s=float(sys.argv[2]), heartbeat_s=0.2)
with store.lock("cls", "abc"):
    (store.entry("cls", "abc")).mkdir(parents=True, exist_ok=True)
    print("holding", flush=True)
    time.sleep(600)
"""


def _start(code: str, host: str, *args: object) -> subprocess.Popen:
    env = {**os.environ, "WSSS_HOST": host}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before printing {text!r}: {proc.stdout.read()}")
    raise AssertionError(f"no {text!r} within {timeout} s")


def test_two_hosts_needing_the_same_artifact_compute_it_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    procs = [_start(JOB, host, root, 30, 2.0) for host in ("node-a", "node-b")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip().splitlines()[-1] for o in outs) == ["computed", "reused"], outs
    assert len((root / "computed.log").read_text().splitlines()) == 1  # made once, by one host
    assert not (root / "cls" / "abc.lock").exists()  # released
    assert [p.name for p in (root / "cls").iterdir()] == ["abc"]  # no temporary file left behind


def test_gc_under_a_live_lock_removes_nothing_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    root = tmp_path / "store"
    timeout = 3.0
    holder = _start(HOLDER, "node-a", root, timeout)
    try:
        _wait_for_line(holder, "holding")
        store = Store(root, lock_timeout_s=timeout, heartbeat_s=0.2)
        lock = root / "cls" / "abc.lock"
        record = read_holder(lock)
        assert record["host"] == "node-a" and record["pid"] == holder.pid
        time.sleep(1.0)
        assert read_holder(lock)["beat"] > record["beat"]  # the holder heartbeats
        # an unfinished entry nobody links, under a live lock: gc keeps it even with no age limit
        assert store.gc(tmp_path, min_age_s=0) == []
        assert (root / "cls" / "abc").is_dir() and lock.is_file()
        holder.kill()  # the holder dies (node lost): its lock stays behind, silent
        holder.wait(timeout=30)
        os.environ["WSSS_HOST"] = "node-b"  # this process is another host: it cannot see node-a's pids
        try:
            waiter = HostLock(lock, timeout_s=timeout, heartbeat_s=0.2, poll_s=0.1)
            waited = waiter.acquire()
            try:
                assert timeout <= waited < timeout + 10.0, waited
                taken = json.loads(lock.read_text())
                assert taken["host"] == "node-b" and taken["pid"] == os.getpid()
            finally:
                waiter.release()
        finally:
            del os.environ["WSSS_HOST"]
        assert not lock.exists()
        removed = store.gc(tmp_path, min_age_s=0)  # no lock now: the unused entry goes
        assert [(e.stage, e.identity) for e in removed] == [("cls", "abc")]
        assert not (root / "cls" / "abc").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_gc_keeps_a_recently_made_or_linked_entry(tmp_path: Path) -> None:
    from wsss.pipeline.store import link

    root = tmp_path / "runs" / "store"
    entry = root / "cls" / "abc"
    entry.mkdir(parents=True)
    (entry / ".complete").write_text("")
    store = Store(root)
    assert store.gc(tmp_path / "runs") == []  # made a moment ago: a job elsewhere may be linking it
    old = time.time() - 7200
    for path in (entry / ".complete", entry):
        os.utime(path, (old, old))
    link(tmp_path / "runs" / "e" / "cls", entry)  # a job links it now (and touches it) ...
    (tmp_path / "runs" / "e" / "cls").unlink()  # ... and its experiment is deleted at once
    assert store.gc(tmp_path / "runs") == []
    os.utime(entry, (old, old))
    assert [e.identity for e in store.gc(tmp_path / "runs")] == ["abc"]


def test_heartbeat_must_be_below_the_lock_timeout() -> None:
    from wsss.errors import ConfigError

    with pytest.raises(ConfigError, match=r"store\.heartbeat_s=10 must be below store\.lock_timeout_s=5"):
        Store("x", lock_timeout_s=5, heartbeat_s=10)
