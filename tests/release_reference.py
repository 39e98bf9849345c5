"""Test-only re-creation of the release's DeepLab-V2 (kazuto1011's DeepLab-V2-PyTorch), written from the facts.

Module names give the release's state-dict keys (tests/data/release_formats/deeplabv2_resnet101_msc.txt);
the tests check that, then compare wsss's ``DeepLabV2`` against it. Input: the caffe image (BGR, 0-255,
minus the caffe mean). Not used by wsss itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


def caffe_image(rgb01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> what the release feeds its network."""
    mean = torch.tensor(CAFFE_MEAN_BGR, dtype=rgb01.dtype).view(1, 3, 1, 1)
    return rgb01.flip(1) * 255.0 - mean


class Unit(nn.Sequential):
    """conv (no bias) -> BN (eps 1e-5) -> optional ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, dil: int, relu: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, pad, dil, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5))
        if relu:
            self.add_module("relu", nn.ReLU())


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dil: int, shortcut: bool):
        super().__init__()
        mid = cout // 4
        self.reduce = Unit(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = Unit(mid, mid, 3, 1, dil, dil)
        self.increase = Unit(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = Unit(cin, cout, 1, stride, 0, 1, relu=False) if shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class Layer(nn.Sequential):
    def __init__(self, n: int, cin: int, cout: int, stride: int, dil: int):
        super().__init__()
        for i in range(n):
            first = i == 0
            self.add_module(
                f"block{i + 1}", Block(cin if first else cout, cout, stride if first else 1, dil, first)
            )


class Stem(nn.Sequential):
    def __init__(self):
        super().__init__()
        self.add_module("conv1", Unit(3, 64, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, classes: int, rates: tuple[int, ...]):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, classes, 3, 1, r, r, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(c(x) for c in self.children())


class ReferenceDeepLabV2(nn.Sequential):
    def __init__(self, classes: int = 21, blocks: tuple[int, ...] = (3, 4, 23, 3)):
        super().__init__()
        self.add_module("layer1", Stem())
        self.add_module("layer2", Layer(blocks[0], 64, 256, 1, 1))
        self.add_module("layer3", Layer(blocks[1], 256, 512, 2, 1))
        self.add_module("layer4", Layer(blocks[2], 512, 1024, 1, 2))
        self.add_module("layer5", Layer(blocks[3], 1024, 2048, 1, 4))
        self.add_module("aspp", ASPP(2048, classes, (6, 12, 18, 24)))

    def freeze_bn(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


class ReferenceMSC(nn.Module):
    def __init__(self, base: nn.Module, scales: tuple[float, ...] = (0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = scales

    def forward(self, x: torch.Tensor):
        full = self.base(x)
        pyramid = [
            self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False))
            for p in self.scales
        ]
        up = [F.interpolate(p, size=full.shape[2:], mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.max(torch.stack([full, *up]), dim=0)[0]
        return [full, *pyramid, fused] if self.training else fused
