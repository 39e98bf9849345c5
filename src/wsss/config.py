"""Config helpers: custom resolvers, validation of choices, and the rank-0 config printout."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

PROTOCOLS = ("paper", "release")
DRS_MODES = ("learnable", "fixed", "off")
DRS_LAYERS = ("layer1", "layer2", "layer3", "layer4", "layer5", "layer6")
MAP_SOURCES = ("cls", "refine")


class ConfigError(ValueError):
    """A config value outside what wsss supports."""


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


def _check(value: object, allowed: Sequence[object], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}")


def validate(cfg: DictConfig) -> None:
    """Reject bad values early, naming the key and the allowed choices."""
    _check(cfg.protocol, PROTOCOLS, "protocol")
    _check(cfg.drs.mode, DRS_MODES, "drs.mode")
    bad_layers = [layer for layer in cfg.drs.placement if layer not in DRS_LAYERS]
    if bad_layers:
        raise ConfigError(
            f"drs.placement has unknown layers {bad_layers}; use a list drawn from {list(DRS_LAYERS)}"
        )
    if not 0.0 < float(cfg.drs.delta) <= 1.0:
        raise ConfigError(f"drs.delta={cfg.drs.delta} must be in (0, 1]")
    _check(cfg.maps.source, MAP_SOURCES, "maps.source")
    from wsss.tasks.classifier import OPTIMIZERS

    _check(cfg.cls.get("optimizer", "sgd"), OPTIMIZERS, "cls.optimizer")
    if int(cfg.data.num_classes) != 20:
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes}: wsss targets PASCAL VOC (20 foreground classes); "
            "the toy dataset uses the same 20 classes"
        )
    if "/" in str(cfg.exp).strip("/") and ".." in str(cfg.exp).split("/"):
        raise ConfigError(f"exp={cfg.exp!r} must not climb out of paths.runs")


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Print the composed config as a tree (rank 0 only)."""
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, node in cfg.items():
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else f"{node}\n"
        tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark"))
    rprint(tree)
