"""What made an artifact: its defining config values, its upstream artifacts, and a hash of both.

A stage's **record** is ``{"stage", "config": {key: value}, "upstream": {name: record}, "identity"}``:
the resolved values of the stage's identity keys (``Stage.identity`` in ``wsss.pipeline.registry``) and,
recursively, the records of every artifact it reads - a chain: pseudo labels know their maps, which
know their classifier, which knows its data, backbone, DRS, seed and protocol. The **identity** is a
short hash of the stage name, its config values and its upstreams' identities; two artifacts share
an identity exactly when they were made by the same defining settings from the same inputs.

``expected_record(cfg, name)`` is what the current config would make; a stage's folder keeps what was
made (``identity.json``). ``differences`` lists every defining key on which the two disagree, with the
stage that owns it, so a refusal can name the keys and both values.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsss.constants import COMPLETE, RECORD
from wsss.pipeline.registry import STAGES, stage

PATH_KEYS = ("weights",)
"""Keys (or key suffixes) holding file paths: recorded as absolute paths."""


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _absolute(key: str, value: Any) -> Any:
    if isinstance(value, str) and value and any(key == p or key.endswith("." + p) for p in PATH_KEYS):
        return os.path.abspath(os.path.expanduser(value))
    return value


def _canonical_drs(value: dict[str, Any]) -> dict[str, Any]:
    """DRS settings reduced to what changes the network: no placement means no DRS; delta only when fixed."""
    mode = value.get("mode")
    if mode != "off" and not value.get("placement"):
        mode = "off"
    out = {"_target_": value.get("_target_"), "mode": mode}
    if mode != "off":
        out["placement"] = list(value.get("placement") or [])
    if mode == "fixed":
        out["delta"] = value.get("delta")
    return out


def _flatten(prefix: str, value: Any, out: dict[str, Any], ignore: set[str]) -> None:
    if prefix in ignore:
        return
    if isinstance(value, dict):
        if prefix == "drs":
            value = _canonical_drs(value)
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out, ignore)
        if not value:
            out[prefix] = {}
        return
    out[prefix] = _absolute(prefix, value)


def stage_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The resolved values of ``name``'s identity keys, flattened to dotted keys (sorted)."""
    declared = stage(name)
    ignore = set(declared.ignore)
    out: dict[str, Any] = {}
    for entry in declared.identity:
        key, _, flag = entry.partition(" if ")
        if flag and not _select(cfg, flag):
            continue
        _flatten(key, _select(cfg, key), out, ignore)
    content = _select(cfg, "data.content")
    if content is not None:  # the data it reads, by content (wsss.data.content.attach_content)
        for key in declared.content_keys(cfg):
            out[f"data.content.{key}"] = content.get(key)
    return dict(sorted(out.items()))


def identity_of(name: str, config: dict[str, Any], upstream: dict[str, dict[str, Any]]) -> str:
    """A 16-hex-digit hash of a stage's name, config values and upstream identities."""
    payload = {
        "stage": name,
        "config": config,
        "upstream": {k: v["identity"] for k, v in sorted(upstream.items())},
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expected_record(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The record the current config gives stage ``name`` (and, recursively, its upstreams)."""
    declared = stage(name)
    staged = staged_config(cfg, name)
    upstream = {up: current_record(cfg, up) for up in declared.upstream(staged)}
    config = stage_config(staged, name)
    return {
        "stage": name,
        "identity": identity_of(name, config, upstream),
        "config": config,
        "upstream": upstream,
    }


EXTERNAL = "external."
"""Prefix of the config keys that record where an adopted artifact came from (``wsss.stages.adopt``)."""


def declared_config(record: dict[str, Any]) -> dict[str, Any]:
    """A record's config without its ``external.*`` keys: the settings the artifact was declared with."""
    return {k: v for k, v in record.get("config", {}).items() if not k.startswith(EXTERNAL)}


def adopted_record(cfg: DictConfig, name: str) -> dict[str, Any] | None:
    """The record of an artifact adopted into ``cfg``'s experiment as ``name`` (``stage=adopt``), when it is
    complete and was declared with exactly the settings ``cfg`` gives that stage; else None."""
    folder = os.path.join(str(cfg.paths.exp_dir), stage(name).folder)
    path = os.path.join(folder, RECORD)
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(folder, COMPLETE))):
        return None
    with open(path) as fh:
        record = json.load(fh)
    if "external" not in record:
        return None
    return record if declared_config(record) == stage_config(staged_config(cfg, name), name) else None


def current_record(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The record the plan holds for ``name``: the experiment's adopted artifact when its declared settings
    are the config's (downstream stages then read it like one wsss made), else ``expected_record``."""
    return adopted_record(cfg, name) or expected_record(cfg, name)


def staged_config(cfg: DictConfig, name: str) -> DictConfig:
    """``cfg`` with the values a pipeline stage name implies (``maps.source``) and ``stage_name`` set."""
    declared = stage(name)
    staged = cfg.copy()
    OmegaConf.set_struct(staged, False)
    for key, value in declared.select.items():
        OmegaConf.update(staged, key, value, force_add=True)
    OmegaConf.update(staged, "stage_name", name, force_add=True)
    OmegaConf.set_struct(staged, True)
    return staged


def differences(expected: dict[str, Any], recorded: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """``(stage, key, recorded value, current value)`` for every defining key that differs, upstream first."""
    found: list[tuple[str, str, Any, Any]] = []
    for up in sorted(set(expected.get("upstream", {})) | set(recorded.get("upstream", {}))):
        mine, theirs = expected.get("upstream", {}).get(up), recorded.get("upstream", {}).get(up)
        if mine is None or theirs is None:
            found.append(
                (expected["stage"], f"(reads {up})", "yes" if theirs else "no", "yes" if mine else "no")
            )
        elif mine["identity"] != theirs["identity"]:
            found += differences(mine, theirs)
    now, before = expected.get("config", {}), recorded.get("config", {})
    for key in sorted(set(now) | set(before)):
        if now.get(key, "<absent>") != before.get(key, "<absent>"):
            found.append((expected["stage"], key, before.get(key, "<absent>"), now.get(key, "<absent>")))
    return found


def describe(diffs: list[tuple[str, str, Any, Any]], limit: int = 12) -> str:
    """The differences as indented lines: ``stage: key: made with X, now Y`` (each key once, upstream first)."""
    seen: set[str] = set()
    unique = [d for d in diffs if not (d[1] in seen or seen.add(d[1]))]
    lines = [f"    {s}: {k}: made with {before!r}, now {now!r}" for s, k, before, now in unique[:limit]]
    if len(unique) > limit:
        lines.append(f"    ... and {len(unique) - limit} more")
    return "\n".join(lines)


def upstream_names(record: dict[str, Any]) -> set[str]:
    """Every stage name in a record's chain (not the record's own)."""
    names: set[str] = set()
    for name, up in record.get("upstream", {}).items():
        names |= {name} | upstream_names(up)
    return names


__all__ = [
    "STAGES",
    "current_record",
    "describe",
    "differences",
    "expected_record",
    "identity_of",
    "stage_config",
]
