"""The DRS classifier: backbone + three 3x3 convs + 1x1 conv to C class score maps.

``model(x)`` returns the class score maps F (B, C, h, w), not pooled; ``logits`` (or ``pool``) gives
GAP(F), the multi-label logits. The refinement network (DRS-dagger) is the same net with DRS off.
Built from config by ``wsss.models.networks`` (``_target_`` instantiation); weights come from files
only (``wsss.models.weights``).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from wsss.method.drs import DRS, Activation, make_activation

PARAM_GROUPS: tuple[str, ...] = ("backbone_weight", "backbone_bias", "new_weight", "new_bias")
"""The release's four SGD groups (lr x1, x2, x10, x20); DRS controllers count as new weights."""


def _init_new_conv(conv: nn.Conv2d) -> None:
    """The release's init of new convs: N(0, sqrt(2 / (k * k * out_channels))), zero bias."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    nn.init.zeros_(conv.bias)


class DRSClassifier(nn.Module):
    """Backbone, head (three 3x3 convs, each followed by the ``layer6`` activation), 1x1 conv to C.

    Args:
        backbone: a module with ``out_channels`` mapping images to features (output stride 8).
        num_classes: C (20 on VOC).
        head_channels: width of the three head convs; None: the backbone's ``head_channels``
            (512 for VGG-16 and ResNet, as in the paper).
        activation: ``(block name, channels) -> module``; called with ``layer6`` for the head.
            ``None`` gives plain ReLUs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 20,
        head_channels: int | None = None,
        activation: Activation | None = None,
    ) -> None:
        super().__init__()
        activation = activation or make_activation("off")
        head_channels = int(head_channels or getattr(backbone, "head_channels", 512))
        self.backbone = backbone
        self.num_classes = int(num_classes)
        layers: list[nn.Module] = []
        channels = int(backbone.out_channels)
        for _ in range(3):
            layers += [nn.Conv2d(channels, head_channels, 3, padding=1), activation("layer6", head_channels)]
            channels = head_channels
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(head_channels, self.num_classes, 1)
        for m in (*self.head, self.classifier):
            if isinstance(m, nn.Conv2d):
                _init_new_conv(m)

    def forward(self, x: Tensor) -> Tensor:
        """Class score maps F (B, C, H/8, W/8)."""
        return self.classifier(self.head(self.backbone(x)))

    @staticmethod
    def pool(scores: Tensor) -> Tensor:
        """Multi-label logits (B, C): global average pooling of the score maps."""
        return scores.mean(dim=(2, 3))

    def logits(self, x: Tensor) -> Tensor:
        return self.pool(self(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split as the release's optimizer does (see ``PARAM_GROUPS``)."""
        drs_ids = {id(p) for m in self.modules() if isinstance(m, DRS) for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in PARAM_GROUPS}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            new = not name.startswith("backbone.") or id(p) in drs_ids
            kind = "bias" if name.rsplit(".", 1)[-1] == "bias" else "weight"
            groups[f"{'new' if new else 'backbone'}_{kind}"].append(p)
        return groups
