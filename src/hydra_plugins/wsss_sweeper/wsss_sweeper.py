"""Hydra's basic sweeper plus wsss's checks before the first job (``hydra/sweeper=wsss``, the default)."""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class WsssSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.wsss_sweeper.wsss_sweeper.WsssSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="wsss", node=WsssSweeperConf, provider="wsss")


class WsssSweeper(BasicSweeper):
    """The cartesian-product sweeper; refuses a sweep whose jobs would share an experiment folder."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        from wsss.sweeps import check_unique_folders

        assert self.config is not None
        check_unique_folders(self.config, [list(job) for job in self.overrides_all()])

    def overrides_all(self) -> list[Sequence[str]]:
        """Every job of the whole sweep (all batches), not only the batch being launched."""
        assert self.overrides is not None
        return [job for batch in self.overrides for job in batch]
