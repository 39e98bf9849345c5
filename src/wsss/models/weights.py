"""Weights from files the user brings (never downloaded): format detection, key mapping, a load report.

Formats, told apart by their keys:

- ``torchvision_vgg16``: ``features.N.weight|bias`` (+ ``classifier.*``, skipped) -> the VGG-16 backbone;
- ``torchvision_resnet``: ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight`` ... (+ ``fc.*``, skipped);
- ``release``: the authors' classifier checkpoints (a state dict, or ``{"model": state_dict, ...}``),
  keys ``layer{b}_conv{i}``, ``layer{b}_relu{i}.fc.0.weight``, ``extra_conv{1..4}``,
  ``extra_relu{1..3}.fc.0.weight``, optionally prefixed ``module.``; their ``features.N.*`` keys alias
  the same conv tensors and are ignored;
- ``wsss``: this project's classifier (``backbone.*``, ``head.*``, ``classifier.*``), bare or as a
  Lightning checkpoint (``state_dict`` with the ``model.`` prefix).

Files are read with ``torch.load(..., weights_only=True)``. A tensor whose shape differs from the
model's is an error naming the key and both shapes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from wsss.errors import MissingWeightsError, WeightsError
from wsss.method.drs import DRS
from wsss.models.torch_files import load_torch_file

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("torchvision_vgg16", "torchvision_resnet", "release", "wsss")
BACKBONE_FORMATS = ("torchvision_vgg16", "torchvision_resnet")

_RELEASE_KEY = re.compile(r"^(layer\d+_(conv|relu)\d+|extra_(conv|relu)\d+)\.")
_RELEASE_BLOCK = re.compile(r"^layer(\d+)_(conv|relu)(\d+)\.(.+)$")
_RELEASE_EXTRA = re.compile(r"^extra_(conv|relu)(\d+)\.(.+)$")
_ALIAS = re.compile(r"^features\.\d+\.")


@dataclass
class LoadReport:
    """What a load did: the detected format and the keys loaded, skipped (file only) and missing (model only)."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    aliases: int = 0

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        text = f"{self.path} ({self.format}): loaded {len(self.loaded)} tensors"
        if self.aliases:
            text += f"; ignored {self.aliases} duplicated features.N aliases"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} not in the model: {few(self.skipped)}"
        if self.missing:
            text += f"; {len(self.missing)} model tensors keep their init: {few(self.missing)}"
        return text


WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict")
"""Keys under which checkpoint files keep their state dict (Lightning, the DRS release, VainF's DeepLab-V3+)."""


def read_state_dict(path: str | Path, config_key: str) -> dict[str, Tensor]:
    """The tensors of a weights file (the one reader of weights files in wsss).

    Accepts a state dict, a checkpoint wrapping one (``WRAPPERS``), or a caffe blob dump saved as
    ``.npz``; strips a ``module.`` (DataParallel) and a ``model.`` (Lightning) prefix.
    """
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{config_key}={path}: no such file. Set {config_key}=<path to a weights file> "
            f"(weights are never downloaded) or {config_key}=null."
        )
    if path.suffix == ".npz":
        try:
            with np.load(path) as data:
                obj: object = {k: torch.from_numpy(np.asarray(data[k])) for k in data.files}
        except Exception as err:  # zip and pickle errors come in many types
            raise WeightsError(
                f"{config_key}={path}: not a readable .npz file ({type(err).__name__})"
            ) from err
    else:
        obj = load_torch_file(
            path,
            error=WeightsError,
            what="could not be read as a weights file with torch.load(weights_only=True)",
            fix="save plain state dicts (tensors only)",
            name=f"{config_key}={path}",
        )
    for wrapper in WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{config_key}={path}: holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise WeightsError(f"{config_key}={path}: no tensors found in the file")
    return strip_prefix(strip_prefix(state, "module."), "model.")


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` without it, when there are any (other keys are dropped); else unchanged.

    The one prefix rule of wsss: ``module.`` (DataParallel), ``model.`` (Lightning), ``base.`` (the
    release's multi-scale wrapper)."""
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return picked or dict(state)


FORMATS = (
    "release_classifier",
    "release_deeplabv2",
    "release_deeplabv2_coco_init",
    "release_deeplabv3plus",
    "wsss_classifier",
    "wsss_segmenter",
    "torchvision_vgg16",
    "torchvision_resnet",
    "caffe_vgg16",
    "caffe_resnet",
)
"""Every weights layout wsss reads, by the names ``detect_format`` gives them (one vocabulary)."""
MSC_PREFIX = "base."
"""Key prefix of the release DeepLab-V2's multi-scale wrapper."""
RELEASE_V2_ASPP = re.compile(r"^aspp\.c(\d+)\.(weight|bias)$")
_V3P_KEY = "classifier.aspp.convs.0.0.weight"


def detect_format(state: Mapping[str, Tensor]) -> str:
    """One of ``FORMATS`` from the keys of a state dict (``module.`` / ``model.`` already stripped)."""
    state = strip_prefix(state, MSC_PREFIX)
    keys = list(state)
    if _V3P_KEY in state:
        return "release_deeplabv3plus"
    if "layer1.conv1.conv.weight" in state:
        if any(RELEASE_V2_ASPP.match(k) for k in keys):
            return "release_deeplabv2"
        return "release_deeplabv2_coco_init"
    if any(_RELEASE_KEY.match(k) for k in keys):
        return "release_classifier"
    if "classifier.weight" in state and any(k.startswith("backbone.") for k in keys):
        return "wsss_classifier"
    if any(k.startswith(("backbone.", "head.")) for k in keys):
        return "wsss_segmenter" if any(k.startswith("head.") for k in keys) else "wsss_classifier"
    if any(k.startswith("layer1.0.") for k in keys):
        return "torchvision_resnet"
    if any(k.startswith("features.") for k in keys):
        return "torchvision_vgg16"
    if "conv1_1.0" in state:
        return "caffe_vgg16"
    if "res2a_branch2a.0" in state:
        return "caffe_resnet"
    raise WeightsError(
        f"unknown weights format (first keys: {keys[:5]}); expected a torchvision vgg16/resnet state dict, "
        "the authors' DRS checkpoint (layer1_conv1.weight ...), the release's DeepLab-V2/V3+ files, a wsss "
        "checkpoint (backbone.* / model.backbone.*), or a caffe blob dump (conv1_1.0 / res2a_branch2a.0)"
    )


def release_to_wsss(state: Mapping[str, Tensor], conv_indices: Mapping[str, list[int]]) -> tuple[dict, int]:
    """Map release keys onto the wsss VGG classifier; returns (state, number of ignored aliases).

    ``layer{b}_conv{i}`` -> ``backbone.features.<index of that conv>``, ``layer{b}_relu{i}`` -> the
    module after it; ``extra_conv{1,2,3}`` / ``extra_relu{1,2,3}`` -> ``head.{0..5}``;
    ``extra_conv4`` -> ``classifier``. Keys outside this scheme are kept as they are (and reported).
    """
    out: dict[str, Tensor] = {}
    aliases = 0
    for key, value in state.items():
        if _ALIAS.match(key):
            aliases += 1
            continue
        block = _RELEASE_BLOCK.match(key)
        extra = _RELEASE_EXTRA.match(key)
        if block:
            b, kind, i, rest = block.groups()
            convs = conv_indices.get(f"layer{b}", [])
            if not 1 <= int(i) <= len(convs):
                out[key] = value
                continue
            index = convs[int(i) - 1] + (1 if kind == "relu" else 0)
            out[f"backbone.features.{index}.{rest}"] = value
        elif extra:
            kind, j, rest = extra.groups()
            j = int(j)
            if kind == "conv" and j == 4:
                out[f"classifier.{rest}"] = value
            elif 1 <= j <= 3:
                out[f"head.{2 * (j - 1) + (1 if kind == 'relu' else 0)}.{rest}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    return out, aliases


def _assign(module: nn.Module, state: Mapping[str, Tensor], report: LoadReport, config_key: str) -> None:
    """Copy matching tensors into ``module``; shape mismatches are errors; fills the report."""
    own = module.state_dict()
    picked: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.skipped.append(key)
            continue
        if tuple(own[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{config_key}={report.path}: '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model; the file was made for another architecture "
                "(check backbone=..., drs=..., data.num_classes and model.head_channels)"
            )
        picked[key] = value
    module.load_state_dict(picked, strict=False)
    report.loaded = sorted(picked)
    report.missing = [k for k in own if k not in picked]


def _drs_keys(module: nn.Module, prefix: str = "") -> set[str]:
    return {
        f"{prefix}{name}.{p}" if name else f"{prefix}{p}"
        for name, m in module.named_modules()
        if isinstance(m, DRS)
        for p, _ in m.named_parameters()
    }


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, config_key: str = "backbone.weights"
) -> LoadReport:
    """ImageNet (or any classifier's) backbone weights into ``backbone``; DRS controllers keep their init."""
    state = read_state_dict(path, config_key)
    fmt = detect_format(state)
    report = LoadReport(str(path), fmt)
    if fmt == "release_classifier":
        conv_indices = getattr(backbone, "conv_indices", None)
        if conv_indices is None:
            raise WeightsError(
                f"{config_key}={path}: the authors' DRS checkpoints are VGG-16; use backbone=vgg16"
            )
        state, report.aliases = release_to_wsss(state, conv_indices)
    if fmt in ("release_classifier", "wsss_classifier", "wsss_segmenter"):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    _assign(backbone, state, report, config_key)
    if not report.loaded:
        raise WeightsError(
            f"{config_key}={path}: no tensor of this {fmt} file fits the {type(backbone).__name__} backbone "
            f"(file keys such as {sorted(state)[:3]}); pick the backbone=... the file was made for"
        )
    unexpected_missing = [k for k in report.missing if k not in _drs_keys(backbone)]
    if unexpected_missing:
        log.warning(
            "%s: backbone tensors not in the file keep their init: %s", config_key, unexpected_missing[:8]
        )
    log.info("%s: %s", config_key, report.summary())
    return report


def load_classifier_weights(
    model: nn.Module, path: str | Path, config_key: str = "model.weights"
) -> LoadReport:
    """A whole classifier (wsss or the authors' release) into ``model``; every tensor must match."""
    state = read_state_dict(path, config_key)
    fmt = detect_format(state)
    report = LoadReport(str(path), fmt)
    if fmt in BACKBONE_FORMATS:
        raise WeightsError(
            f"{config_key}={path} holds {fmt} ImageNet weights (a backbone only); pass it as "
            "backbone.weights=<file> instead, or give a whole classifier checkpoint here"
        )
    if fmt == "release_classifier":
        conv_indices = getattr(getattr(model, "backbone", None), "conv_indices", None)
        if conv_indices is None:
            raise WeightsError(
                f"{config_key}={path}: the authors' DRS checkpoints are VGG-16; use backbone=vgg16"
            )
        state, report.aliases = release_to_wsss(state, conv_indices)
    _assign(model, state, report, config_key)
    if report.missing or report.skipped:
        drs_missing = [k for k in report.missing if k in _drs_keys(model)]
        hint = (
            " The file has no DRS controller weights for this model: it was trained with drs=fixed or "
            "drs=off, or with another drs.placement; set drs=... to match."
            if drs_missing
            else " Set backbone=..., drs=... and drs.placement to what the file was trained with."
        )
        raise WeightsError(
            f"{config_key}={path} ({fmt}) does not match the model: missing {report.missing[:6]} "
            f"({len(report.missing)}), not in the model {report.skipped[:6]} ({len(report.skipped)}).{hint}"
        )
    log.info("%s: %s", config_key, report.summary())
    return report


def init_score_network(
    net: nn.Module, backbone_weights: str | None, model_weights: str | None = None, backbone_name: str = ""
) -> None:
    """Initialise a classifier or refiner: a whole-network file (``model.weights``) wins over the
    backbone's ImageNet file (``backbone.weights``); without either a real backbone starts random (warned)."""
    if model_weights:
        load_classifier_weights(net, model_weights)
    elif backbone_weights:
        load_backbone_weights(net.backbone, backbone_weights)
    elif backbone_name and backbone_name != "tiny":
        log.warning(
            "backbone.weights is null: the %s backbone starts from random weights. The paper initialises "
            "it from ImageNet; set backbone.weights=<torchvision %s .pth file>.",
            backbone_name,
            backbone_name,
        )
