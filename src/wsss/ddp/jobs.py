"""Script-relaunching DDP inside Hydra sweeps (imports no torch: it runs before the plan check).

Lightning's ``strategy=ddp`` starts ranks 1..N-1 by re-executing ``sys.argv``. In a Hydra
multirun job ``sys.argv`` still holds ``-m`` and the whole sweep, and the DDP environment
variables of the previous job are still set, so the second job would either relaunch the sweep
or join a dead process group. ``prepare_job`` fixes both before a job builds its first Trainer;
``wsss.ddp.sync.end_job`` tears the process group down afterwards.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig, OmegaConf

from wsss.errors import UnsupportedLaunchError

DDP_ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "WSSS_RUN_ID")
RELAUNCHING_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
# Launchers that run jobs inside worker processes (or a pickled function), where re-executing the
# script cannot work: joblib, ray, rq, and submitit's local executor. Under SLURM, SLURM starts the ranks.
POOLED_LAUNCHERS = ("joblib", "ray", "rq", "LocalLauncher")


def _hydra_config() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun_job() -> bool:
    from hydra.types import RunMode

    hc = _hydra_config()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def relaunches_script(trainer_cfg: DictConfig) -> bool:
    strategy = str(trainer_cfg.get("strategy", "auto"))
    return strategy in RELAUNCHING_STRATEGIES


def check_launch(launcher: DictConfig, trainer: DictConfig) -> None:
    """Refuse a launcher/strategy pair that cannot work, naming the alternative.

    - basic launcher: ``trainer=ddp`` works (each job relaunches its own ranks, see ``prepare_job``);
    - joblib, ray, submitit_local: jobs run in pooled worker processes: ``ddp`` cannot re-execute the
      script there - use ``trainer=ddp_spawn`` (or the basic launcher);
    - SLURM (``hydra/launcher=slurm``): SLURM starts the ranks, so ``tasks_per_node`` must equal
      ``trainer.devices`` (``wsss/conf/hydra/launcher/slurm.yaml`` sets it so).
    """
    target = str(launcher.get("_target_", ""))
    if not relaunches_script(trainer):
        return
    if any(name.lower() in target.lower() for name in POOLED_LAUNCHERS):
        raise UnsupportedLaunchError(
            f"trainer.strategy={trainer.strategy} re-executes the script, which the launcher {target} cannot host "
            "(its jobs run in worker processes). Use trainer=ddp_spawn with this launcher, or the basic launcher "
            "(hydra/launcher=basic) or SLURM (hydra/launcher=slurm) with trainer=ddp."
        )
    if "SlurmLauncher" in target and int(launcher.get("tasks_per_node", 1)) != int(trainer.get("devices", 1)):
        raise UnsupportedLaunchError(
            f"hydra.launcher.tasks_per_node={launcher.get('tasks_per_node')} but trainer.devices={trainer.devices}: "
            "under SLURM each rank is a SLURM task; set them equal (wsss/conf/hydra/launcher/slurm.yaml does by default)"
        )


def prepare_job(cfg: DictConfig) -> None:
    """Call at the start of every job, before the first Trainer is built.

    Only acts in a Hydra multirun job: drops DDP variables left by the previous job, points
    ``sys.argv`` at this job's own overrides and pins ``hydra.run.dir`` to this job's folder, so a
    re-executed rank rebuilds exactly this job's config in this job's folder.
    """
    hc = _hydra_config()
    if hc is None or not is_multirun_job():
        return
    check_launch(hc.launcher, cfg.trainer)
    for name in DDP_ENV_VARS:
        os.environ.pop(name, None)
    sys.argv = [sys.argv[0], *hc.overrides.task]
    OmegaConf.set_readonly(hc, False)
    hc.run.dir = hc.runtime.output_dir
    OmegaConf.set_readonly(hc, True)
