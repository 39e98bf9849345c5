"""Shared test set-up: quiet, offline environment and the read-only VOC fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# One intra-op thread per process: on a shared 2-core machine, small convs run far slower with two
# threads fighting over the cores (and subprocess tests start several processes at once).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real VOC fixtures (../shared/data); skips when absent."""
    if not (SHARED_DATA / "voc_sample" / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"real VOC fixtures not found at {SHARED_DATA} (they ship beside the repo, not in it)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_config(overrides: list[str], runs: Path | None = None):
    """Compose the real config the way train.py does (with the hydra node set), for tests."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from wsss.config import register_resolvers

    register_resolvers()
    extra = [f"paths.runs={runs}", f"paths.data={runs.parent / 'data'}"] if runs is not None else []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *extra], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_train(args: list[str], cwd: Path = REPO, timeout: int = 600):
    """Run train.py in a subprocess; returns the CompletedProcess (stdout and stderr merged)."""
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("WSSS_RUN_ID", None)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
