"""DeepLab segmentation networks (paper Table 4): LargeFOV (v1) and ASPP (v2) heads on VGG-16 or ResNet.

``DeepLab(backbone, num_classes, rates, ...)`` returns class logits at output stride 8 (not upsampled);
the ``segmenter`` config group builds it by ``_target_`` (``wsss.models.networks``).

- DeepLab-LargeFOV, VGG-16 (DeepLab v1): DeepLab-style VGG-16 conv1-conv5 (pool4 stride 1, conv5
  dilation 2), pool5 = 3x3 max-pool stride 1 pad 1, then (``pool5_avg``) the 3x3 stride-1 average
  pool of DeepLab v2's VGG-16 prototxts ("pool5a"), then fc6 = 3x3 conv dilation 12 -> 1024, ReLU,
  dropout 0.5, fc7 = 1x1 -> 1024, ReLU, dropout 0.5, fc8 = 1x1 -> classes.
- DeepLab-LargeFOV, ResNet-101: one 3x3 conv with dilation 12 from res5 to the classes (a single
  DeepLab v2 ResNet branch).
- DeepLab-ASPP, ResNet-101 (DeepLab v2): four 3x3 convs with dilations 6/12/18/24 from res5 to the
  classes, summed.
A head is a sum of branches, one per rate; a branch is either a single 3x3 conv to the classes or
(``hidden`` channels) the fc6/fc7/fc8 stack above.

Input: this project's RGB ImageNet-normalised images. ``input_format="caffe"`` puts ``CaffeInput`` in front
of the network (BGR, 0-255, minus the caffe mean, no std: an exact affine map of the image), for weights
trained in caffe's convention (DeepLab's released inits and the authors' DeepLab-V2 files).

Weights (``load_weights``, the one loader of ``segmenter.weights``; files are never downloaded, users bring
them; the layout is detected from the keys):

0. The authors' release (``wsss.models.release_formats``): the DeepLab-V2 checkpoint (``base.layer1.conv1.
   conv.weight`` ...), its COCO init (``layer1.conv1.conv.weight`` ..., ASPP left at its init) and the
   DeepLab-V3+ checkpoint (``{"model_state": ...}``; into ``segmenter=deeplabv3plus_r101``, which also
   takes torchvision ``resnet101`` weights into its backbone).
1. This project's own layout (``backbone.*``, ``head.*``; e.g. a previous segmenter), loaded strictly;
   or a ``stage=cls`` / ``stage=refine`` checkpoint, whose backbone convs (not DRS, not the head) start
   the segmenter's backbone (the stand-in for ImageNet weights on the toy data, which has none).
2. torchvision ImageNet state dicts, into the backbone: ``vgg16`` (``features.N.*``; fc6/fc7 are made
   from ``classifier.0``/``classifier.3`` by DeepLab's decimation: every 4th filter, spatial taps
   0/3/6 of the 7x7 fc6 and every 4th input of fc7) or ``resnet50/101`` (``conv1.*``, ``layer1.0.*``;
   ``fc.*`` ignored). A ``module.`` prefix is stripped.
3. Caffe-converted DeepLab weights as a blob dump ``{"<caffe layer>.<blob index>": array}``, made with
   pycaffe by ``{f"{n}.{i}": b.data for n, bs in net.params.items() for i, b in enumerate(bs)}``.
   Key mapping (blob 0 = weight / BN mean / Scale gamma, 1 = bias / BN variance / Scale beta,
   2 = BN moving-average factor, which divides the mean and variance):

   ================================  ============================================
   caffe layer                       this project
   ================================  ============================================
   conv1_1 conv1_2                   backbone.features.0 / .2
   conv2_1 conv2_2                   backbone.features.5 / .7
   conv3_1 conv3_2 conv3_3           backbone.features.10 / .12 / .14
   conv4_1 conv4_2 conv4_3           backbone.features.17 / .19 / .21
   conv5_1 conv5_2 conv5_3           backbone.features.24 / .26 / .28
   fc6 fc7 fc8* (VGG)                head.branches.0.fc6 / fc7 / fc8
   conv1, bn_conv1 + scale_conv1     backbone.conv1, backbone.bn1
   res{s}{b}_branch2a/2b/2c          backbone.layer{s-1}.{j}.conv1/conv2/conv3
   bn/scale{s}{b}_branch2a/2b/2c     backbone.layer{s-1}.{j}.bn1/bn2/bn3
   res{s}a_branch1, bn/scale..       backbone.layer{s-1}.0.downsample.0 / .1
   fc1*_c{i} (ResNet branch i)       head.branches.{i}.fc8
   ================================  ============================================

   ``s`` = 2..5; block ``b`` = a, b, c, ... for ResNet-50 and for 3-block stages, else a, b1, b2, ...
   (ResNet-101 res3a..res3b3, res4a..res4b22). A class layer (fc8*, fc1*) whose class count differs
   (ImageNet fc8, COCO fc1) is skipped and keeps its initialisation. Caffe ResNets put a block's
   stride on its first 1x1 conv: build them with ``caffe_style: true``. Caffe nets take BGR 0-255
   images minus the mean (104.008, 116.669, 122.675): a network with ``input_format: caffe`` takes the
   weights as they are (exact). Otherwise the loader folds the input convention into the first conv
   (weights reordered to RGB and scaled by 255 * std; for VGG's conv1_1 the mean difference goes into
   its bias, exact; ResNet's conv1 has no bias, so its outputs differ: up to 0.2 in the logits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from wsss.constants import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError, WeightsError
from wsss.models.resnet import BLOCKS, ResNetBackbone

INPUT_FORMATS = ("imagenet", "caffe")

log = logging.getLogger(__name__)

VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_CAFFE_NAMES = tuple(
    f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for i in range(1, n + 1)
)


class CaffeInput(nn.Module):
    """wsss's input (RGB, ``(x / 255 - mean) / std`` with ImageNet mean/std) -> the caffe input
    (BGR, 0-255, minus (104.008, 116.669, 122.675), no std) that caffe-trained weights expect.

    An exact per-channel affine map applied to the image itself (so zero padding inside the network
    sees what it sees in caffe's convention); holds no state-dict entries.
    """

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        caffe_mean_rgb = torch.tensor(CAFFE_MEAN_BGR).flip(0)
        self.register_buffer("scale", (255.0 * std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("offset", (255.0 * mean - caffe_mean_rgb).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CaffeInput takes (B, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        return (x * self.scale.to(x.dtype) + self.offset.to(x.dtype)).flip(1)


def input_adapter(input_format: str) -> nn.Module:
    """The module in front of a network: ``caffe`` (``CaffeInput``) or ``imagenet`` (identity)."""
    if input_format == "caffe":
        return CaffeInput()
    if input_format == "imagenet":
        return nn.Identity()
    raise ConfigError(
        f"input_format={input_format!r}; choose 'caffe' (caffe-trained weights such as DeepLab's COCO init "
        "and the release's DeepLab-V2 files) or 'imagenet' (wsss's RGB ImageNet-normalised input, unchanged)"
    )


class Branch(nn.Sequential):
    """One DeepLab branch: 3x3 conv with dilation ``rate`` to the classes, or (``hidden``) fc6/fc7/fc8."""

    def __init__(
        self, in_channels: int, num_classes: int, rate: int, hidden: int | None = None, dropout: float = 0.5
    ) -> None:
        if hidden is None:
            layers: dict[str, nn.Module] = {
                "fc8": nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate)
            }
        else:
            layers = {
                "fc6": nn.Conv2d(in_channels, hidden, 3, padding=rate, dilation=rate),
                "relu6": nn.ReLU(inplace=True),
                "drop6": nn.Dropout(dropout),
                "fc7": nn.Conv2d(hidden, hidden, 1),
                "relu7": nn.ReLU(inplace=True),
                "drop7": nn.Dropout(dropout),
                "fc8": nn.Conv2d(hidden, num_classes, 1),
            }
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.rate = rate
        for name, m in self.named_children():
            if isinstance(m, nn.Conv2d):
                if name == "fc8":  # DeepLab's classifier init: Gaussian (0, 0.01)
                    nn.init.normal_(m.weight, std=0.01)
                else:  # fc6/fc7 not loaded from ImageNet weights: He init, as the backbone convs
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)


class DeepLabHead(nn.Module):
    """Sum of one ``Branch`` per dilation rate: LargeFOV = (12,), ASPP = (6, 12, 18, 24)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int],
        hidden: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not rates:
            raise ConfigError("a DeepLab head needs at least one dilation rate")
        self.branches = nn.ModuleList(
            Branch(in_channels, num_classes, int(r), hidden, dropout) for r in rates
        )

    @property
    def rates(self) -> list[int]:
        return [b.rate for b in self.branches]

    def classifier_convs(self) -> list[nn.Conv2d]:
        """The new layers that output class scores (fc8 of each branch): 10x / 20x learning rate."""
        return [b.fc8 for b in self.branches]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLab(nn.Module):
    """Backbone (output stride 8) -> optional pool5 -> DeepLab head; ``forward`` gives (B, C, H/8, W/8).

    Args:
        backbone: a module with ``out_channels`` (``VGG16Backbone``, ``ResNetBackbone``, ``TinyBackbone``).
        num_classes: 21 on VOC (background + 20).
        rates: one head branch per dilation rate: LargeFOV ``[12]``, ASPP ``[6, 12, 18, 24]``.
        hidden: fc6/fc7 width of each branch (VGG LargeFOV: 1024); None: one 3x3 conv per branch.
        dropout: after fc6 and fc7.
        pool5: DeepLab v1's pool5 (3x3 max, stride 1) after the backbone (VGG-style backbones).
        pool5_avg: then the 3x3 stride-1 average pool of DeepLab v2's VGG-16 prototxts ("pool5a").
        input_format: ``imagenet`` (wsss's input as it is) or ``caffe`` (``CaffeInput`` first).
        new_head: the whole head is new (fc6/fc7 as well as fc8 get the 10x / 20x rate), for weights
            that hold no fc6/fc7 to start them from (the toy classifier's); False: DeepLab's groups.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 21,
        rates: Sequence[int] = (12,),
        hidden: int | None = None,
        dropout: float = 0.5,
        pool5: bool = False,
        pool5_avg: bool = True,
        input_format: str = "imagenet",
        new_head: bool = False,
    ) -> None:
        super().__init__()
        self.new_head = bool(new_head)
        self.input_format = str(input_format)
        self.input_adapter = input_adapter(self.input_format)
        self.backbone = backbone
        layers: list[nn.Module] = []
        if pool5:
            layers.append(nn.MaxPool2d(3, stride=1, padding=1))
            if pool5_avg:
                layers.append(nn.AvgPool2d(3, stride=1, padding=1))
        self.pool5 = nn.Sequential(*layers)
        self.head = DeepLabHead(
            backbone.out_channels, int(num_classes), [int(r) for r in rates], hidden, dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool5(self.backbone(self.input_adapter(x))))

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """The new layers (10x / 20x rate): fc8 of each branch, or the whole head with ``new_head``."""
        if self.new_head:
            yield from self.head.parameters()
            return
        for conv in self.head.classifier_convs():
            yield from conv.parameters()

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """SGD groups as DeepLab's prototxts set them: pretrained weights 1x lr, pretrained biases 2x
        (no decay), new classifier weights 10x, new classifier biases 20x (no decay).

        Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped.
        """
        new = {id(p) for p in self.classifier_parameters()}
        groups: dict[str, list[nn.Parameter]] = {"weight": [], "bias": [], "new_weight": [], "new_bias": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            kind = "bias" if name.endswith("bias") else "weight"
            groups[f"new_{kind}" if id(p) in new else kind].append(p)
        settings = {
            "weight": (1.0, weight_decay),
            "bias": (2.0, 0.0),
            "new_weight": (10.0, weight_decay),
            "new_bias": (20.0, 0.0),
        }
        return [
            {"params": params, "lr": lr * settings[k][0], "weight_decay": settings[k][1], "name": k}
            for k, params in groups.items()
            if params
        ]


# ---------------------------------------------------------------------------------------------- weights


def caffe_block_names(depth: int) -> list[list[str]]:
    """Caffe block names of res2..res5 (``a, b, c`` or ``a, b1, b2, ...``)."""

    names = []
    for n in BLOCKS[depth]:
        if depth == 50 or n == 3:
            names.append([chr(ord("a") + j) for j in range(n)])
        else:
            names.append(["a"] + [f"b{j}" for j in range(1, n)])
    return names


def caffe_key_map(model: DeepLab) -> dict[str, str]:
    """Caffe layer name -> this project's module path (see the table in the module docstring)."""
    mapping: dict[str, str] = {}
    if isinstance(model.backbone, ResNetBackbone):
        mapping["conv1"] = "backbone.conv1"
        mapping["bn_conv1"] = mapping["scale_conv1"] = "backbone.bn1"
        for s, blocks in enumerate(caffe_block_names(model.backbone.depth), start=2):
            for j, b in enumerate(blocks):
                prefix = f"backbone.layer{s - 1}.{j}"
                for branch, idx in (("2a", 1), ("2b", 2), ("2c", 3)):
                    mapping[f"res{s}{b}_branch{branch}"] = f"{prefix}.conv{idx}"
                    mapping[f"bn{s}{b}_branch{branch}"] = mapping[f"scale{s}{b}_branch{branch}"] = (
                        f"{prefix}.bn{idx}"
                    )
                if j == 0:
                    mapping[f"res{s}a_branch1"] = f"{prefix}.downsample.0"
                    mapping[f"bn{s}a_branch1"] = mapping[f"scale{s}a_branch1"] = f"{prefix}.downsample.1"
    else:
        for name, idx in zip(VGG_CAFFE_NAMES, VGG_CONV_INDICES, strict=True):
            mapping[name] = f"backbone.features.{idx}"
    return mapping


def caffe_to_segmenter(blobs: Mapping[str, torch.Tensor], model: DeepLab) -> dict[str, torch.Tensor]:
    """Rename a caffe blob dump to this project's keys (BN mean/var divided by the moving-average factor)."""
    mapping = caffe_key_map(model)
    layers: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in blobs.items():
        layer, _, index = key.rpartition(".")
        layers.setdefault(layer, {})[int(index)] = value.float()
    out: dict[str, torch.Tensor] = {}
    own = model.state_dict()
    num_classes = model.head.branches[0].fc8.out_channels
    for layer, b in layers.items():
        target = mapping.get(layer) or _caffe_head_target(layer, model)
        if target is None:
            raise WeightsError(f"caffe layer {layer} fits no layer of a {_describe(model)}")
        if layer.startswith("bn"):
            factor = float(b[2].reshape(-1)[0]) if 2 in b else 1.0
            factor = 1.0 / factor if factor != 0 else 0.0
            out[f"{target}.running_mean"] = b[0].reshape(-1) * factor
            out[f"{target}.running_var"] = b[1].reshape(-1) * factor
            continue
        if layer.startswith("scale"):
            out[f"{target}.weight"], out[f"{target}.bias"] = b[0].reshape(-1), b[1].reshape(-1)
            continue
        weight = b[0]
        if target.endswith("fc8") and weight.shape[0] != num_classes:
            log.warning(
                "caffe %s has %d classes, the model %d: kept its initialisation",
                layer,
                weight.shape[0],
                num_classes,
            )
            continue
        out[f"{target}.weight"] = weight.reshape(own[f"{target}.weight"].shape)
        if 1 in b:
            out[f"{target}.bias"] = b[1].reshape(-1)
    return out


def _caffe_head_target(layer: str, model: DeepLab) -> str | None:
    aspp = re.fullmatch(r"fc1.*_c(\d+)", layer)
    if aspp and int(aspp.group(1)) < len(model.head.branches):
        return f"head.branches.{aspp.group(1)}.fc8"
    vgg = re.fullmatch(r"(fc6|fc7|fc8).*", layer)
    if vgg and hasattr(model.head.branches[0], vgg.group(1)):
        return f"head.branches.0.{vgg.group(1)}"
    return None


def fold_caffe_input(state: dict[str, torch.Tensor], first_conv: str) -> None:
    """Make a conv that took BGR 0-255 mean-subtracted input take RGB ImageNet-normalised input."""
    weight = state.get(f"{first_conv}")
    if weight is None:
        return
    bgr = weight.flip(1)  # channel order BGR -> RGB
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    state[first_conv] = bgr * 255.0 * std
    bias_key = first_conv.removesuffix("weight") + "bias"
    if bias_key in state:
        # caffe input = 255 * (std * x + mean) - caffe_mean: the constant part goes into the bias
        offset = 255.0 * torch.tensor(IMAGENET_MEAN) - torch.tensor(CAFFE_MEAN_BGR[::-1])
        state[bias_key] = state[bias_key] + (bgr * offset.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))


def _describe(model: DeepLab) -> str:
    bb = model.backbone
    name = f"ResNet-{bb.depth}" if isinstance(bb, ResNetBackbone) else type(bb).__name__
    return f"{name} DeepLab with rates {model.head.rates}"
