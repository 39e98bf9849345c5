"""Commands printed in messages ("produce it first with: ..."), built so that pasting them works.

Every command carries the user's own overrides (recipe, data paths, ...) from the command line, minus
the ones that pick the stage, plus ``exp=`` and ``paths.runs=`` so it lands in the same folder.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

from wsss.pipeline.registry import stage

SELECTING = ("stage", "maps.source", "pipeline.stages", "force", "+force", "++force")
"""Overrides a hint replaces: they pick what runs, not how it is made."""


def user_overrides(cfg: DictConfig) -> list[str]:
    """The command-line overrides of this run (none outside Hydra), without the stage-selecting ones."""
    from hydra.core.hydra_config import HydraConfig

    task: list[str] = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in task if o.split("=", 1)[0] not in SELECTING]
    keys = {o.split("=", 1)[0].lstrip("+") for o in kept}
    if "exp" not in keys:
        kept.append(f"exp={cfg.exp}")
    if "paths.runs" not in keys:
        kept.append(f"paths.runs={cfg.paths.runs}")
    return kept


def program() -> str:
    """How this run was started, as a user types it: ``wsss`` (the console script) or ``python train.py``."""
    return "wsss" if Path(sys.argv[0]).name == "wsss" else "python train.py"


def command(cfg: DictConfig, names: list[str], extra: tuple[str, ...] = ()) -> str:
    """``python train.py ...`` (or ``wsss ...``) that runs the stages ``names`` (one stage alone, or a pipeline)."""
    if len(names) == 1:
        head = stage(names[0]).cli.split()
    else:
        head = ["stage=pipeline", f"pipeline.stages=[{','.join(names)}]"]
    args = [*head, *user_overrides(cfg), *extra]
    return f"{program()} " + " ".join(shlex.quote(a) for a in args)


def adopt_command(cfg: DictConfig, name: str, path: str) -> str:
    """``wsss stage=adopt ...`` that adopts ``path`` as ``name`` again under this run's settings."""
    args = ["stage=adopt", f"adopt.stage={name}", f"adopt.path={path}", *user_overrides(cfg), "force=true"]
    return f"{program()} " + " ".join(shlex.quote(a) for a in args)
