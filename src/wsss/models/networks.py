"""Networks from configuration: ``_target_`` specs, instantiation, and the stage networks' specs.

Every network config node (``backbone``, ``drs``, ``model``, ``segmenter``) names its class or factory
with ``_target_``; ``hydra.utils.instantiate`` builds it. Two keys of such a node are not constructor
arguments and are dropped from the spec (``META_KEYS``): ``name`` (a label for logs and reports) and
``weights`` (the file a stage initialises the network from). A spec is a plain dict, so checkpoints store
it (``weights_only=True`` loads it back) and a checkpoint rebuilds its own network with ``build``.

A new backbone or segmenter is a module with an ``nn.Module`` class and a config file naming it.

``group_config``, ``classifier_from_files`` and ``segmenter_from_files`` build networks straight from the
config files (``wsss/conf/<group>/<name>.yaml``) without composing a whole config: what tests, benchmarks and
the cost model use to get the stages' networks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from wsss.errors import ConfigError
from wsss.models.segmenter_weights import load_weights
from wsss.pipeline.config import CONF_DIR

META_KEYS = ("name", "weights")
"""Keys of a network config node that are not constructor arguments."""

DRS_OFF: dict[str, Any] = {"_target_": "wsss.method.drs.make_activation", "mode": "off"}
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


def group_config(group: str, name: str, conf_dir: Path = CONF_DIR, **overrides: Any) -> DictConfig:
    """A network config node as its group file holds it (``wsss/conf/<group>/<name>.yaml``), resolved.

    A file built on others of its group (``defaults: [base, _self_]``) is merged onto them. Dotted
    ``overrides`` use ``__`` for dots (``backbone__output_stride=4`` -> ``backbone.output_stride=4``).
    ``${data.num_classes}`` / ``${data.seg_classes}`` resolve to VOC's 20 / 21.
    """
    path = Path(conf_dir) / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{path} not found; {group} configs: {', '.join(known) or '(none)'}")
    node = OmegaConf.load(path)
    if "defaults" in node:
        bases = [d for d in node.pop("defaults") if d != "_self_"]
        node = OmegaConf.merge(*(group_config(group, base, conf_dir) for base in bases), node)
    for key, value in overrides.items():
        OmegaConf.update(node, key.replace("__", "."), value, merge=True, force_add=True)
    root = OmegaConf.create({"data": {"num_classes": 20, "seg_classes": 21}, group: node})
    return OmegaConf.create(OmegaConf.to_container(root[group], resolve=True))


def classifier_from_files(
    backbone: str = "tiny",
    drs: str = "learnable",
    placement: list[str] | None = None,
    delta: float | None = None,
    num_classes: int = 20,
    head_channels: int | None = None,
    refiner: bool = False,
    **backbone_overrides: Any,
) -> nn.Module:
    """The classifier (``refiner=True``: the refinement network) the stages build from
    ``wsss/conf/backbone/<backbone>``, ``wsss/conf/drs/<drs>`` and ``wsss/conf/model/classifier``, random weights."""
    drs_node = group_config("drs", drs)
    if placement is not None:
        drs_node.placement = list(placement)
    if delta is not None:
        drs_node.delta = delta
    model = group_config("model", "classifier")
    model.num_classes, model.head_channels = num_classes, head_channels
    cfg = OmegaConf.create(
        {
            "backbone": group_config("backbone", backbone, **backbone_overrides),
            "drs": drs_node,
            "model": model,
        }
    )
    return build(refiner_spec(cfg) if refiner else classifier_spec(cfg))


def segmenter_from_files(name: str = "largefov_tiny", **overrides: Any) -> nn.Module:
    """The DeepLab of ``wsss/conf/segmenter/<name>.yaml`` (weights from its ``weights`` when set)."""

    node = group_config("segmenter", name, **overrides)
    model = build(spec(node))
    if node.get("weights"):
        load_weights(model, node.weights)
    return model
