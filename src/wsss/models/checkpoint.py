"""Networks rebuilt from stage checkpoints: every ``best.ckpt`` carries the spec of its network.

A task (``wsss.tasks``) stores ``hyper_parameters["network"]`` (the ``_target_`` spec, plain containers)
and Lightning stores the weights under ``state_dict`` with the ``model.`` prefix. ``load_network`` reads
the file with ``weights_only=True`` and rebuilds exactly that network: a later stage never rebuilds it
from today's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.errors import CorruptArtifactError, MissingArtifactError
from wsss.models.networks import build
from wsss.models.torch_files import load_torch_file, non_finite_tensors


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"checkpoint {path} not found; run the stage that writes it first")
    ckpt = load_torch_file(
        path,
        error=CorruptArtifactError,
        what="not a readable checkpoint",
        fix="rerun the stage that wrote it with force=true",
    )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CorruptArtifactError(f"{path}: not a Lightning checkpoint (no state_dict); rerun its stage")
    return ckpt


def network_state(
    ckpt: dict[str, Any], path: str | Path = "checkpoint", prefix: str = "model."
) -> dict[str, torch.Tensor]:
    """The network's weights of a checkpoint (keys under ``prefix``, prefix removed)."""
    state = ckpt["state_dict"]
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise CorruptArtifactError(
            f"{path}: no weights under '{prefix}' (keys start with {sorted(state)[:3]})"
        )
    return picked


def network_spec(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """The ``_target_`` spec a checkpoint's network was built from."""
    spec = (ckpt.get("hyper_parameters") or {}).get("network")
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise CorruptArtifactError(
            f"{path} records no network spec (hyper_parameters['network']): it was written by an older wsss; "
            "rerun the stage that made it with force=true"
        )
    return spec


def load_network(path: str | Path) -> nn.Module:
    """The network of a stage checkpoint, rebuilt from its own spec, with its weights, in eval mode."""
    ckpt = read_checkpoint(path)
    state = network_state(ckpt, path)
    bad = non_finite_tensors(state)
    if bad:
        raise CorruptArtifactError(
            f"{path}: the network's weights hold NaN or infinite values ({len(bad)} tensors, e.g. {bad[0]}): "
            "its training diverged. Remake that stage with a lower learning rate and force=true"
        )
    net = build(network_spec(ckpt, path))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys, shape mismatch
        raise CorruptArtifactError(
            f"{path}: its weights do not fit the network it records ({str(err).splitlines()[0]}); "
            "rerun the stage that wrote it with force=true"
        ) from err
    return net.eval()


def _checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, global step) stored in a Lightning checkpoint, or None when it cannot be read."""
    try:
        ckpt = load_torch_file(path, error=CorruptArtifactError, what="unreadable", fix="", mmap=True)
        return int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1))
    except (CorruptArtifactError, AttributeError, TypeError, ValueError):  # not a checkpoint's dict
        return None  # only used to describe the file in a message


def last_good_checkpoint(folder: str | Path) -> str:
    """A sentence naming the last checkpoint (``last.ckpt``) in ``folder`` and its epoch and step, for
    messages about a training stage that stopped."""
    last = Path(folder) / "last.ckpt"
    if not last.is_file():
        return "No checkpoint was saved before that."
    where = _checkpoint_position(last)
    at = f" (epoch {where[0]}, step {where[1]})" if where else ""
    return f"The last checkpoint saved before that is {last}{at}; the stage is not marked complete."
