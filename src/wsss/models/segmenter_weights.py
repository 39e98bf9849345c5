"""Weights files into segmenters: wsss checkpoints, torchvision / caffe ImageNet inits, and the release's
DeepLab-V2 (trained or COCO init) and DeepLab-V3+ files (layouts named by ``wsss.models.weights.detect_format``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wsss.errors import WeightsError
from wsss.models.deeplab import DeepLab, caffe_to_segmenter, fold_caffe_input
from wsss.models.deeplabv2 import MultiScaleInputs
from wsss.models.deeplabv3plus import DeepLabV3Plus
from wsss.models.release_formats import load_deeplabv2_state, load_deeplabv3plus_state
from wsss.models.resnet import ResNetBackbone
from wsss.models.weights import MSC_PREFIX, detect_format, read_state_dict, strip_prefix

log = logging.getLogger(__name__)


def load_weights(model: nn.Module, path: str | Path, config_key: str = "segmenter.weights") -> str:
    """Load a weights file into a segmenter (any layout in the module docstring); returns the layout found.

    ``model``: a ``DeepLab``, a ``MultiScaleInputs`` around one, or a ``DeepLabV3Plus``.
    """
    state = read_state_dict(path, config_key)
    fmt = detect_format(state)
    if isinstance(model, DeepLabV3Plus):
        if fmt == "release_deeplabv3plus":
            load_deeplabv3plus_state(model, state, path, config_key)
            return fmt
        if fmt == "torchvision_resnet":  # the release's ImageNet init of the backbone
            _load_partial(model.backbone, {k: v for k, v in state.items() if not k.startswith("fc.")}, path)
            log.info("segmenter weights: %s (torchvision_resnet, backbone)", path)
            return "torchvision_resnet"
        raise WeightsError(
            f"{config_key}={path}: a DeepLab-V3+ takes the release's DeepLab-V3+ checkpoint, a wsss one or "
            "torchvision resnet101 weights (its backbone's ImageNet init)"
        )
    if fmt == "release_deeplabv3plus":
        raise WeightsError(
            f"{config_key}={path} is a DeepLab-V3+ checkpoint; use segmenter=deeplabv3plus_r101"
        )
    if fmt in ("release_deeplabv2", "release_deeplabv2_coco_init"):  # its trained checkpoint or COCO init
        load_deeplabv2_state(model, state, path, config_key)
        return fmt
    net = model.base if isinstance(model, MultiScaleInputs) else model
    if not isinstance(net, DeepLab):
        raise WeightsError(f"{config_key}={path}: cannot load segmenter weights into a {type(net).__name__}")
    return _load_into_deeplab(net, strip_prefix(state, MSC_PREFIX), path)


def _load_into_deeplab(model: DeepLab, state: dict[str, torch.Tensor], path: str | Path) -> str:
    fmt = detect_format(state)
    is_resnet = isinstance(model.backbone, ResNetBackbone)
    caffe_input = model.input_format == "caffe"
    if fmt.startswith(("torchvision", "caffe")) and fmt.endswith("vgg16") == is_resnet:
        kind = "ResNet" if is_resnet else "VGG-16"
        raise WeightsError(
            f"{path}: {fmt} weights do not fit a {kind} segmenter; pick the matching segmenter"
        )
    if caffe_input and fmt in ("torchvision_resnet", "torchvision_vgg16", "wsss_classifier"):
        raise WeightsError(
            f"{path}: {fmt} weights expect RGB ImageNet-normalised input, but this segmenter takes caffe input "
            "(segmenter.input_format=caffe, for DeepLab's caffe-converted inits such as the release's COCO "
            "init); give such a file, or set segmenter.input_format=imagenet segmenter.backbone.caffe_style=false"
        )
    if fmt == "wsss_segmenter":
        model.load_state_dict(state)
    elif fmt == "wsss_classifier":  # the backbone convs of a stage=cls / refine checkpoint (no DRS, no head)
        own = model.backbone.state_dict()
        picked = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        picked = {k: v for k, v in picked.items() if k in own and own[k].shape == v.shape}
        convs = [k for k, v in own.items() if v.ndim == 4]
        if not all(k in picked for k in convs):
            raise WeightsError(
                f"{path}: a classifier whose backbone does not match segmenter.backbone "
                f"(e.g. {next(k for k in convs if k not in picked)} missing or of another shape)"
            )
        model.backbone.load_state_dict(picked, strict=False)
    elif fmt == "torchvision_resnet":
        _load_partial(model.backbone, {k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    elif fmt == "torchvision_vgg16":
        _load_partial(model.backbone, {k: v for k, v in state.items() if k.startswith("features.")}, path)
        _load_vgg_fc(model, state)
    else:
        if is_resnet and not model.backbone.maxpool.ceil_mode:
            raise WeightsError(
                f"{path}: caffe ResNet weights need the caffe block layout; set segmenter.backbone.caffe_style=true"
            )
        mapped = caffe_to_segmenter(state, model)
        if not caffe_input:  # fold the caffe input convention into the first conv (inexact for ResNet)
            fold_caffe_input(mapped, "backbone.conv1.weight" if is_resnet else "backbone.features.0.weight")
        _load_partial(model, mapped, path)
    log.info("segmenter weights: %s (%s)", path, fmt)
    return fmt


def _load_partial(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    own = module.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, the model needs {tuple(own[k].shape)}"
        )
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise WeightsError(
            f"{path}: {len(unexpected)} tensors fit no layer of the model (e.g. {unexpected[:3]})"
        )
    module.load_state_dict(state, strict=False)


def _load_vgg_fc(model: DeepLab, state: Mapping[str, torch.Tensor]) -> None:
    """fc6/fc7 of a LargeFOV branch from torchvision's 4096-wide fully connected layers (decimated)."""
    branch = model.head.branches[0]
    if "classifier.0.weight" not in state or not hasattr(branch, "fc6"):
        return
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)[::4][:, :, ::3, ::3]
    fc7 = state["classifier.3.weight"][::4, ::4][:, :, None, None]
    if fc6.shape != branch.fc6.weight.shape or fc7.shape != branch.fc7.weight.shape:
        log.warning(
            "torchvision fc6/fc7 do not fit a head with %d hidden channels; left random",
            branch.fc7.out_channels,
        )
        return
    with torch.no_grad():  # every branch starts from the same fc6/fc7 (DeepLab v2 VGG-16 ASPP does so)
        for b in model.head.branches:
            b.fc6.weight.copy_(fc6)
            b.fc6.bias.copy_(state["classifier.0.bias"][::4])
            b.fc7.weight.copy_(fc7)
            b.fc7.bias.copy_(state["classifier.3.bias"][::4])
