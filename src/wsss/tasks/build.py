"""LightningModules and optimizers from ``_target_`` specs, as networks are (``wsss.models.networks``).

A training stage's settings hold ``task``: the LightningModule's class (``_target_``) and its arguments,
which follow the stage's own keys by interpolation (``cls.task.lr_steps: ${cls.lr_steps}``); the stage
adds the network and what it computes. The task's ``optimizer`` is a spec of the same kind, called with
the task's parameter groups. A custom task or optimizer is an override of ``_target_`` (plus its own
arguments); a class that cannot be imported or does not take the arguments is a ``ConfigError`` naming
the key, before any work.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from wsss.errors import ConfigError


def resolve_target(
    spec: Mapping[str, Any], key: str, *args: Any, **extra: Any
) -> tuple[type, dict[str, Any]]:
    """The class of ``spec["_target_"]`` and the keyword arguments of ``spec`` (``_target_`` removed),
    checked to fit its constructor with ``args`` and ``extra``."""
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    target = spec.get("_target_")
    if not target:
        raise ConfigError(
            f"{key} has no _target_; give the class to build, e.g. {key}._target_=<module.Class>"
        )
    try:
        cls = get_class(str(target))
    except Exception as err:  # ImportError, AttributeError, ValueError: all mean "no such class"
        raise ConfigError(
            f"{key}._target_={target}: cannot be imported ({err}); give an importable class"
        ) from err
    try:
        inspect.signature(cls).bind(*args, **kwargs, **extra)
    except TypeError as err:
        raise ConfigError(
            f"{key}: {target} does not take these arguments ({err}); fix or remove the key"
        ) from err
    return cls, kwargs


def instantiate_task(node: DictConfig, key: str, model: torch.nn.Module, **extra: Any) -> Any:
    """The LightningModule of ``node`` (``<stage>.task``) around ``model``; ``extra`` are the arguments
    the stage computes (the network spec, ...)."""
    spec = OmegaConf.to_container(node, resolve=True)
    assert isinstance(spec, dict)
    cls, kwargs = resolve_target(spec, key, model, **extra)
    return cls(model, **kwargs, **extra)


def build_optimizer(spec: Mapping[str, Any], params: Iterable[Any], key: str) -> torch.optim.Optimizer:
    """``spec``'s optimizer over ``params`` (parameter groups may set their own ``lr`` and
    ``weight_decay``; the spec's values are the defaults of the groups that do not)."""
    groups = list(params)
    cls, kwargs = resolve_target(spec, key, groups)
    return cls(groups, **kwargs)


def base_lr(spec: Mapping[str, Any], key: str) -> float:
    """The optimizer spec's ``lr``: the rate the task's parameter groups are multiples of."""
    if "lr" not in spec:
        raise ConfigError(
            f"{key} has no lr; the task's parameter groups are multiples of it: add {key}.lr=<rate>"
        )
    return float(spec["lr"])


STAGE_ADDS: dict[str, tuple[str, ...]] = {
    "cls": ("network", "map_miou"),
    "refine": ("network",),
    "seg": ("network",),
}
"""The training stages, and the arguments each adds to its ``<stage>.task`` (besides the network itself)."""


def check_tasks(cfg: DictConfig, stages: Iterable[str]) -> None:
    """Before any work: the task and optimizer of every training stage in ``stages`` import and take
    their arguments (``ConfigError`` naming the key otherwise)."""
    for stage in [s for s in stages if s in STAGE_ADDS]:
        spec = OmegaConf.to_container(cfg[stage].task, resolve=True)
        assert isinstance(spec, dict)
        resolve_target(spec, f"{stage}.task", None, **dict.fromkeys(STAGE_ADDS[stage]))
        optimizer = spec.get("optimizer")
        if isinstance(optimizer, dict):
            resolve_target(optimizer, f"{stage}.task.optimizer", [])
