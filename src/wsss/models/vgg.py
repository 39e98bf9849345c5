"""DeepLab-style VGG-16 feature extractor (output stride 8) with a pluggable activation after each conv.

The layers keep torchvision's ``features`` indices 0-29 (13 convs, their activations, pool1-pool4),
so a torchvision ``vgg16`` state dict loads directly (``features.N.weight``; its ``classifier.*`` is
left over). DeepLab changes: pool4 (index 23) is a 3x3 max-pool with stride 1 and padding 1, conv5_1..
conv5_3 use dilation 2 and padding 2, pool5 and the fully connected layers are gone. A 320 input
gives a 40x40, 512-channel map.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.method.drs import Activation, make_activation

# (block name, layer spec) in torchvision order: an int is a 3x3 conv to that many channels, "M" the
# 2x2 max-pool, "N" DeepLab's 3x3 stride-1 pool4.
PLAN: tuple[tuple[str, tuple[int | str, ...]], ...] = (
    ("layer1", (64, 64, "M")),
    ("layer2", (128, 128, "M")),
    ("layer3", (256, 256, 256, "M")),
    ("layer4", (512, 512, 512, "N")),
    ("layer5", (512, 512, 512)),
)
DILATED_BLOCKS = ("layer5",)


def conv_indices(plan: tuple[tuple[str, tuple[int | str, ...]], ...] = PLAN) -> dict[str, list[int]]:
    """Block name -> ``features`` indices of its convs (the activation of conv ``i`` sits at ``i + 1``)."""
    out: dict[str, list[int]] = {}
    index = 0
    for block, spec in plan:
        out[block] = []
        for item in spec:
            if isinstance(item, int):
                out[block].append(index)
                index += 2
            else:
                index += 1
    return out


def make_features(
    plan: tuple[tuple[str, tuple[int | str, ...]], ...],
    activation: Activation,
    dilated: tuple[str, ...] = DILATED_BLOCKS,
    in_channels: int = 3,
) -> tuple[nn.Sequential, int]:
    """A ``features`` Sequential from a VGG plan and its output channel count."""
    layers: list[nn.Module] = []
    channels = in_channels
    for block, spec in plan:
        for item in spec:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif item == "N":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
            elif isinstance(item, int):
                rate = 2 if block in dilated else 1
                layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=rate, dilation=rate))
                layers.append(activation(block, item))
                channels = item
            else:
                raise ValueError(f"unknown VGG plan item {item!r} in {block}")
    return nn.Sequential(*layers), channels


def init_convs(module: nn.Module) -> None:
    """torchvision's VGG init (He normal, fan-out; zero bias) for the convs of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


OUTPUT_STRIDES = (4, 8)
"""What the VGG-style backbones support: 8 (DeepLab's) or 4 (pool3 also keeps the resolution)."""


def check_output_stride(output_stride: int) -> int:
    """``output_stride`` as an int, or a ``ValueError`` naming ``backbone.output_stride``."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"backbone.output_stride={output_stride}: the VGG-style backbones support 4 or 8")
    return int(output_stride)


def with_output_stride(
    plan: tuple[tuple[str, tuple[int | str, ...]], ...], output_stride: int
) -> tuple[tuple[str, tuple[int | str, ...]], ...]:
    """``plan`` (output stride 8) with layer3's 2x2 pool made DeepLab's 3x3 stride-1 pool for stride 4
    (the same layer indices, so the same weights load)."""
    if check_output_stride(output_stride) == 8:
        return plan
    return tuple(
        (block, tuple("N" if block == "layer3" and item == "M" else item for item in spec))
        for block, spec in plan
    )


class VGG16Backbone(nn.Module):
    """VGG-16 conv layers, DeepLab style: (B, 3, H, W) -> (B, 512, H/s, W/s).

    Args:
        activation: ``(block name, channels) -> module`` called after every conv with its block
            name ``layer1`` .. ``layer5`` (``wsss.method.drs.make_activation``: DRS or ReLU); None: ReLU.
        output_stride: s, 8 (DeepLab's, the paper's) or 4 (pool3 keeps the resolution too: the toy
            recipe's finer maps on small images).
    """

    head_channels = 512
    """Width of the classifier head's three convs on this backbone (the paper's 512)."""

    def __init__(self, activation: Activation | None = None, output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        plan = with_output_stride(PLAN, self.output_stride)
        self.features, self.out_channels = make_features(plan, activation or make_activation("off"))
        self.conv_indices = conv_indices(plan)
        init_convs(self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
