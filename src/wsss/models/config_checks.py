"""Network settings checked before any stage builds a network: a bad key or value is a ``ConfigError``.

A network config node (``backbone``, ``drs``, ``model``, ``segmenter`` and the ``_target_`` nodes inside
them) is handed to its class's constructor by ``hydra.utils.instantiate``. Left to that moment, a key the
class does not take (``backbone.output_stride`` on a backbone without one) is a ``TypeError`` and a value
it refuses a ``ValueError``, both inside a Hydra ``InstantiationException``, after data checks and
minutes of work. ``check_networks`` finds both up front: every key must be an argument of its class, and
the networks the planned stages use must build, on PyTorch's meta device (no memory, no weights read,
well under a second for ResNet-101). The refusal names the key and the choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsss.errors import ConfigError, WsssError
from wsss.models.networks import META_KEYS, build, classifier_spec, segmenter_spec

CLASSIFIER_STAGES = frozenset({"cls", "maps_cls", "refine", "maps_refine", "probe"})
"""Stages that build the classifier (or its refiner twin) from ``backbone``, ``drs`` and ``model``."""
SEGMENTER_STAGES = frozenset({"seg", "eval", "predict"})
"""Stages that build the segmenter from ``segmenter``."""
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})


def _parameters(target: str) -> tuple[set[str], bool] | None:
    """(argument names, takes ``**kwargs``) of the class or function ``target``; None if not found."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 - a target that does not import is reported by instantiate itself
        return None
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def unknown_keys(node: Any, path: str, meta: Iterable[str] = ()) -> list[tuple[str, Any, str, list[str]]]:
    """(dotted key, value, target, accepted arguments) of every key of ``node`` and its nested
    ``_target_`` nodes that its class does not take. ``meta``: top-level keys that are not arguments."""
    found: list[tuple[str, Any, str, list[str]]] = []
    if not isinstance(node, dict):
        return found
    target = node.get("_target_")
    accepted = _parameters(str(target)) if target else None
    skip = HYDRA_KEYS | set(meta)
    for key, value in node.items():
        if key in skip:
            continue
        if accepted is not None and not accepted[1] and key not in accepted[0]:
            found.append((f"{path}.{key}", value, str(target), sorted(accepted[0])))
        if isinstance(value, dict):
            found += unknown_keys(value, f"{path}.{key}")
    return found


def _choice(cfg: DictConfig, group: str) -> str:
    node = cfg.get(group)
    name = node.get("name") if isinstance(node, DictConfig) else None
    return f"{group}={name}" if name else group


def check_keys(cfg: DictConfig, groups: Iterable[str]) -> None:
    """Every key of the network nodes ``groups`` is an argument of its class."""

    for group in groups:
        node = cfg.get(group)
        if node is None:
            continue
        data = OmegaConf.to_container(node, resolve=True)
        bad = unknown_keys(data, group, META_KEYS)
        if bad:
            key, value, target, accepted = bad[0]
            takes = ", ".join(a for a in accepted if a != "activation") or "(nothing)"
            raise ConfigError(
                f"{key}={value!r} is not a setting of {_choice(cfg, group)} ({target} takes: {takes}). "
                f"Remove it (~{key}) or pick a {group} that has it; an experiment that sets it "
                f"(e.g. experiment=toy sets backbone.output_stride) needs a {group} that takes it."
            )


def check_builds(cfg: DictConfig, group: str, make: Any) -> None:
    """Build ``make(cfg)``'s network on the meta device; a value its constructor refuses is a
    ``ConfigError`` naming the group (the constructors' messages name the key)."""
    import torch
    from hydra.errors import InstantiationException

    try:
        with torch.device("meta"):
            build(make(cfg))
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):  # a value the constructor refuses: name the network too
            raise ConfigError(f"{_choice(cfg, group)} cannot be built with these settings: {cause}") from err
        if isinstance(cause, WsssError):
            raise cause from err
        if isinstance(cause, ValueError):
            raise ConfigError(f"{_choice(cfg, group)} cannot be built with these settings: {cause}") from err
        raise  # anything else is a bug in the network's code: keep the traceback


def check_networks(cfg: DictConfig, stages: Iterable[str]) -> None:
    """Before any work: the networks ``stages`` build take every key of their config nodes and accept
    their values (``ConfigError`` naming the key otherwise)."""

    names = set(stages)
    if names & CLASSIFIER_STAGES:
        check_keys(cfg, ("backbone", "drs", "model"))
        check_builds(cfg, "backbone", classifier_spec)
    if names & SEGMENTER_STAGES and cfg.get("segmenter") is not None:
        check_keys(cfg, ("segmenter",))
        check_builds(cfg, "segmenter", segmenter_spec)
