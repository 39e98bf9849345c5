"""wsss entry point: compose the Hydra config, then run one stage or a pipeline of stages.

python train.py stage=cls experiment=toy exp=demo
python train.py stage=pipeline experiment=paper_vgg16 data=voc data.root=/data/voc
python train.py -m experiment=toy drs.delta=0.4,0.55,0.7   # a sweep (see conf/sweep/)
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import hydra
from omegaconf import DictConfig

from wsss.config import register_resolvers

register_resolvers()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
log = logging.getLogger("wsss")


class MetricNotFoundError(KeyError):
    """``optimized_metric`` names a metric the run did not produce."""


def task(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stage(s) and return their metrics (``<stage>/<key>``)."""
    import sys

    from wsss.config import print_config, validate
    from wsss.ddp import prepare_job
    from wsss.stages.runner import run_stages

    prepare_job(cfg)  # first: it resets state (DDP variables, run id) left by a previous sweep job
    try:
        validate(cfg)
        check_optimized_metric(cfg)
        if cfg.get("print_config"):
            print_config(cfg)
        metrics = run_stages(cfg)
        _record_job(cfg, metrics)
        return metrics
    except BaseException as err:
        _record_job(cfg, None, err)  # a sweep's report lists the failed job with its error
        raise
    finally:
        if "torch" in sys.modules:  # nothing to close when the plan check stopped the job before any work
            from wsss.ddp.sync import end_job
            from wsss.training import finish_wandb

            finish_wandb()
            end_job()
        log.info("experiment folder: %s", cfg.paths.exp_dir)


def _record_job(cfg: DictConfig, metrics: dict[str, Any] | None, error: BaseException | None = None) -> None:
    from hydra.core.hydra_config import HydraConfig

    from wsss.report import record_job

    if HydraConfig.initialized():
        record_job(HydraConfig.get().runtime.output_dir, cfg, metrics, error)


def check_optimized_metric(cfg: DictConfig) -> None:
    """Before any work: ``optimized_metric`` must come from a stage this run makes."""
    from wsss.errors import ConfigError
    from wsss.stages.runner import pipeline_names

    name = cfg.get("optimized_metric")
    stages = pipeline_names(cfg)
    if name and str(name).split("/", 1)[0] not in stages:
        raise ConfigError(
            f"optimized_metric={name!r} comes from a stage this run does not make (stages: {', '.join(stages)}); "
            "add that stage to pipeline.stages or set optimized_metric=null"
        )


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises; fails loudly when the name is not among the run's metrics."""
    if not name:
        return None
    if name not in metrics:
        available = ", ".join(sorted(metrics)) or "(none)"
        raise MetricNotFoundError(
            f"optimized_metric={name!r} was not produced by this run. Available metrics: {available}"
        )
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    metrics = task(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
