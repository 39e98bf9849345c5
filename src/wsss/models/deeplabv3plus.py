"""DeepLab-V3+ (ResNet-101) as the release's DeepLabV3Plus-Pytorch (VainF's code base) builds it.

- backbone: torchvision-layout ResNet (stride on the 3x3 conv, stem max-pool without ceil mode),
  ImageNet init; output stride 16 removes layer4's stride and dilates it by 2, its first block keeping
  rate 1 (torchvision's ``replace_stride_with_dilation=[False, False, True]``; output stride 8 also
  dilates layer3 by 2 and layer4 by 4, first blocks at the previous rate). Backbone BN momentum 0.01;
- ASPP on layer4: a 1x1 branch, three 3x3 branches (rates 6/12/18 at output stride 16, 12/24/36 at 8)
  and image pooling (global average, 1x1, upsampled bilinearly), 256 channels each with BN + ReLU;
  concatenated (1280) -> 1x1 to 256 + BN + ReLU + dropout 0.1;
- decoder: layer1 features -> 1x1 conv to 48 + BN + ReLU; the ASPP output upsampled (bilinear,
  ``align_corners=False``) to their size and concatenated after them (304 channels); 3x3 conv to 256 +
  BN + ReLU; 1x1 conv (with bias) to the classes; logits upsampled (bilinear, ``align_corners=False``)
  to the input size;
- input: RGB with ImageNet mean/std (wsss's own input).

Module names follow the release, so its checkpoints (``{"model_state": state_dict}``) load directly:
``backbone.conv1.weight``, ``backbone.layer1.0.conv1.weight``, ..., ``classifier.project.0.weight``,
``classifier.aspp.convs.{0..4}.*``, ``classifier.aspp.project.*``, ``classifier.classifier.{0,1,3}.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError
from wsss.models.resnet import ResNetBackbone

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
"""Output stride -> the ASPP's three dilation rates."""
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, rate: int = 1) -> list[nn.Module]:
    """Conv (no bias; padding keeps the size) + BN + ReLU, as the items of a Sequential."""
    padding = rate * (kernel_size // 2)
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=rate, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ImagePooling(nn.Sequential):
    """Global average pool -> 1x1 conv + BN + ReLU -> upsampled (bilinear) to the input's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = super().forward(x)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLab-V3 ASPP: 1x1, three dilated 3x3 and image pooling branches, concatenated and projected."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = ASPP_CHANNELS) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ConfigError(
                f"ASPP rates={list(rates)}: DeepLab-V3+ has three dilated branches, e.g. [6, 12, 18]"
            )
        branches: list[nn.Module] = [nn.Sequential(*conv_bn_relu(in_channels, out_channels))]
        branches += [nn.Sequential(*conv_bn_relu(in_channels, out_channels, 3, int(r))) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *conv_bn_relu(len(branches) * out_channels, out_channels), nn.Dropout(0.1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deep features + the decoder on the low-level (layer1) features -> logits at stride 4."""

    def __init__(
        self, in_channels: int, low_level_channels: int, num_classes: int, rates: Sequence[int]
    ) -> None:
        super().__init__()
        self.project = nn.Sequential(*conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS))
        self.aspp = ASPP(in_channels, rates)
        self.classifier = nn.Sequential(
            *conv_bn_relu(LOW_LEVEL_CHANNELS + ASPP_CHANNELS, ASPP_CHANNELS, 3),
            nn.Conv2d(ASPP_CHANNELS, num_classes, 1),
        )
        for m in self.modules():  # the release's head init (conv biases keep PyTorch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, low_level: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        low = self.project(low_level)
        context = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, context], dim=1))


class DeepLabV3Plus(nn.Module):
    """(B, 3, H, W) RGB ImageNet-normalised -> (B, C, H, W) logits (already at the input size).

    Args:
        num_classes: output classes (21 for VOC).
        depth: ResNet depth (50, 101, 152).
        output_stride: 16 (the release) or 8.
        backbone_bn_momentum: momentum of the backbone's BN layers (the release sets 0.01).
        backbone_lr_mult: learning-rate factor of the backbone in ``param_groups`` (the release: 0.1).
    """

    def __init__(
        self,
        num_classes: int = 21,
        depth: int = 101,
        output_stride: int = 16,
        backbone_bn_momentum: float = 0.01,
        backbone_lr_mult: float = 0.1,
    ) -> None:
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ConfigError(f"output_stride={output_stride}; DeepLab-V3+ supports 16 (the release) or 8")
        self.backbone = ResNetBackbone(depth, output_stride=output_stride, dilate_first_block=False)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = float(backbone_bn_momentum)
        self.classifier = DeepLabV3PlusHead(
            self.backbone.out_channels,
            self.backbone.stage_channels["layer1"],
            num_classes,
            ASPP_RATES[output_stride],
        )
        self.output_stride = output_stride
        self.backbone_lr_mult = float(backbone_lr_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.backbone.forward_stages(x)
        logits = self.classifier(stages["layer1"], stages["layer4"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """The release's SGD groups: backbone at ``lr * backbone_lr_mult``, head at ``lr``; weight decay
        on every parameter (BN and biases included). Frozen parameters are left out."""
        groups = [
            ("backbone", self.backbone, lr * self.backbone_lr_mult),
            ("classifier", self.classifier, lr),
        ]
        return [
            {"params": params, "lr": group_lr, "weight_decay": weight_decay, "name": name}
            for name, module, group_lr in groups
            if (params := [p for p in module.parameters() if p.requires_grad])
        ]


def deeplabv3plus_resnet101(
    num_classes: int = 21,
    output_stride: int = 16,
    backbone_bn_momentum: float = 0.01,
    backbone_lr_mult: float = 0.1,
) -> DeepLabV3Plus:
    """The release's ``deeplabv3plus_resnet101``. Architecture only: ``segmenter.weights`` (the release's
    ``{"model_state": ...}`` checkpoint, a wsss one, or torchvision ``resnet101`` ImageNet weights for the
    backbone, the release's init) loads with ``wsss.models.segmenter_weights.load_weights``."""
    return DeepLabV3Plus(num_classes, 101, output_stride, backbone_bn_momentum, backbone_lr_mult)
