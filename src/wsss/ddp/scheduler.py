"""What the job knows about the scheduler that runs it (imports no torch: the config reads it)."""

from __future__ import annotations

import os


def under_slurm() -> bool:
    """A SLURM job (``SLURM_JOB_ID`` is set, by ``sbatch``/``srun`` or submitit's SLURM executor)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def under_submitit() -> bool:
    """A job started by submitit (``hydra/launcher=slurm`` or ``submitit_local``)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for an array task); None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID") or None


def global_rank() -> int:
    """This process's DDP rank as the launcher set it (0 when none did)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
