"""Checks a Hydra multirun makes before its first job starts.

``check_unique_folders`` (called by wsss's sweeper, ``hydra_plugins.wsss_sweeper``, before it launches
anything) composes every job of the sweep and refuses it when two jobs would write into the same
experiment folder (``-m stage=cls exp=fixed seed=0,1`` would have job 2 overwrite job 1): it names the
folder, the jobs' overrides, and the fix. Jobs that leave ``exp`` at its default get a unique folder each.
"""

from __future__ import annotations

import logging

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from wsss.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_EXP = "${wsss_run_id:}"


def experiment_folder(config: DictConfig, overrides: list[str]) -> str | None:
    """The experiment folder a job would use (None: the default, unique per job)."""
    from hydra.core.global_hydra import GlobalHydra

    job = GlobalHydra.instance().config_loader().load_sweep_config(config, list(overrides))
    if OmegaConf.to_container(job, resolve=False).get("exp") == DEFAULT_EXP:
        return None
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        hydra_config.set_config(job)  # ${hydra:...} in exp resolves as in the job
        return str(job.paths.exp_dir)
    finally:
        hydra_config.cfg = saved


def check_unique_folders(config: DictConfig, jobs: list[list[str]]) -> None:
    """Raise ``ConfigError`` when two of ``jobs`` (their overrides) resolve to the same experiment folder."""
    folders: dict[str, list[list[str]]] = {}
    for overrides in jobs:
        folder = experiment_folder(config, overrides)
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
