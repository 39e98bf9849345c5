"""DDP helpers in one place: ``jobs`` (sweep jobs that relaunch the script; no torch) and ``sync``
(barriers, the sharding sampler, process-group clean-up)."""

from wsss.ddp.jobs import prepare_job, relaunches_script

__all__ = ["prepare_job", "relaunches_script"]
