"""The shared artifact store: every stage output lives once, under its identity.

    python -m wsss.pipeline.store list [--runs runs]        # entries: stage, identity, size, the experiments using them
    python -m wsss.pipeline.store gc [--runs runs] [--dry-run] [--min-age 3600]   # remove the entries no experiment uses

With ``store.enabled`` (the default) a stage's artifact is made in ``${paths.runs}/store/<stage>/<identity>/``
and the experiment folder refers to it: ``runs/<exp>/<stage folder>`` is a (relative) symlink to the
entry, so ``runs/<exp>/`` looks as it always did. A job whose stage identity is already complete in the
store reuses it; two jobs that need the same missing artifact at once make it once: the first holds the
entry's lock (``<identity>.lock``, a ``wsss.ddp.locks.HostLock``: safe across the hosts of a cluster on NFS,
taken over after ``store.lock_timeout_s`` when its holder stopped heartbeating), the second waits, then
reuses it. Entries whose identities differ in any defining key are different folders, so nothing is ever
shared between them. ``gc`` never removes an entry whose lock is live or that was made or linked less
than ``--min-age`` seconds ago (a job on another node may be about to link it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wsss.constants import COMPLETE
from wsss.ddp.locks import HostLock, is_live, unique_suffix
from wsss.errors import ConfigError

log = logging.getLogger(__name__)

STORE = "store"
"""Folder of the store under ``paths.runs`` (an experiment may not be called that)."""


@dataclass
class Entry:
    """One stored artifact."""

    stage: str
    identity: str
    path: Path
    users: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())


class Store:
    """The entries under ``root`` (``${paths.runs}/store``)."""

    def __init__(self, root: str | Path, lock_timeout_s: float = 120.0, heartbeat_s: float = 10.0) -> None:
        if heartbeat_s >= lock_timeout_s:
            raise ConfigError(
                f"store.heartbeat_s={heartbeat_s} must be below store.lock_timeout_s={lock_timeout_s} "
                "(a live holder must rewrite its lock before waiters give up on it)"
            )
        self.root = Path(root)
        self.lock_timeout_s = float(lock_timeout_s)
        self.heartbeat_s = float(heartbeat_s)

    def entry(self, stage: str, identity: str) -> Path:
        return self.root / stage / identity

    def lock_path(self, stage: str, identity: str) -> Path:
        return self.root / stage / f"{identity}.lock"

    @contextmanager
    def lock(self, stage: str, identity: str) -> Iterator[HostLock]:
        """Hold the entry's lock (another process making the same artifact, on any host, waits here)."""
        held = HostLock(self.lock_path(stage, identity), self.lock_timeout_s, self.heartbeat_s)
        waited = held.acquire()
        if waited >= 1.0:
            log.info("%s %s is free after %.0f s", stage, identity, waited)
        try:
            yield held
        finally:
            held.release()

    def entries(self, runs: str | Path | None = None) -> list[Entry]:
        """Every entry, with the experiment folders under ``runs`` whose links point at it."""
        found: dict[Path, Entry] = {}
        if self.root.is_dir():
            for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for path in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                    found[path.resolve()] = Entry(stage_dir.name, path.name, path)
        for link in _links(Path(runs) if runs is not None else self.root.parent, self.root):
            target = link.resolve()
            if target in found:
                found[target].users.append(link)
        for entry in found.values():
            entry.users.sort()
        return list(found.values())

    def gc(
        self, runs: str | Path | None = None, dry_run: bool = False, min_age_s: float = 3600.0
    ) -> list[Entry]:
        """Remove the entries no experiment refers to, whose lock is not live and that nobody made or linked
        in the last ``min_age_s`` seconds (a job elsewhere may be about to link one); returns them."""
        removed = []
        now = time.time()
        for entry in self.entries(runs):
            lock = self.lock_path(entry.stage, entry.identity)
            if entry.users or is_live(lock, self.lock_timeout_s, now) or _age(entry.path, now) < min_age_s:
                continue
            removed.append(entry)
            if not dry_run:
                shutil.rmtree(entry.path)
                if not is_live(lock, self.lock_timeout_s):
                    lock.unlink(missing_ok=True)
        return removed


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` (an entry) or any file directly in it last changed (``link`` touches it)."""
    try:
        newest = max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
    except FileNotFoundError:
        return 0.0
    return now - newest


def _links(runs: Path, store_root: Path) -> Iterator[Path]:
    """Symlinks under ``runs`` (outside the store) that point into the store."""
    if not runs.is_dir():
        return
    store_root = store_root.resolve()
    for dirpath, dirnames, _ in os.walk(runs):
        current = Path(dirpath)
        if current.resolve() == store_root:
            dirnames.clear()
            continue
        for name in list(dirnames):
            path = current / name
            if path.is_symlink():
                dirnames.remove(name)  # do not descend into an entry
                if store_root in path.resolve().parents:
                    yield path


def link(view: Path, target: Path) -> None:
    """Make ``view`` a relative symlink to ``target`` (replacing an older link, never a real folder)."""
    view.parent.mkdir(parents=True, exist_ok=True)
    if view.is_symlink():
        view.unlink()
    elif view.exists():
        raise FileExistsError(f"{view} is a real folder; it cannot become a link to the store entry {target}")
    tmp = view.with_name(f".tmp-link-{view.name}-{unique_suffix()}")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, view.parent), tmp)
    os.replace(tmp, view)
    with contextlib.suppress(PermissionError):  # another user's entry: its files' own times still count
        os.utime(target)  # a recent link: gc leaves the entry alone for a while


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or clean the shared artifact store.")
    parser.add_argument("command", choices=["list", "gc"])
    parser.add_argument("--runs", default="runs", help="paths.runs (the store is <runs>/store)")
    parser.add_argument("--dry-run", action="store_true", help="gc: only say what would be removed")
    parser.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="gc: keep entries made or linked less than this many seconds ago",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=120.0,
        help="a lock not rewritten for this long is dead (store.lock_timeout_s)",
    )
    args = parser.parse_args(argv)
    store = Store(Path(args.runs) / STORE, lock_timeout_s=args.lock_timeout)
    if args.command == "list":
        entries = store.entries(args.runs)
        for e in entries:
            users = ", ".join(str(u.relative_to(args.runs)) for u in e.users) or "(unused)"
            state = "complete" if e.complete else "unfinished"
            print(f"{e.stage:12s} {e.identity}  {_human(e.size()):>9s}  {state:10s}  {users}")
        print(f"{len(entries)} entries, {_human(sum(e.size() for e in entries))}")
    else:
        removed = store.gc(args.runs, dry_run=args.dry_run, min_age_s=args.min_age)
        verb = "would remove" if args.dry_run else "removed"
        for e in removed:
            print(f"{verb} {e.stage} {e.identity} ({_human(e.size()) if args.dry_run else 'gone'})")
        print(f"{verb} {len(removed)} unused entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
