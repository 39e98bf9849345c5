"""A DDP rank that fails ends every rank in bounded time, naming the rank, the step and the last
checkpoint (two CPU processes, ``trainer=ddp_sim``: gloo, the script re-executed for rank 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

BOUND_S = 60.0
"""Every rank has ended within this long of the failure (poll 1 s + ddp.fault_grace_s 10 s + exit)."""

SCRIPT = r"""
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
import torch
from torch import nn
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from conftest import compose_config
from wsss.tasks.trainer import build_trainer

rank_to_fail, step_to_fail, how, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])


class Task(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        if self.global_rank == rank_to_fail and self.global_step == step_to_fail:
            print(f"FAILING AT {time.time()}", flush=True)
            if how == "raise":
                raise RuntimeError("injected failure")
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen: no error, no heartbeat (a lost node)
        time.sleep(0.05)
        return ((self.w * batch[0] - 2.0) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


cfg = compose_config(
    ["trainer=ddp_sim", "trainer.enable_progress_bar=false", "logger=none", f"paths.runs={out}",
     "ddp.heartbeat_timeout_s=5", "+callbacks.model_checkpoint.every_n_train_steps=2"]
)
trainer = build_trainer(cfg, "seg", out / "stage", logger=False, max_epochs=20)
trainer.fit(Task(), DataLoader(TensorDataset(torch.ones(16, 1)), batch_size=2))
print("FINISHED", flush=True)
"""


def _run(tmp_path: Path, rank: int, step: int, how: str) -> tuple[str, float, int]:
    script = tmp_path / "ddp_job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "WSSS_RUN_ID"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(rank), str(step), how, str(tmp_path / "out"), str(REPO / "tests")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.communicate(timeout=600)[0]
    ended = time.time()
    found = re.search(r"FAILING AT ([0-9.]+)", out)
    assert found, out[-3000:]
    print(f"{how}: every rank ended {ended - float(found.group(1)):.1f} s after the failure")
    return out, ended - float(found.group(1)), proc.returncode


def test_a_rank_that_raises_stops_every_rank_naming_itself_and_the_step(tmp_path: Path) -> None:
    out, after, code = _run(tmp_path, rank=1, step=3, how="raise")
    assert code != 0 and "FINISHED" not in out
    last = tmp_path / "out" / "stage" / "checkpoints" / "last.ckpt"
    message = (
        "stage seg: DDP rank 1 of 2 failed at step 3 (epoch 0): RuntimeError: injected failure. Every rank was "
        f"stopped. The last checkpoint saved before that is {last} (epoch 0, step 2); the stage is not marked "
        "complete. Run the same command again to resume from it."
    )
    # both ranks end with it: rank 1 with its own error as the cause, rank 0 instead of gloo's "connection closed"
    assert f"[rank1]: wsss.tasks.rank_faults.RankFailedError: {message}" in out, out[-4000:]
    assert f"[rank0]: wsss.tasks.rank_faults.RankFailedError: {message}" in out, out[-4000:]
    assert after < BOUND_S, after


@pytest.mark.slow
def test_a_frozen_rank_is_noticed_by_its_heartbeat_and_the_job_still_ends(tmp_path: Path) -> None:
    """Rank 1 stops without a word (SIGSTOP: a lost node); rank 0, blocked in the gradient all-reduce, ends
    after ddp.heartbeat_timeout_s=5 s of silence and takes rank 1 with it."""
    out, after, code = _run(tmp_path, rank=1, step=3, how="freeze")
    assert code != 0 and "FINISHED" not in out
    assert re.search(
        r"\[rank 0\] RankFailedError: stage seg: DDP rank 1 of 2 \(host \S+, pid \d+\) stopped responding "
        r"\(last seen at step [0-3], epoch 0\): no heartbeat for \d+ s \(killed: out of memory, or its node was lost\?\)",
        out,
    ), out[-4000:]
    assert after < BOUND_S, after
