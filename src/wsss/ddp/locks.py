"""A lock that works across the hosts of a cluster on a shared (network) file system.

``fcntl.flock`` on NFS is per host on some servers and unsupported on others, so it cannot keep two nodes
from making the same store entry at once. ``HostLock`` relies only on what NFS (v3 and later) does
atomically: creating a file with ``O_CREAT | O_EXCL`` and ``rename``. The lock file holds
``{host, pid, token, beat, time}``; while it is held, a thread of the holder rewrites it (``beat`` + 1)
every ``heartbeat_s``. A waiter takes the lock over when the holder stopped heartbeating: on its own host
as soon as the holder's process is gone, from any host once it has seen no new ``beat`` for ``timeout_s``
(measured with the waiter's own clock, so the hosts' clocks need not agree).

Why not the ``filelock`` package (in the lock file as a dependency of other packages): its ``FileLock`` is
``fcntl``-based (the NFS problem above), and its ``SoftFileLock`` (``O_EXCL``) has no heartbeat, so a
holder killed by the scheduler leaves a lock that every later job waits on forever.

``WSSS_HOST`` overrides the host name (tests pretend to be two hosts with it).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST_ENV = "WSSS_HOST"


def host_name() -> str:
    """This machine's name (``$WSSS_HOST`` when set)."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def unique_suffix() -> str:
    """``<host>-<pid>``: part of every temporary name, so writers on different hosts never collide."""
    return f"{host_name()}-{os.getpid()}".replace("/", "_")


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock file's record, or None when it is absent or being rewritten."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostLock:
    """An exclusive lock on ``path`` (a file), safe across hosts; see the module docstring.

    ``timeout_s``: a holder whose heartbeat has not moved for that long is considered dead.
    ``heartbeat_s``: how often the holder rewrites the file (well below ``timeout_s``).
    """

    def __init__(
        self, path: str | Path, timeout_s: float = 120.0, heartbeat_s: float = 10.0, poll_s: float = 1.0
    ) -> None:
        if heartbeat_s >= timeout_s:
            raise ValueError(f"heartbeat_s={heartbeat_s} must be below timeout_s={timeout_s}")
        self.path = Path(path)
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self.poll_s = float(poll_s)
        self.token = ""
        self.lost = False
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- holding ---------------------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return {
            "host": host_name(),
            "pid": os.getpid(),
            "token": self.token,
            "beat": self._beat,
            "time": time.time(),
        }

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        self.token, self._beat = token, 0
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self._record()))
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read_holder(self.path)
            if holder is not None and holder.get("token") != self.token:
                self.lost = True
                log.error(
                    "the lock %s was taken over by host %s pid %s while this process held it (its heartbeat "
                    "was late by more than %.0f s: a stalled file system or a suspended process)",
                    self.path,
                    holder.get("host"),
                    holder.get("pid"),
                    self.timeout_s,
                )
                return
            self._beat += 1
            tmp = self.path.with_name(f".tmp-{self.path.name}-{unique_suffix()}")
            tmp.write_text(json.dumps(self._record()))
            os.replace(tmp, self.path)

    def acquire(self) -> float:
        """Wait for the lock and take it; returns the seconds waited."""
        started = time.monotonic()
        seen: tuple[Any, Any] | None = None
        seen_at = started
        announced = False
        while not self._try_create():
            holder = read_holder(self.path)
            now = time.monotonic()
            if holder is None:  # removed or being rewritten: try again at once
                time.sleep(min(self.poll_s, 0.05))
                continue
            beat = (holder.get("token"), holder.get("beat"))
            if beat != seen:
                seen, seen_at = beat, now
            if not announced:
                log.info(
                    "waiting for %s: held by host %s pid %s", self.path, holder.get("host"), holder.get("pid")
                )
                announced = True
            gone = holder.get("host") == host_name() and not _process_alive(int(holder.get("pid", -1)))
            if gone or now - seen_at >= self.timeout_s:
                why = "its process is gone" if gone else f"no heartbeat for {now - seen_at:.0f} s"
                if self._take_over(holder, why):
                    continue  # try to create it now
            time.sleep(self.poll_s)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lock-heartbeat {self.path.name}", daemon=True
        )
        self._thread.start()
        return time.monotonic() - started

    def _take_over(self, holder: dict[str, Any], why: str) -> bool:
        """Remove a dead holder's lock file (only if it still holds that holder's token)."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another waiter is taking it over; a guard left by a dead one expires
            try:
                if time.time() - guard.stat().st_mtime > self.timeout_s:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            current = read_holder(self.path)
            if current is None or current.get("token") != holder.get("token"):
                return False
            if current.get("beat") != holder.get("beat"):
                return False  # it beat again: alive after all
            log.warning(
                "taking over the lock %s of host %s pid %s: %s",
                self.path,
                holder.get("host"),
                holder.get("pid"),
                why,
            )
            self.path.unlink(missing_ok=True)
            return True
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop heartbeating and remove the lock file (unless another process has taken it over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = read_holder(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> HostLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_live(path: str | Path, timeout_s: float, now: float | None = None) -> bool:
    """Whether ``path`` is a lock a live process may hold, judged once (``gc``): present, and either written
    less than ``timeout_s`` ago by any host's clock, or held on this host by a running process. Clock skew
    between hosts only makes this more cautious when ``timeout_s`` is generous."""
    holder = read_holder(Path(path))
    if holder is None:
        return Path(path).exists()  # being rewritten right now
    if holder.get("host") == host_name() and _process_alive(int(holder.get("pid", -1))):
        return True
    now = time.time() if now is None else now
    try:
        written = max(float(holder.get("time", 0.0)), Path(path).stat().st_mtime)
    except FileNotFoundError:
        return False
    return now - written < timeout_s
