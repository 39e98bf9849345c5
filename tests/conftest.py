"""Shared test set-up: quiet, offline environment and the read-only VOC fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real VOC fixtures (../shared/data); skips when absent."""
    if not (SHARED_DATA / "voc_sample" / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"real VOC fixtures not found at {SHARED_DATA} (they ship beside the repo, not in it)")
    return SHARED_DATA
