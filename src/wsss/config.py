"""Config helpers: custom resolvers, validation of values up front, and the rank-0 config printout.

Nothing here imports torch: a bad value or a broken plan is reported in about a second.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from wsss.constants import DRS_LAYERS, DRS_MODES
from wsss.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
MAP_SOURCES = ("cls", "refine")

__all__ = ["ConfigError", "print_config", "register_resolvers", "run_id", "validate"]


def run_id() -> str:
    """A unique experiment name: time, process id and a random suffix.

    Stored in ``$WSSS_RUN_ID`` on first use, so DDP ranks that Lightning starts by re-executing
    the script (they inherit the environment) resolve the same folder.
    """
    if "WSSS_RUN_ID" not in os.environ:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        os.environ["WSSS_RUN_ID"] = f"{stamp}_{os.getpid()}_{secrets.token_hex(2)}"
    return os.environ["WSSS_RUN_ID"]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wsss_run_id"):
        OmegaConf.register_new_resolver("wsss_run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("wsss_dirname"):
        from wsss.sweeps import job_dirname

        OmegaConf.register_new_resolver("wsss_dirname", job_dirname)


def _check(value: object, allowed: Sequence[object], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}")


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number") from None


def validate(cfg: DictConfig) -> None:
    """Reject bad values early, naming the key and the allowed choices."""
    _check(cfg.protocol, ("paper", "release"), "protocol")
    _check(cfg.drs.mode, DRS_MODES, "drs.mode")
    placement = cfg.drs.placement
    if not OmegaConf.is_list(placement):
        raise ConfigError(
            f"drs.placement={placement!r} must be a list of blocks, e.g. drs.placement=[{placement}] "
            f"or drs.placement=[layer4,layer5,layer6]; blocks: {list(DRS_LAYERS)}"
        )
    bad_layers = [layer for layer in placement if layer not in DRS_LAYERS]
    if bad_layers:
        raise ConfigError(
            f"drs.placement has unknown layers {bad_layers}; use a list drawn from {list(DRS_LAYERS)}"
        )
    if not 0.0 < _number(cfg, "drs.delta") <= 1.0:
        raise ConfigError(f"drs.delta={cfg.drs.delta} must be in (0, 1]")
    _check(cfg.maps.source, MAP_SOURCES, "maps.source")
    _check(cfg.cls.optimizer, OPTIMIZERS, "cls.optimizer")
    if int(cfg.data.num_classes) != 20:
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes}: wsss targets PASCAL VOC (20 foreground classes); "
            "the toy dataset uses the same 20 classes"
        )
    if int(cfg.data.seg_classes) != int(cfg.data.num_classes) + 1:
        raise ConfigError(
            f"data.seg_classes={cfg.data.seg_classes} must be data.num_classes + 1 (background)"
        )
    parts = str(cfg.exp).replace("\\", "/").split("/")
    if ".." in parts or str(cfg.exp).startswith("/"):
        raise ConfigError(f"exp={cfg.exp!r} must be a folder name under paths.runs (no '..', not absolute)")


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def print_config(cfg: DictConfig) -> None:
    """Print the composed config as a tree (rank 0 only)."""
    if not _is_rank_zero():
        return
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, node in cfg.items():
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else f"{node}\n"
        tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark"))
    rprint(tree)
