"""Preemption under SLURM: at the scheduler's signal a training stage saves last.ckpt after its step
(mid-epoch for the segmenter), requeues the job once (a fake ``scontrol`` records the call) and stops;
the requeued command resumes from the saved step and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TOY, compose_config, run_stage
from wsss.errors import PREEMPTED_EXIT, Preempted

COMMON = [
    *TINY_TOY,
    "store.enabled=false",
    "pseudo.source=cls",
    "pseudo.workers=1",
    "cls.epochs=1",
    "data.batch_size=1",  # 8 batches an epoch: the signal lands mid-epoch
    "seg.max_steps=24",
    "seg.val_every_n_steps=5",
    "trainer.deterministic=true",
    "print_config=false",
]
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "wsss-test",
    "SLURM_NTASKS": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def _fake_scontrol(folder: Path) -> Path:
    """An ``scontrol`` on PATH that appends its arguments to ``scontrol.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.log"}\n')
    script.chmod(0o755)
    return folder / "scontrol.log"


def _upstream(runs: Path) -> None:
    """cls -> maps -> pseudo in experiment b, copied to a (plain folders: both read the same labels)."""
    run_stage(
        compose_config([*COMMON, "exp=b", "stage=pipeline", "pipeline.stages=[cls,maps_cls,pseudo]"], runs)
    )
    shutil.copytree(runs / "b", runs / "a", symlinks=True)


def _weights(runs: Path, exp: str) -> dict[str, torch.Tensor]:
    path = runs / exp / "seg" / "checkpoints" / "best.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def preemption_state():
    """Leave the process's signal handlers and wsss.tasks.preemption's state as they were."""
    from wsss.tasks import preemption

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    yield preemption.STATE
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    preemption.STATE.__init__()


def test_a_signal_mid_epoch_saves_requeues_once_and_the_resumed_segmenter_ends_identical(
    tmp_path: Path, monkeypatch, preemption_state, caplog
) -> None:
    from wsss.tasks.preemption import install
    from wsss.tasks.segmentation import SegmenterTask

    runs = tmp_path / "runs"
    _upstream(runs)
    run_stage(compose_config([*COMMON, "exp=a", "stage=seg"], runs))  # uninterrupted
    reference = _weights(runs, "a")

    log = _fake_scontrol(tmp_path / "bin")
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config([*COMMON, "exp=b", "stage=seg"], runs)
    assert install(cfg) and preemption_state.signals == [signal.SIGUSR1, signal.SIGTERM]

    original = SegmenterTask.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 6:  # the scheduler's signal arrives during step 6 (epoch 0, batch 6 of 8)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmenterTask, "training_step", training_step)
    with pytest.raises(Preempted) as stopped:
        run_stage(cfg)
    assert stopped.value.code == PREEMPTED_EXIT
    last = runs / "b" / "seg" / "checkpoints" / "last.ckpt"
    assert str(stopped.value) == (
        f"stage seg: preempted by SIGUSR1 at step 7 (epoch 0); saved {last}. "
        "Requeued SLURM job 4242 (scontrol requeue); it resumes from there."
    )
    assert log.read_text() == "requeue 4242\n"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 7 and saved["epoch"] == 0  # mid-epoch: 7 of the epoch's 8 batches
    state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["batches"] == 7 and state["exact"] is True
    assert not (runs / "b" / "seg" / ".complete").exists()

    monkeypatch.setattr(SegmenterTask, "training_step", original)
    preemption_state.received = None  # the requeued job is a new process
    preemption_state.requeued = False
    with caplog.at_level("WARNING"):
        metrics = run_stage(compose_config([*COMMON, "exp=b", "stage=seg"], runs))
    assert f"resuming training from {last}: continues after step 7 (epoch 0)" in caplog.text
    assert metrics["steps"] == 24
    assert _same(_weights(runs, "b"), reference)  # bit for bit the uninterrupted run's network
    assert log.read_text() == "requeue 4242\n"  # requeued exactly once


@pytest.mark.slow
def test_train_py_under_slurm_stops_at_sigusr1_and_the_requeued_command_resumes(tmp_path: Path) -> None:
    """The whole path from outside: a SLURM-like environment, train.py running the segmenter, SIGUSR1 sent
    by the 'scheduler', exit 75 after one requeue call; the same command resumes and matches an
    uninterrupted run; its W&B run (offline) continues with the same id."""
    runs = tmp_path / "runs"
    _upstream(runs)
    log = _fake_scontrol(tmp_path / "bin")
    base = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    base.pop("WSSS_RUN_ID", None)
    slurm = {
        **base,
        **SLURM,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{base['PATH']}",
        "WANDB_MODE": "offline",
    }
    args = [
        sys.executable,
        str(REPO / "train.py"),
        *COMMON,
        f"paths.runs={runs}",
        f"paths.data={tmp_path / 'data'}",
    ]
    args += ["stage=seg", "seg.max_steps=200"]
    seg_b = [*args, "exp=b", "logger=wandb"]

    proc = subprocess.Popen(
        seg_b, cwd=tmp_path, env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = runs / "b" / "seg" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first validation (step 5) writes last.ckpt: training is under way
    assert proc.poll() is None, f"the stage ended before the signal: {proc.communicate()[0][-3000:]}"
    os.kill(proc.pid, signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == PREEMPTED_EXIT, out[-3000:]
    found = re.search(r"Preempted: stage seg: preempted by SIGUSR1 at step (\d+) \(epoch (\d+)\)", out)
    assert found, out[-3000:]
    step = int(found.group(1))
    assert 5 <= step < 200
    assert log.read_text() == "requeue 4242\n"
    run_id = (runs / "b" / "seg" / "wandb_run_id").read_text().strip()

    again = subprocess.run(
        seg_b,
        cwd=tmp_path,
        env={**slurm, "SLURM_RESTART_COUNT": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"continues after step {step} (epoch {found.group(2)})" in again.stdout + again.stderr
    assert log.read_text() == "requeue 4242\n"  # once
    assert (runs / "b" / "seg" / "wandb_run_id").read_text().strip() == run_id
    offline = sorted(p.name for p in (runs / "b" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline

    plain = subprocess.run(
        [*args, "exp=a", "logger=none"], cwd=tmp_path, env=base, capture_output=True, text=True
    )
    assert plain.returncode == 0, (plain.stdout + plain.stderr)[-3000:]
    assert _same(_weights(runs, "b"), _weights(runs, "a"))


def test_under_submitit_its_signal_checkpoints_first_then_submitit_requeues(
    tmp_path: Path, monkeypatch, preemption_state
) -> None:
    """submitit (hydra/launcher=slurm) preempts with SIGUSR2 and requeues by its own handler, found installed
    when the job starts: wsss saves last.ckpt after the step, then hands over to it. Lightning's SLURM
    handler is never installed, and wsss's is the one on the signals while training runs."""
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from wsss.tasks.preemption import install
    from wsss.tasks.trainer import build_trainer

    for key, value in {**SLURM, "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(key, value)
    calls: list[int] = []

    def submitit_handler(signum, frame):  # what submitit's checkpoint_and_try_requeue does on rank 0
        calls.append(signum)
        raise SystemExit(-1)

    signal.signal(signal.SIGUSR2, submitit_handler)
    cfg = compose_config([*COMMON, "exp=e", "stage=seg"], tmp_path / "runs")
    assert install(cfg)
    assert signal.SIGUSR2 in preemption_state.signals and signal.SIGUSR2 in preemption_state.requeue_on
    seen: dict[str, object] = {}

    class Task(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                seen["usr1"] = signal.getsignal(signal.SIGUSR1)
                seen["term"] = signal.getsignal(signal.SIGTERM)
                seen["env"] = self.trainer._accelerator_connector.cluster_environment
                os.kill(os.getpid(), signal.SIGUSR2)
            return ((self.w * batch[0] - 2.0) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    out = tmp_path / "stage"
    trainer = build_trainer(cfg, "seg", out, logger=False, max_epochs=2, enable_progress_bar=False)
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(Task(), DataLoader(TensorDataset(torch.ones(10, 1)), batch_size=1))
    assert stopped.value.code == -1 and calls == [signal.SIGUSR2]  # submitit requeued, once
    assert seen["usr1"] == preemption_state.handler and seen["term"] == preemption_state.handler
    assert isinstance(seen["env"], SLURMEnvironment) and not seen["env"].auto_requeue
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and saved["epoch"] == 0  # after the step the signal came in
    assert not list(out.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue handler never ran
    assert (
        signal.getsignal(signal.SIGUSR2) == preemption_state.handler
    )  # disarmed: back to wsss's job handler
