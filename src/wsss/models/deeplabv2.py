"""DeepLab-V2 (ResNet-101 + ASPP) as the release's DeepLab-V2-PyTorch (kazuto1011's code base) computes it.

The network itself is wsss's: ``ResNetBackbone(101, output_stride=8, caffe_style=True, frozen_bn=True)``
with ``DeepLabHead(rates=(6, 12, 18, 24))`` computes the release's ``DeepLabV2`` function:

- stem: 7x7/2 conv (pad 3, no bias), BN, ReLU, 3x3/2 max-pool with padding 1 and ``ceil_mode=True``;
- bottleneck: 1x1 (the block's stride sits here), BN, ReLU; 3x3 (stride 1, padding = dilation), BN,
  ReLU; 1x1, BN; plus the shortcut (1x1 conv with the block's stride + BN, first block of each layer
  only, also in res2 where the stride is 1), then ReLU of the sum;
- res4 (wsss ``layer3``) at stride 1 with dilation 2 and res5 (``layer4``) at stride 1 with dilation 4
  in every block, the first included: output stride 8;
- BN eps 1e-5, in eval mode throughout training (``freeze_bn``): ``FrozenBatchNorm2d`` is the same map;
- ASPP: four 3x3 convs with bias (dilation = padding = 6, 12, 18, 24) from res5 to the classes, summed.

The release's input convention is ``DeepLab(input_format="caffe")`` (``wsss.models.deeplab.CaffeInput``);
``segmenter=aspp_r101`` builds exactly this network from config. Added here: ``DeepLabV2`` (that network
by name) and the release's multi-scale wrapper (``MultiScaleInputs``), which the seg stage puts around
any segmenter under ``seg.multi_scale_inputs``. Release files load with ``wsss.models.segmenter_weights.load_weights``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError
from wsss.models.deeplab import INPUT_FORMATS, CaffeInput, DeepLab, input_adapter
from wsss.models.resnet import ResNetBackbone

RELEASE_RATES = (6, 12, 18, 24)
RELEASE_SCALES = (0.5, 0.75)

__all__ = ["CaffeInput", "DeepLabV2", "MultiScaleInputs", "deeplabv2_resnet101", "input_adapter"]


class DeepLabV2(DeepLab):
    """ResNet DeepLab-V2 (ASPP summed) at output stride 8 behind an input adapter: (B, 3, H, W) -> (B, C, h, w).

    State-dict keys are ``DeepLab``'s (``backbone.*``, ``head.branches.{i}.fc8.*``); the adapter has none.
    """

    def __init__(
        self,
        num_classes: int = 21,
        depth: int = 101,
        rates: Sequence[int] = RELEASE_RATES,
        input_format: str = "caffe",
        frozen_bn: bool = True,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            input_adapter(input_format)  # raises, naming the choices
        backbone = ResNetBackbone(depth, output_stride=8, frozen_bn=frozen_bn, caffe_style=True)
        super().__init__(
            backbone,
            num_classes,
            [int(r) for r in rates],
            hidden=None,
            pool5=False,
            input_format=input_format,
        )


class MultiScaleInputs(nn.Module):
    """The release's multi-scale wrapper (``MSC``) around ``base``.

    ``base`` runs on the input and on the input resized by each of ``scales`` (``F.interpolate`` with
    ``scale_factor``, bilinear, ``align_corners=False``: the output size is ``floor(s * size)``, the
    sampling grid uses ``s`` itself); the scaled logits are upsampled (bilinear, ``align_corners=False``)
    to the full-scale logits' size and fused by element-wise max. Training returns
    ``[full, scaled (at their own size)..., max]``; eval returns the max.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = RELEASE_SCALES) -> None:
        super().__init__()
        if not scales or any(float(s) <= 0.0 for s in scales):
            raise ConfigError(
                f"scales={list(scales)}: give one or more positive input scales, e.g. [0.5, 0.75]"
            )
        self.base = base
        self.scales = [float(s) for s in scales]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        logits = self.base(x)
        scaled = [
            self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
            for s in self.scales
        ]
        size = logits.shape[-2:]
        upsampled = [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in scaled]
        fused = torch.stack([logits, *upsampled]).max(dim=0).values
        if self.training:
            return [logits, *scaled, fused]
        return fused

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.base.classifier_parameters()

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """The base network's SGD groups (``DeepLab.param_groups``)."""
        return self.base.param_groups(lr, weight_decay)


def deeplabv2_resnet101(
    num_classes: int = 21,
    rates: Sequence[int] = RELEASE_RATES,
    input_format: str = "caffe",
    frozen_bn: bool = True,
    msc_scales: Sequence[float] | None = RELEASE_SCALES,
) -> nn.Module:
    """The release's ``DeepLabV2_ResNet101_MSC`` (``MultiScaleInputs(DeepLabV2(...))``; no wrapper when
    ``msc_scales`` is empty). Architecture only: weights load with ``wsss.models.segmenter_weights.load_weights``."""
    model: nn.Module = DeepLabV2(num_classes, 101, rates, input_format, frozen_bn)
    if msc_scales:
        model = MultiScaleInputs(model, msc_scales)
    return model
