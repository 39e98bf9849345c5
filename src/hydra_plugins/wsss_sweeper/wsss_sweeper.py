"""Hydra's basic sweeper with wsss's rules (``hydra/sweeper=wsss``, the default; see ``wsss.experiments.sweeps``).

Before the first job: ``seeds=[0,1,2]`` becomes a ``seed`` sweep dimension; the sweep is refused when
two jobs would share an experiment folder, or when a job's trainer relaunches the script (``ddp``)
under a launcher that cannot host that. A failed job does not stop the others; at the end the sweep's
report (``wsss.experiments.report``) is written, failed jobs listed, and the sweep fails if any job did.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobStatus

log = logging.getLogger(__name__)


@dataclass
class WsssSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.wsss_sweeper.wsss_sweeper.WsssSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="wsss", node=WsssSweeperConf, provider="wsss")


class WsssSweeper(BasicSweeper):
    """The cartesian-product sweeper plus the checks and the report of ``wsss.experiments.sweeps``."""

    def sweep(self, arguments: list[str]) -> Any:
        from wsss.experiments import sweeps

        assert self.config is not None and self.launcher is not None
        arguments = sweeps.with_seeds(self.config, list(arguments))
        self.overrides = self.split_arguments(self._parsed(arguments), self.max_batch_size)
        jobs = [list(job) for batch in self.overrides for job in batch]
        sweeps.check_jobs(self.config, jobs)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf

        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, failed, first = [], [], 0
        for batch in self.overrides:
            results = self.launcher.launch(batch, initial_job_idx=first)
            failed += [r for r in results if r.status == JobStatus.FAILED]
            first += len(batch)
            returns.append(results)
        from wsss.pipeline.wandb_lineage import uses_wandb

        sweeps.finish_sweep(sweep_dir, len(jobs), failed, wandb_log=uses_wandb(self.config))
        return returns

    def _parsed(self, arguments: Sequence[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        assert self.hydra_context is not None
        return OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(
            [*params, *arguments]
        )
