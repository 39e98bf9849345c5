"""What wsss's sweeper (``hydra_plugins.wsss_sweeper``) does around Hydra's cartesian product.

- ``with_seeds``: ``seeds=[0,1,2]`` runs every setting once per seed (a ``seed`` sweep dimension).
- ``check_jobs``, before the first job: every job is composed; the sweep is refused when two jobs would
  write into the same experiment folder (``-m stage=cls exp=fixed seed=0,1`` would have job 2 overwrite
  job 1), or when a job's trainer cannot run under the launcher (``wsss.ddp.jobs.check_launch``).
- ``finish_sweep``: the report (``wsss.experiments.report``) is written even when jobs failed; then the failures.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from wsss.ddp.jobs import check_launch
from wsss.errors import ConfigError, SweepError
from wsss.experiments.report import report
from wsss.pipeline.config import check_accelerator

log = logging.getLogger(__name__)

DEFAULT_EXP = "${wsss_run_id:}"


def _job_config(config: DictConfig, overrides: list[str]) -> DictConfig:
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))


def experiment_folder(job: DictConfig) -> str | None:
    """The experiment folder a job's config uses (None: the default, unique per job)."""
    if OmegaConf.to_container(job, resolve=False).get("exp") == DEFAULT_EXP:
        return None
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        hydra_config.set_config(job)  # ${hydra:...} in exp resolves as in the job
        return str(job.paths.exp_dir)
    finally:
        hydra_config.cfg = saved


def with_seeds(config: DictConfig, arguments: list[str]) -> list[str]:
    """``arguments`` plus a ``seed=a,b,c`` sweep when ``seeds`` is set and nothing else sweeps ``seed``."""
    seeds = config.get("seeds")
    if not seeds:
        return arguments
    sweeps_seed = any(a.split("=", 1)[0].lstrip("+") == "seed" for a in arguments)
    params = config.hydra.sweeper.get("params") or {}
    if sweeps_seed or "seed" in params:
        raise ConfigError("give the seeds once: seeds=[...] or a seed=... sweep, not both")
    return [*arguments, "seed=" + ",".join(str(int(s)) for s in seeds)]


def check_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Everything a sweep must satisfy before its first job (see the module docstring)."""

    configs = [_job_config(config, overrides) for overrides in jobs]
    check_unique_folders(jobs, configs)
    for job in configs:
        check_launch(config.hydra.launcher, job.trainer)
        check_accelerator(job)


def finish_sweep(sweep_dir: Path, n_jobs: int, failed: list, wandb_log: bool = False) -> None:
    """Write the report (whatever ran; ``wandb_log``: also as a W&B run), then raise when jobs failed."""

    if any(sweep_dir.glob("*/result.json")):
        text = report(sweep_dir, wandb_log=wandb_log)
        log.info("sweep report (%s):\n%s", sweep_dir / "report.md", text)
    if failed:
        first = failed[0]
        raise SweepError(
            f"{len(failed)} of {n_jobs} jobs failed (the others ran; {sweep_dir / 'report.md'} lists them). First: "
            f"{' '.join(first.overrides)}: {_error(first)}"
        )


def _error(job_return: object) -> str:
    error = getattr(job_return, "_return_value", None)  # JobReturn keeps a failed job's exception here
    return f"{type(error).__name__}: {error}"


def check_unique_folders(jobs: list[list[str]], configs: list[DictConfig]) -> None:
    """Raise ``ConfigError`` when two jobs (their overrides, their configs) use the same experiment folder."""
    folders: dict[str, list[list[str]]] = {}
    for overrides, job in zip(jobs, configs, strict=True):
        folder = experiment_folder(job)
        if folder is not None:
            folders.setdefault(folder, []).append(overrides)
    shared = {folder: group for folder, group in folders.items() if len(group) > 1}
    if shared:
        folder, group = next(iter(shared.items()))
        listing = "\n".join(f"    {' '.join(job)}" for job in group[:4])
        raise ConfigError(
            f"{sum(len(g) for g in shared.values())} jobs of this multirun would write into the same experiment "
            f"folder ({len(shared)} folder(s)), e.g. {folder} for:\n{listing}\n"
            "Nothing was run. Give each job its own exp (e.g. exp=name_s${seed}, or "
            "exp=sweeps/x/${hydra:job.override_dirname}), or leave exp unset (a unique folder per job)."
        )
