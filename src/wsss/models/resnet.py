"""ResNet-50/101/152 backbones with torchvision module names, dilated to output stride 8 or 16.

Parameter and buffer names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), so a torchvision ``resnet101`` state dict loads with
``load_state_dict(strict=False)`` (only ``fc.*`` is left over).

Dilation follows DeepLab v2: a layer whose stride is removed uses the full rate in *every* block
(output stride 8: layer3 rate 2, layer4 rate 4; output stride 16: layer4 rate 2). torchvision's
``replace_stride_with_dilation`` instead keeps the previous rate in a layer's first block
(``dilate_first_block=False`` builds that variant, e.g. for DeepLab-V3+); the weights are the same
either way, the outputs are not.

``caffe_style=True`` builds the MSRA/caffe variant that DeepLab's released (caffe-converted)
weights were trained with: the stride of a downsampling block sits on its first 1x1 conv instead
of the 3x3 conv, and the stem's max-pool rounds up (``ceil_mode``).

``activation(name, channels)`` (``wsss.method.drs.make_activation``) is asked for a module after each of
``layer1`` .. ``layer4``; a DRS module is inserted there (``self.post[name]``), a plain ReLU is not
(every stage already ends in one). This is how the classifier places DRS on a ResNet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from wsss.errors import ConfigError

BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
"""Bottleneck blocks per layer for each supported depth."""

RATES: dict[int, tuple[int, int, int]] = {4: (2, 4, 8), 8: (1, 2, 4), 16: (1, 1, 2), 32: (1, 1, 1)}
"""Output stride -> dilation rates of (layer2, layer3, layer4); a dilated layer does not downsample."""

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
EXPANSION = 4


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained).

    Holds the same state-dict keys as ``nn.BatchNorm2d`` (``num_batches_tracked`` is accepted
    and dropped), so BatchNorm weights load into it unchanged; ``train()`` does not unfreeze it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` holding its values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            if child.affine:
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
            if child.track_running_stats:
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with torchvision names; the 3x3 may be dilated."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        dilation: int = 1,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=s1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet feature extractor (no pooling/fc head): (B, 3, H, W) -> (B, 2048, H/os, W/os).

    Args:
        depth: 50, 101 or 152.
        output_stride: 8 or 16 (32 gives the undilated network; 4, also layer2 dilated, suits small images).
        activation: optional ``(layer_name, channels) -> nn.Module`` asked after each of layer1..layer4;
            modules other than a plain ReLU are inserted there.
        frozen_bn: use ``FrozenBatchNorm2d`` (fixed statistics and affine values) everywhere.
        caffe_style: stride on the first 1x1 conv of a block and a ceil-mode stem pool (DeepLab caffe).
        dilate_first_block: a dilated layer's first block uses the layer's rate (DeepLab v2); false
            keeps the previous layer's rate there (torchvision's ``replace_stride_with_dilation``).
    """

    def __init__(
        self,
        depth: int = 101,
        output_stride: int = 8,
        activation: Callable[[str, int], nn.Module] | None = None,
        frozen_bn: bool = False,
        caffe_style: bool = False,
        dilate_first_block: bool = True,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise ConfigError(f"ResNet depth {depth} is not supported; choose one of {sorted(BLOCKS)}")
        if output_stride not in RATES:
            raise ConfigError(
                f"backbone.output_stride={output_stride} is not supported; choose 8 or 16 (or 32, or 4)"
            )
        self.depth = depth
        self.output_stride = output_stride
        self.frozen_bn = frozen_bn
        norm: Callable[[int], nn.Module] = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=caffe_style)
        rate2, rate3, rate4 = RATES[output_stride]
        plan = [
            (64, 1, 1),
            (128, 2 if rate2 == 1 else 1, rate2),
            (256, 2 if rate3 == 1 else 1, rate3),
            (512, 2 if rate4 == 1 else 1, rate4),
        ]
        in_channels = 64
        self.post = nn.ModuleDict()
        self.stage_channels: dict[str, int] = {}
        previous_rate = 1
        for name, n_blocks, (width, stride, rate) in zip(STAGES, BLOCKS[depth], plan, strict=True):
            first_rate = rate if dilate_first_block else previous_rate
            previous_rate = rate
            blocks = [Bottleneck(in_channels, width, stride, first_rate, norm, caffe_style)]
            in_channels = width * EXPANSION
            blocks += [
                Bottleneck(in_channels, width, 1, rate, norm, caffe_style) for _ in range(n_blocks - 1)
            ]
            setattr(self, name, nn.Sequential(*blocks))
            self.stage_channels[name] = in_channels
            extra = activation(name, in_channels) if activation is not None else None
            if extra is not None and not isinstance(extra, nn.ReLU):
                self.post[name] = extra
        self.out_channels = in_channels
        self.head_channels = 512
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init for the ResNet's own layers (the ``post`` modules keep theirs)."""
        own = [self.conv1, self.bn1, *(getattr(self, name) for name in STAGES)]
        for m in (sub for layer in own for sub in layer.modules()):
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output of each of layer1 .. layer4 (after its ``post`` module), by layer name."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            if name in self.post:
                x = self.post[name](x)
            out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)["layer4"]
