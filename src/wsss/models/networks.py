"""Networks from configuration: ``_target_`` specs, instantiation, and the stage networks' specs.

Every network config node (``backbone``, ``drs``, ``model``, ``segmenter``) names its class or factory
with ``_target_``; ``hydra.utils.instantiate`` builds it. Two keys of such a node are not constructor
arguments and are dropped from the spec (``META_KEYS``): ``name`` (a label for logs and reports) and
``weights`` (the file a stage initialises the network from). A spec is a plain dict, so checkpoints store
it (``weights_only=True`` loads it back) and a checkpoint rebuilds its own network with ``build``.

A new backbone or segmenter is a module with an ``nn.Module`` class and a config file naming it.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

META_KEYS = ("name", "weights")
"""Keys of a network config node that are not constructor arguments."""

DRS_OFF: dict[str, Any] = {"_target_": "wsss.drs.make_activation", "mode": "off"}
"""The activation spec of networks without DRS (the refinement network)."""


def spec(node: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The instantiation spec of a config node: a resolved plain dict without ``META_KEYS`` (top level)."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if not isinstance(data, dict) or "_target_" not in data:
        raise ValueError(f"a network config needs a _target_ (the class to build); got keys {sorted(data)}")
    return {k: v for k, v in data.items() if k not in META_KEYS}


def build(network_spec: dict[str, Any]) -> nn.Module:
    """Instantiate a spec (nested ``_target_`` nodes are built first)."""
    return instantiate(network_spec, _convert_="all")


def classifier_spec(cfg: DictConfig) -> dict[str, Any]:
    """The DRS classifier of ``cfg.model`` on ``cfg.backbone`` with the activation of ``cfg.drs``."""
    activation = spec(cfg.drs)
    return {
        **spec(cfg.model),
        "backbone": {**spec(cfg.backbone), "activation": activation},
        "activation": activation,
    }


def refiner_spec(cfg: DictConfig) -> dict[str, Any]:
    """The refinement network (DRS-dagger): the classifier's architecture with plain ReLUs."""
    return {
        **spec(cfg.model),
        "backbone": {**spec(cfg.backbone), "activation": DRS_OFF},
        "activation": DRS_OFF,
    }


def segmenter_spec(cfg: DictConfig) -> dict[str, Any]:
    """The DeepLab of ``cfg.segmenter``."""
    return spec(cfg.segmenter)
