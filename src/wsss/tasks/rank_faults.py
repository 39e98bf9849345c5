"""A DDP rank that fails ends every rank promptly, with the rank, the step and the last checkpoint named.

Without this, a rank that raises (or is killed: out of memory, a lost node) leaves the others blocked in
their next collective until the backend's timeout (NCCL: minutes; a SLURM job then idles to its time
limit), and the job's last words are a peer's "connection closed" from gloo or NCCL, naming nothing.

``RankWatch`` (a callback of every Trainer with more than one process) keeps a small record per rank in
``<stage folder>/.ranks/rank<r>.json`` (a shared file system on a cluster, like the store): a heartbeat
(``beat``, rewritten every ``poll_s`` by a thread), the step, and on failure the error. Then:

- the failing rank writes ``failed`` with its error and step, and raises ``RankFailedError`` naming them
  and the last checkpoint saved before it, its own error as the cause;
- a rank whose collective fails because a peer went away raises ``RankFailedError`` naming that peer
  (it waits up to ``grace_s`` for the peer's record);
- a rank still running ``grace_s`` after a peer's ``failed`` record appeared, or ``stale_s`` after a
  peer's heartbeat stopped (a rank killed without a word), is blocked in a collective: its watch thread
  prints the same message and ends the process (``os._exit``) - the only way out of a blocking call.

So every rank ends within ``poll_s + grace_s`` of a failure that raises, and within ``stale_s`` of a
silent death (plus process exit). wsss's own errors that all ranks agree on (``DivergedTrainingError``
via ``StopOnNonFiniteLoss``) pass through unchanged. Records carry a token rank 0 broadcasts when the
Trainer starts, so records of an earlier run of the stage are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from wsss.ddp.locks import host_name, unique_suffix
from wsss.errors import WsssError
from wsss.models.checkpoint import last_good_checkpoint

log = logging.getLogger(__name__)

RANK_FAILED_EXIT = 1
_COMMUNICATION = re.compile(
    r"gloo|nccl|connection|peer|socket|broken pipe|timed out|timeout|closed|reset", re.IGNORECASE
)


class RankFailedError(RuntimeError):
    """A DDP rank failed; every rank stops with this message (the failing rank's error is the cause)."""


def _is_communication_error(err: BaseException) -> bool:
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    return (kinds and isinstance(err, kinds)) or bool(_COMMUNICATION.search(str(err)))


class RankWatch(Callback):
    """See the module docstring. ``stage``: for messages; ``folder``: the stage folder (``.ranks`` goes in it)."""

    def __init__(
        self,
        stage: str,
        folder: str | Path,
        checkpoint_dir: str | Path,
        poll_s: float = 1.0,
        grace_s: float = 10.0,
        stale_s: float = 120.0,
    ) -> None:
        self.stage = stage
        self.folder = Path(folder) / ".ranks"
        self.checkpoint_dir = Path(checkpoint_dir)
        self.poll_s, self.grace_s, self.stale_s = float(poll_s), float(grace_s), float(stale_s)
        self.rank = 0
        self.world = 1
        self.token = ""
        self.step = 0
        self.epoch = 0
        self.beat = 0
        self.state = "running"
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._children: list[Any] = []  # ranks this process launched (trainer=ddp re-executes the script)

    # -- records ---------------------------------------------------------------------------------
    def _path(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.json"

    def _write(self) -> None:
        with self._lock:
            self.beat += 1
            record = {
                "token": self.token,
                "rank": self.rank,
                "host": host_name(),
                "pid": os.getpid(),
                "beat": self.beat,
                "step": self.step,
                "epoch": self.epoch,
                "state": self.state,
                "error": self.error,
            }
            tmp = self.folder / f".tmp-rank{self.rank}-{unique_suffix()}.json"
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self._path(self.rank))

    def _peers(self) -> dict[int, dict[str, Any]]:
        found = {}
        for rank in range(self.world):
            if rank == self.rank:
                continue
            try:
                record = json.loads(self._path(rank).read_text())
            except (FileNotFoundError, ValueError):
                continue
            if record.get("token") == self.token:
                found[rank] = record
        return found

    # -- messages --------------------------------------------------------------------------------
    def _last_good(self) -> str:
        return last_good_checkpoint(self.checkpoint_dir)

    def _failed_message(self, rank: int, step: int, epoch: int, error: str) -> str:
        return (
            f"stage {self.stage}: DDP rank {rank} of {self.world} failed at step {step} (epoch {epoch}): {error}. "
            f"Every rank was stopped. {self._last_good()} Run the same command again to resume from it."
        )

    def _silent_message(self, rank: int, record: dict[str, Any], quiet_s: float) -> str:
        return (
            f"stage {self.stage}: DDP rank {rank} of {self.world} (host {record.get('host')}, pid {record.get('pid')}) "
            f"stopped responding (last seen at step {record.get('step')}, epoch {record.get('epoch')}): no heartbeat for "
            f"{quiet_s:.0f} s (killed: out of memory, or its node was lost?). Every rank was stopped. "
            f"{self._last_good()} Run the same command again to resume from it."
        )

    # -- the watch thread ------------------------------------------------------------------------
    def _watch(self) -> None:
        seen: dict[int, tuple[int, float]] = {}
        failed_at: dict[int, float] = {}
        while not self._stop.wait(self.poll_s):
            self._write()
            now = time.monotonic()
            for rank, record in self._peers().items():
                if record.get("state") == "failed":
                    failed_at.setdefault(rank, now)
                    if now - failed_at[rank] >= self.grace_s and self.state == "running":
                        self._abort(
                            self._failed_message(
                                rank, record["step"], record["epoch"], record.get("error", "")
                            )
                        )
                    continue
                if record.get("state") == "done":
                    continue
                beat = int(record.get("beat", 0))
                if rank not in seen or seen[rank][0] != beat:
                    seen[rank] = (beat, now)
                elif now - seen[rank][1] >= self.stale_s and self.state == "running":
                    self._abort(self._silent_message(rank, record, now - seen[rank][1]))

    def _abort(self, message: str) -> None:
        """This rank is blocked in a collective with a dead peer: say why and end the process."""
        self.state, self.error = "stopped", message
        self._write()
        sys.stdout.flush()
        sys.stderr.write(f"\n[rank {self.rank}] RankFailedError: {message}\n")
        sys.stderr.flush()
        for child in self._children:  # ranks this process started would be left behind, blocked
            child.kill()
        os._exit(RANK_FAILED_EXIT)

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.world = int(trainer.world_size)
        if self.world < 2 or stage != "fit":
            return
        self.rank = int(trainer.global_rank)
        self._children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        self.token = trainer.strategy.broadcast(secrets.token_hex(6), src=0)
        self.state, self.error, self.beat = "running", "", 0
        self._write()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="wsss-rank-watch", daemon=True)
        self._thread.start()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.step, self.epoch = int(trainer.global_step), int(trainer.current_epoch)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._thread is None or isinstance(exception, WsssError | SystemExit | KeyboardInterrupt):
            return
        self.step, self.epoch = int(trainer.global_step), int(trainer.current_epoch)
        secondary = _is_communication_error(exception)
        if secondary:  # a peer went away: wait for its word
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline:
                failed = {r: p for r, p in self._peers().items() if p.get("state") == "failed"}
                if failed:
                    rank = min(failed)
                    record = failed[rank]
                    message = self._failed_message(
                        rank, record["step"], record["epoch"], record.get("error", "")
                    )
                    self._finish("stopped", message)
                    raise RankFailedError(message) from exception
                time.sleep(min(self.poll_s, 0.2))
        text = f"{type(exception).__name__}: {exception}".strip()
        message = self._failed_message(self.rank, self.step, self.epoch, text.splitlines()[0] if text else "")
        self._finish("failed", message if secondary else text.splitlines()[0])
        raise RankFailedError(message) from exception

    def _finish(self, state: str, error: str) -> None:
        self.state, self.error = state, error
        self._stop.set()
        self._write()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.state == "running":
            self.state = "done"
            self._write()
            trainer.strategy.barrier("wsss-rank-watch")
            if trainer.global_rank == 0:
                shutil.rmtree(self.folder, ignore_errors=True)
