"""Stage registry and the runner that executes one stage or a pipeline of them.

Each stage is a module ``wsss.stages.<module>`` exposing ``run(cfg, exp) -> dict`` of flat metrics.
Stages hand over only through files in the experiment folder (``wsss.artifacts``).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf, open_dict

from wsss.artifacts import COMPLETE, STAGE_DIRS, Experiment, write_text
from wsss.training import finish_wandb

log = logging.getLogger(__name__)

StageFn = Callable[[DictConfig, Experiment], dict[str, Any]]

# pipeline stage name -> (module, maps.source override or None)
REGISTRY: dict[str, tuple[str, str | None]] = {
    "cls": ("cls", None),
    "maps_cls": ("maps", "cls"),
    "refine": ("refine", None),
    "maps_refine": ("maps", "refine"),
    "pseudo": ("pseudo", None),
    "seg": ("seg", None),
    "eval": ("eval", None),
    "predict": ("predict", None),
    "probe": ("probe", None),
}
# Stages that run no Trainer: in a DDP run only rank 0 works on them; other ranks wait for .complete.
RANK_ZERO_STAGES = ("pseudo", "eval", "predict")


def auto_pipeline(pseudo_source: str) -> list[str]:
    """The full method; refinement (DRS-dagger) only when pseudo labels come from refined maps."""
    refinement = ["refine", "maps_refine"] if pseudo_source == "refine" else []
    return ["cls", "maps_cls", *refinement, "pseudo", "seg", "eval"]


def pipeline_name(cfg: DictConfig) -> list[str]:
    """The pipeline stage names ``cfg.stage`` asks for, in order."""
    if cfg.stage == "pipeline":
        stages = cfg.pipeline.stages
        stages = auto_pipeline(cfg.pseudo.source) if stages == "auto" else list(stages)
    elif cfg.stage == "maps":
        stages = [f"maps_{cfg.maps.source}"]
    else:
        stages = [str(cfg.stage)]
    unknown = [s for s in stages if s not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(REGISTRY)}")
    return stages


def load_stage(name: str) -> StageFn:
    module, _ = REGISTRY[name]
    return importlib.import_module(f"wsss.stages.{module}").run


def stage_config(cfg: DictConfig, name: str) -> DictConfig:
    """A copy of ``cfg`` with the settings a pipeline stage name implies (maps.source)."""
    _, source = REGISTRY[name]
    if source is None:
        return cfg
    staged = cfg.copy()
    with open_dict(staged):
        staged.maps.source = source
    return staged


def _wait_for_rank_zero(exp: Experiment, name: str, poll_s: float = 2.0) -> None:
    marker = exp.stage_dir(name) / COMPLETE
    while not marker.is_file():
        time.sleep(poll_s)


@rank_zero_only
def save_config(cfg: DictConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def run_stages(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.stage`` (or the pipeline) and return ``{"<stage>/<metric>": value}``."""
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    results: dict[str, Any] = {}
    is_pipeline = cfg.stage == "pipeline"
    for name in pipeline_name(cfg):
        if is_pipeline and cfg.pipeline.skip_complete and exp.is_complete(name):
            log.info("stage %s already complete in %s; skipping", name, exp.stage_dir(name))
            metrics = exp.metrics(name)
        elif rank_zero_only.rank != 0 and name in RANK_ZERO_STAGES:
            _wait_for_rank_zero(exp, name)
            metrics = exp.metrics(name)
        else:
            seed_everything(int(cfg.seed), workers=True)
            scfg = stage_config(cfg, name)
            save_config(scfg, exp.stage_dir(name))
            log.info("running stage %s -> %s", name, exp.stage_dir(name))
            metrics = load_stage(name)(scfg, exp)
            finish_wandb()
        results.update({f"{name}/{k}": v for k, v in (metrics or {}).items()})
    return results


__all__ = ["REGISTRY", "STAGE_DIRS", "pipeline_name", "run_stages", "load_stage"]
