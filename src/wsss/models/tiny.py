"""A tiny VGG-style backbone for tests and the demo: VGG-16's block layout with one narrow conv per block.

Same block names (layer1..layer5), same pools (three 2x2 pools and DeepLab's 3x3 stride-1 pool4),
a dilated layer5 and output stride 8, so DRS placement and map resolution behave as on VGG-16.
Width 8 gives 64 output channels and about 61k parameters; it trains in seconds on 64-96 px images.
"""

from __future__ import annotations

from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.method.drs import Activation, make_activation
from wsss.models.vgg import conv_indices, init_convs, make_features, with_output_stride


def tiny_plan(width: int, output_stride: int = 8) -> tuple[tuple[str, tuple[int | str, ...]], ...]:
    plan = (
        ("layer1", (width, "M")),
        ("layer2", (2 * width, "M")),
        ("layer3", (4 * width, "M")),
        ("layer4", (8 * width, "N")),
        ("layer5", (8 * width,)),
    )
    return with_output_stride(plan, output_stride)


class TinyBackbone(nn.Module):
    """(B, 3, H, W) -> (B, 8 * width, H/s, W/s), one 3x3 conv + activation per block.

    Args:
        activation: ``(block name, channels) -> module`` (``wsss.method.drs.make_activation``); None: ReLU.
        width: channels of layer1; later blocks use 2x, 4x, 8x and 8x.
        output_stride: s, 8 (VGG-16's) or 4 (layer3's pool keeps the resolution: on small images,
            a score map as fine relative to the objects as VGG-16's on 321 px ones).
    """

    def __init__(self, activation: Activation | None = None, width: int = 8, output_stride: int = 8) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"backbone.width={width} must be a positive channel count (e.g. 8)")
        self.output_stride = int(output_stride)
        plan = tiny_plan(int(width), self.output_stride)
        self.features, self.out_channels = make_features(plan, activation or make_activation("off"))
        self.head_channels = self.out_channels // 2  # the classifier head: half the backbone width
        self.conv_indices = conv_indices(plan)
        init_convs(self.features)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)
