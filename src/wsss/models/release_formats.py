"""The authors' release file formats <-> wsss state dicts, both ways (listings: tests/data/release_formats/).

DeepLab-V2 (kazuto1011's DeepLab-V2-PyTorch; ``wsss.models.deeplabv2``):

====================================================  ==========================================
release (``base.`` in trained checkpoints)            wsss ``DeepLab`` / ``DeepLabV2``
====================================================  ==========================================
``layer1.conv1.conv.*`` / ``layer1.conv1.bn.*``       ``backbone.conv1.*`` / ``backbone.bn1.*``
``layer{L}.block{b}.reduce.{conv,bn}.*``              ``backbone.layer{L-1}.{b-1}.{conv1,bn1}.*``
``layer{L}.block{b}.conv3x3.{conv,bn}.*``             ``backbone.layer{L-1}.{b-1}.{conv2,bn2}.*``
``layer{L}.block{b}.increase.{conv,bn}.*``            ``backbone.layer{L-1}.{b-1}.{conv3,bn3}.*``
``layer{L}.block1.shortcut.{conv,bn}.*``              ``backbone.layer{L-1}.0.downsample.{0,1}.*``
``aspp.c{i}.weight|bias``                             ``head.branches.{i}.fc8.weight|bias``
``fc.*`` (COCO init only: its class layer)            skipped
====================================================  ==========================================

``L`` = 2..5 (res2..res5). The trained checkpoint (``checkpoint_final.pth``) is the multi-scale
wrapper's state dict (``base.`` prefix); the COCO init (``deeplabv1_resnet101-coco.pth``) has no prefix
and is loaded with the ASPP left at its init, as the release does (``strict=False``). wsss's
``FrozenBatchNorm2d`` keeps no ``num_batches_tracked``; writing the release layout adds them as 0.

DeepLab-V3+ (VainF's DeepLabV3Plus-Pytorch; ``wsss.models.deeplabv3plus``): the same keys on both
sides; the release wraps them as ``{"model_state": state_dict, ...}``.

DRS classifier / refiner (the authors' VGG-16): ``wsss.models.weights.release_to_wsss`` reads them;
``classifier_wsss_to_release`` writes them (with the ``features.N`` aliases the release files hold).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from wsss.errors import WeightsError
from wsss.models.deeplabv2 import MultiScaleInputs
from wsss.models.weights import (
    MSC_PREFIX,
    RELEASE_V2_ASPP,
    LoadReport,
    detect_format,
    read_state_dict,
    strip_prefix,
)

log = logging.getLogger(__name__)

_V2_UNITS = {"reduce": 1, "conv3x3": 2, "increase": 3}
_V2_UNIT_NAMES = {v: k for k, v in _V2_UNITS.items()}
_V2_STEM = re.compile(r"^layer1\.conv1\.(conv|bn)\.(.+)$")
_V2_BLOCK = re.compile(r"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(.+)$")
_W_STEM = re.compile(r"^backbone\.(conv1|bn1)\.(.+)$")
_W_UNIT = re.compile(r"^backbone\.layer([1-4])\.(\d+)\.(conv|bn)([123])\.(.+)$")
_W_SHORTCUT = re.compile(r"^backbone\.layer([1-4])\.0\.downsample\.([01])\.(.+)$")
_W_HEAD = re.compile(r"^head\.branches\.(\d+)\.fc8\.(weight|bias)$")


def deeplabv2_release_to_wsss(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Release DeepLab-V2 keys (``base.`` optional) -> ``DeepLab`` keys; returns (state, skipped ``fc.*`` keys)."""
    out: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in strip_prefix(state, MSC_PREFIX).items():
        if stem := _V2_STEM.match(key):
            kind, rest = stem.groups()
            out[f"backbone.{'conv1' if kind == 'conv' else 'bn1'}.{rest}"] = value
        elif block := _V2_BLOCK.match(key):
            layer, b, unit, kind, rest = block.groups()
            prefix = f"backbone.layer{int(layer) - 1}.{int(b) - 1}"
            if unit == "shortcut":
                out[f"{prefix}.downsample.{0 if kind == 'conv' else 1}.{rest}"] = value
            else:
                out[f"{prefix}.{kind}{_V2_UNITS[unit]}.{rest}"] = value
        elif aspp := RELEASE_V2_ASPP.match(key):
            out[f"head.branches.{aspp.group(1)}.fc8.{aspp.group(2)}"] = value
        elif key.startswith("fc."):
            skipped.append(key)
        else:
            raise WeightsError(
                f"'{key}' is not a key of the release's DeepLab-V2 (layer1.conv1.*, layer{{2..5}}.block{{b}}.*, "
                "aspp.c{i}.*, fc.*); is this file a DeepLab-V2 checkpoint of kazuto1011's DeepLab-V2-PyTorch?"
            )
    return out, skipped


def deeplabv2_wsss_to_release(state: Mapping[str, Tensor], prefix: str = MSC_PREFIX) -> dict[str, Tensor]:
    """``DeepLab`` keys (``base.`` optional) -> the release's layout, in its order, with ``prefix`` (``base.``
    for a trained checkpoint, ``""`` for the bare network); BNs without ``num_batches_tracked`` get 0."""
    out: dict[str, Tensor] = {}
    items = list(strip_prefix(state, MSC_PREFIX).items())
    for index, (key, value) in enumerate(items):
        if stem := _W_STEM.match(key):
            name, rest = stem.groups()
            target = f"layer1.conv1.{'conv' if name == 'conv1' else 'bn'}.{rest}"
        elif unit := _W_UNIT.match(key):
            layer, j, kind, n, rest = unit.groups()
            target = f"layer{int(layer) + 1}.block{int(j) + 1}.{_V2_UNIT_NAMES[int(n)]}.{kind}.{rest}"
        elif shortcut := _W_SHORTCUT.match(key):
            layer, n, rest = shortcut.groups()
            target = f"layer{int(layer) + 1}.block1.shortcut.{'conv' if n == '0' else 'bn'}.{rest}"
        elif head := _W_HEAD.match(key):
            target = f"aspp.c{head.group(1)}.{head.group(2)}"
        else:
            raise WeightsError(
                f"'{key}' has no place in the release's DeepLab-V2 layout; only a ResNet DeepLab-V2 "
                "(backbone.*, head.branches.{i}.fc8.*; no hidden fc6/fc7) can be written in it"
            )
        out[prefix + target] = value
        tracked = key.removesuffix("running_var") + "num_batches_tracked"
        next_key = items[index + 1][0] if index + 1 < len(items) else None
        if key.endswith(".running_var") and next_key != tracked:
            out[prefix + target.removesuffix("running_var") + "num_batches_tracked"] = torch.tensor(0)
    return out


def classifier_wsss_to_release(
    state: Mapping[str, Tensor], conv_indices: Mapping[str, list[int]], aliases: bool = True
) -> dict[str, Tensor]:
    """A wsss VGG-16 classifier / refiner state dict -> the authors' checkpoint layout (the inverse of
    ``wsss.models.weights.release_to_wsss``), in the release's key order: the ``features.N`` aliases
    first (when ``aliases``), then ``layer{b}_conv{i}`` (+ ``layer{b}_relu{i}.fc.0.weight`` with DRS),
    ``extra_conv{1,2,3}`` (+ ``extra_relu{j}``) and ``extra_conv4`` (the classifier)."""
    state = strip_prefix(state, "model.")
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return state[key]

    out: dict[str, Tensor] = {}
    names = [(b, i, index) for b, convs in conv_indices.items() for i, index in enumerate(convs, start=1)]
    if aliases:
        for _, _, index in names:
            for p in ("weight", "bias"):
                out[f"features.{index}.{p}"] = take(f"backbone.features.{index}.{p}")
    for block, i, index in names:
        for p in ("weight", "bias"):
            out[f"{block}_conv{i}.{p}"] = take(f"backbone.features.{index}.{p}")
        if (fc := f"backbone.features.{index + 1}.fc.0.weight") in state:
            out[f"{block}_relu{i}.fc.0.weight"] = take(fc)
    for j in (1, 2, 3):
        for p in ("weight", "bias"):
            out[f"extra_conv{j}.{p}"] = take(f"head.{2 * (j - 1)}.{p}")
        if (fc := f"head.{2 * j - 1}.fc.0.weight") in state:
            out[f"extra_relu{j}.fc.0.weight"] = take(fc)
    for p in ("weight", "bias"):
        out[f"extra_conv4.{p}"] = take(f"classifier.{p}")
    if left := sorted(set(state) - used):
        raise WeightsError(
            f"{len(left)} tensors of this classifier have no place in the release layout (e.g. {left[:3]}); "
            "only the VGG-16 DRS classifier / refiner can be written in it"
        )
    return out


def _base(model: nn.Module) -> nn.Module:
    """The network inside a ``MultiScaleInputs`` wrapper (the model itself otherwise)."""

    return model.base if isinstance(model, MultiScaleInputs) else model


def _load_checked(
    module: nn.Module,
    state: Mapping[str, Tensor],
    report: LoadReport,
    config_key: str,
    may_miss: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``: a shape difference, a key the model lacks or a missing model tensor
    (outside ``may_miss`` prefixes; ``num_batches_tracked`` excepted) is an error naming it."""
    own = module.state_dict()
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    bad = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    missing = [
        k
        for k in own
        if k not in state and not k.startswith(may_miss) and not k.endswith("num_batches_tracked")
    ]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{config_key}={report.path}: '{k}' has shape {tuple(state[k].shape)} in the file but "
            f"{tuple(own[k].shape)} in the model (a file for another class count or network?)"
        )
    if unexpected or missing:
        raise WeightsError(
            f"{config_key}={report.path} ({report.format}) does not fit the model: {len(missing)} model tensors "
            f"missing from the file (e.g. {missing[:3]}), {len(unexpected)} file tensors not in the model "
            f"(e.g. {unexpected[:3]}); pick the segmenter the file was made for"
        )
    module.load_state_dict(dict(state), strict=False)
    report.loaded = sorted(k for k in state if k in own)
    report.missing = [k for k in own if k not in state]


def load_deeplabv2_state(
    model: nn.Module, state: Mapping[str, Tensor], path: str | Path, config_key: str = "segmenter.weights"
) -> LoadReport:
    """The release's DeepLab-V2 checkpoint, its COCO init (ASPP keeps its init, ``fc.*`` skipped) or a
    wsss ``DeepLab`` state dict (``base.`` optional), already read, into ``model`` (a ``DeepLab`` or a
    ``MultiScaleInputs`` around one). Every tensor must fit, and every model tensor must be given."""
    fmt = detect_format(state)
    net = _base(model)
    report = LoadReport(str(path), fmt)
    may_miss: tuple[str, ...] = ()
    if fmt == "release_deeplabv3plus":
        raise WeightsError(
            f"{config_key}={path} is a DeepLab-V3+ checkpoint; use segmenter=deeplabv3plus_r101"
        )
    if fmt in ("release_deeplabv2", "release_deeplabv2_coco_init"):
        if getattr(net, "input_format", "caffe") != "caffe":
            raise WeightsError(
                f"{config_key}={path}: the release's DeepLab-V2 files take caffe input (BGR, 0-255, minus the "
                "mean); set segmenter.input_format=caffe (segmenter=aspp_r101 does)"
            )
        state, report.skipped = deeplabv2_release_to_wsss(state)
        if fmt == "release_deeplabv2_coco_init":
            may_miss = ("head.",)
    else:
        state = strip_prefix(state, MSC_PREFIX)
    _load_checked(net, state, report, config_key, may_miss)
    log.info("%s: %s", config_key, report.summary())
    return report


def load_deeplabv2_weights(
    model: nn.Module, path: str | Path, config_key: str = "segmenter.weights"
) -> LoadReport:
    """``load_deeplabv2_state`` of the file at ``path`` (read with ``read_state_dict``)."""
    return load_deeplabv2_state(model, read_state_dict(path, config_key), path, config_key)


def load_deeplabv3plus_state(
    model: nn.Module, state: Mapping[str, Tensor], path: str | Path, config_key: str = "segmenter.weights"
) -> LoadReport:
    """The release's DeepLab-V3+ checkpoint (``{"model_state": ...}``, unwrapped) or a wsss one into ``model``."""
    fmt = detect_format(state)
    if fmt in ("release_deeplabv2", "release_deeplabv2_coco_init"):
        raise WeightsError(f"{config_key}={path} is a DeepLab-V2 file; use segmenter=aspp_r101")
    report = LoadReport(str(path), fmt)
    _load_checked(model, state, report, config_key)
    log.info("%s: %s", config_key, report.summary())
    return report


def load_deeplabv3plus_weights(
    model: nn.Module, path: str | Path, config_key: str = "segmenter.weights"
) -> LoadReport:
    """``load_deeplabv3plus_state`` of the file at ``path`` (read with ``read_state_dict``)."""
    return load_deeplabv3plus_state(model, read_state_dict(path, config_key), path, config_key)
