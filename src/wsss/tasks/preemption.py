"""Preemption on a cluster: a checkpoint at the scheduler's signal, then a requeue of the same job.

SLURM signals a job before it kills it: ``#SBATCH --signal=USR1@90`` sends SIGUSR1 90 s before the time
limit, and preemption or ``scancel`` send SIGTERM (then SIGKILL after the grace time). With
``preemption.enabled`` (``auto``: whenever ``SLURM_JOB_ID`` is set) ``install`` puts a handler on the
``preemption.signals``. The handler itself only notes the signal; ``PreemptionCheckpoint``, a callback of
every training stage, acts on it after the current optimizer step (mid-epoch: the segmenter runs by
steps): all DDP ranks agree, ``checkpoints/last.ckpt`` is written (with the loader's position and the
random generators, ``wsss.data.resumable``, so the resumed run continues with the same numbers), the job
is requeued (signals of ``preemption.requeue_on`` only) and the process exits with ``PREEMPTED_EXIT`` (75).
Outside training (maps, pseudo labels, eval: they resume from the files they kept) the handler requeues
and exits at once. The requeued job runs the same command: the runner finds the unfinished stage with
the same identity, resumes from ``last.ckpt``, and its W&B run continues (the id is in the stage folder);
under SLURM the default experiment name is ``slurm-<job id>``, which a requeue keeps.

Requeue: under submitit (``hydra/launcher=slurm``; ``SUBMITIT_EXECUTOR`` is set) its preemption signal
(``--signal=USR2@<signal_delay_s>``; ``SUBMITIT_PREEMPT_SIGNAL``) joins both lists, and after the
checkpoint submitit's own handler is called, which checkpoints the Hydra job (the launcher's
``checkpoint``: the same job again), runs ``scontrol requeue`` and exits; under plain SLURM (``sbatch`` running ``train.py``) ``scontrol requeue <job id>``,
once per process, by global rank 0.

Why not Lightning's ``SLURMEnvironment(auto_requeue=True)``: its SIGUSR1 handler writes
``hpc_ckpt_<n>.ckpt`` (which the runner does not resume from) from inside the signal handler, i.e. in
the middle of whatever step is running, requeues with no regard for submitit, and lets training run on.
So wsss builds its Trainers with ``SLURMEnvironment(auto_requeue=False)`` under SLURM (Lightning then
installs no SIGUSR1 handler), and ``PreemptionCheckpoint`` re-installs wsss's handlers once the Trainer
has set its own, so only one of them ever acts on a signal. SIGTERM does not requeue by default: a
preempting SLURM (``PreemptMode=REQUEUE``) requeues the job itself, and ``scancel`` sends SIGTERM too.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from wsss.ddp.scheduler import global_rank, slurm_job_id, under_slurm, under_submitit
from wsss.errors import ConfigError, Preempted

log = logging.getLogger(__name__)


class _State:
    """What the process knows about preemption (one per process)."""

    def __init__(self) -> None:
        self.enabled = False
        self.signals: list[signal.Signals] = []
        self.requeue_on: set[signal.Signals] = set()
        self.received: signal.Signals | None = None
        self.training = False  # a PreemptionCheckpoint is armed: it acts after the step
        self.requeued = False
        self.previous: dict[signal.Signals, Any] = {}  # handlers found at install (submitit's)

    def handler(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        first = self.received is None
        self.received = self.received or sig
        if not first:
            return
        log.warning(
            "received %s: %s",
            sig.name,
            "saving a checkpoint after this step" if self.training else "stopping",
        )
        if not self.training:
            requeued = requeue(sig)
            raise Preempted(
                f"preempted by {sig.name} outside training; {requeued} The stage resumes from its kept files."
            )


STATE = _State()


def _parse_signals(names: Any, key: str) -> list[signal.Signals]:
    found = []
    for name in names or []:
        text = str(name).upper()
        text = text if text.startswith("SIG") else f"SIG{text}"
        if not hasattr(signal.Signals, text):
            raise ConfigError(f"{key}: {name!r} is not a signal name; use e.g. [SIGUSR1, SIGTERM]")
        found.append(signal.Signals[text])
    return found


def install(cfg: DictConfig) -> bool:
    """Put wsss's handler on ``preemption.signals`` when preemption is on (``auto``: under SLURM); returns
    whether it is on. Call once per job, in the main thread, before the first stage."""
    node = cfg.get("preemption") or {}
    enabled = node.get("enabled", "auto")
    if str(enabled) not in ("auto", "True", "False", "true", "false"):
        raise ConfigError(f"preemption.enabled={enabled!r}; choose auto, true or false")
    on = under_slurm() if str(enabled) == "auto" else str(enabled).lower() == "true"
    STATE.enabled = on
    if not on or threading.current_thread() is not threading.main_thread():
        return False
    STATE.signals = _parse_signals(node.get("signals", ["SIGUSR1", "SIGTERM"]), "preemption.signals")
    STATE.requeue_on = set(_parse_signals(node.get("requeue_on", ["SIGUSR1"]), "preemption.requeue_on"))
    if (
        under_submitit()
    ):  # submitit's own preemption signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)
        own = _parse_signals([os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")], "SUBMITIT_PREEMPT_SIGNAL")[
            0
        ]
        STATE.signals += [own] if own not in STATE.signals else []
        STATE.requeue_on.add(own)
    for sig in STATE.signals:
        current = signal.getsignal(sig)
        if current != STATE.handler:
            STATE.previous[sig] = current
        signal.signal(sig, STATE.handler)
    log.info(
        "preemption: %s save a checkpoint and stop; %s also requeue (%s)",
        ", ".join(s.name for s in STATE.signals),
        ", ".join(s.name for s in STATE.requeue_on) or "none",
        "submitit"
        if under_submitit()
        else f"SLURM job {slurm_job_id()}"
        if under_slurm()
        else "no scheduler",
    )
    return True


def requeue(sig: signal.Signals) -> str:
    """Requeue the job once (rank 0); returns a sentence saying what happened. Under submitit, submitit's
    handler does it and exits the process."""
    if sig not in STATE.requeue_on:
        return f"Not requeued ({sig.name} is not in preemption.requeue_on); run the same command again to resume."
    if STATE.requeued:
        return "Requeued."
    STATE.requeued = True
    if under_submitit():
        previous = STATE.previous.get(sig)
        if callable(previous):
            log.warning("preemption: handing over to submitit, which requeues this job")
            previous(int(sig), None)  # submitit: checkpoint the job, scontrol requeue, sys.exit on rank 0
        return "submitit requeues the job."
    job = slurm_job_id()
    if not under_slurm() or job is None:
        return "Not under SLURM: nothing to requeue; run the same command again to resume."
    if global_rank() != 0:
        return f"Rank 0 requeues SLURM job {job}."
    if not re.fullmatch(r"[0-9_]+", job):
        return f"SLURM job id {job!r} does not look like one; not requeued."
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("preemption: scontrol requeue %s failed: %s", job, err)
        return f"scontrol requeue {job} failed ({err}); resubmit the same command to resume."
    if result.returncode != 0:
        log.error(
            "preemption: scontrol requeue %s exited %d: %s", job, result.returncode, result.stderr.strip()
        )
        return (
            f"scontrol requeue {job} failed (exit {result.returncode}); resubmit the same command to resume."
        )
    log.warning("preemption: requeued SLURM job %s", job)
    return f"Requeued SLURM job {job} (scontrol requeue); it resumes from there."


class PreemptionCheckpoint(Callback):
    """Acts on a preemption signal after an optimizer step: writes ``last.ckpt``, requeues, exits.

    A step whose validation is due first runs it (the checkpoint then follows the next step), so the
    checkpoint is always taken between a step and the next batch, where the resumed run picks up.
    """

    def __init__(self, stage: str, checkpoint_dir: str | Path) -> None:
        self.stage = stage
        self.checkpoint_dir = Path(checkpoint_dir)
        self._lightning: dict[signal.Signals, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STATE.training = True
        if threading.current_thread() is threading.main_thread():
            for sig in STATE.signals:  # the Trainer put its own SIGTERM handler on top of wsss's
                self._lightning[sig] = signal.getsignal(sig)
                signal.signal(sig, STATE.handler)

    def _disarm(self) -> None:
        STATE.training = False
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._lightning.items():
                if handler is not None:
                    signal.signal(sig, handler)
        self._lightning = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._disarm()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._disarm()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loop = trainer.fit_loop.epoch_loop
        if loop._should_accumulate():
            return  # between the batches of one optimizer step
        stop = trainer.strategy.reduce_boolean_decision(STATE.received is not None, all=False)
        if not stop:
            return
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return  # validation first; the checkpoint follows the next step
        self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        sig = STATE.received or signal.SIGTERM
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path)
        step = trainer.global_step
        log.warning(
            "stage %s: %s: saved %s at step %d (epoch %d)",
            self.stage,
            sig.name,
            path,
            step,
            trainer.current_epoch,
        )
        requeued = requeue(sig) if trainer.is_global_zero else ""
        raise Preempted(
            f"stage {self.stage}: preempted by {sig.name} at step {step} (epoch {trainer.current_epoch}); "
            f"saved {path}. {requeued}".strip()
        )


def trainer_plugins() -> list[Any]:
    """Cluster-environment plugins for a Trainer: under SLURM, Lightning's SLURM environment without its
    own requeue handler (wsss's ``PreemptionCheckpoint`` handles the signals; see the module docstring)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []
