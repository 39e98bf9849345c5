"""The DRS classifier (backbone + three 3x3 convs + 1x1 conv to C class score maps) and its builders.

``model(x)`` returns the class score maps F (B, C, h, w), not pooled; ``logits`` (or ``pool``) gives
GAP(F), the multi-label logits. The refinement network (DRS-dagger) is the same net with DRS off.
Builders read the ``backbone``/``drs`` config groups; weights come from files only
(``backbone.weights``: an ImageNet backbone; ``model.weights``: a whole classifier; see
``wsss.models.weights``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch import Tensor, nn

from wsss.drs import DRS, Activation, activation_from_config, make_activation

log = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("vgg16", "resnet50", "resnet101", "tiny")
HEAD_CHANNELS = 512
"""Width of the three head convs for VGG-16 and ResNet (the paper); the tiny backbone uses its own width."""

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
        head_channels: width of the three head convs (512 in the paper).
        activation: ``(block name, channels) -> module``; called with ``layer6`` for the head.
            ``None`` gives plain ReLUs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 20,
        head_channels: int = HEAD_CHANNELS,
        activation: Activation | None = None,
    ) -> None:
        super().__init__()
        activation = activation or make_activation("off")
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


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def build_backbone(backbone_cfg: Any, activation: Activation) -> nn.Module:
    """The backbone named by ``backbone.name`` (no weights loaded), its convs followed by ``activation``."""
    name = str(_cfg_get(backbone_cfg, "name", ""))
    if name == "vgg16":
        from wsss.models.vgg import VGG16Backbone

        return VGG16Backbone(activation)
    if name == "tiny":
        from wsss.models.tiny import TinyBackbone

        return TinyBackbone(
            activation,
            width=int(_cfg_get(backbone_cfg, "width", 8)),
            output_stride=int(_cfg_get(backbone_cfg, "output_stride", 8)),
        )
    if name in ("resnet50", "resnet101"):
        from wsss.models.resnet import ResNetBackbone

        def post_stage(layer: str, channels: int) -> nn.Module | None:
            module = activation(layer, channels)
            return module if isinstance(module, DRS) else None  # stages already end in a ReLU

        return ResNetBackbone(
            depth=int(name.removeprefix("resnet")),
            output_stride=int(_cfg_get(backbone_cfg, "output_stride", 8)),
            post_stage=post_stage,
            frozen_bn=bool(_cfg_get(backbone_cfg, "frozen_bn", False)),
        )
    raise ValueError(
        f"backbone.name={name!r} is not one of {list(BACKBONES)}; pick backbone=vgg16|resnet101|..."
    )


def default_head_channels(backbone: nn.Module, backbone_name: str) -> int:
    """512 for VGG-16 and ResNet (the paper); half the backbone width for ``tiny``."""
    return int(backbone.out_channels) // 2 if backbone_name == "tiny" else HEAD_CHANNELS


def _assemble(
    backbone_cfg: Any,
    activation: Activation,
    num_classes: int,
    head_channels: int | None,
    weights: str | None,
    init_backbone: bool,
) -> DRSClassifier:
    from wsss.models.weights import load_backbone_weights, load_classifier_weights

    name = str(_cfg_get(backbone_cfg, "name", ""))
    backbone = build_backbone(backbone_cfg, activation)
    backbone_weights = _cfg_get(backbone_cfg, "weights")
    if backbone_weights and init_backbone and not weights:
        load_backbone_weights(backbone, backbone_weights)
    elif not backbone_weights and init_backbone and not weights and name != "tiny":
        log.warning(
            "backbone.weights is null: the %s backbone starts from random weights. The paper initialises "
            "it from ImageNet; set backbone.weights=<torchvision %s .pth file>.",
            name,
            name,
        )
    head = int(head_channels) if head_channels else default_head_channels(backbone, name)
    model = DRSClassifier(backbone, num_classes, head, activation)
    if weights:
        load_classifier_weights(model, weights)
    return model


def build_classifier(
    backbone_cfg: Any,
    drs_cfg: Any,
    num_classes: int,
    head_channels: int | None = None,
    weights: str | None = None,
    init_backbone: bool = True,
) -> DRSClassifier:
    """The DRS classifier of the ``backbone`` and ``drs`` config groups.

    ``weights`` (``model.weights``) is a whole-classifier file (a wsss checkpoint or the authors'
    release); without it the backbone starts from ``backbone.weights`` (ImageNet) when set and
    ``init_backbone`` is true (pass false when a checkpoint is loaded afterwards anyway).
    """
    activation = activation_from_config(drs_cfg)
    return _assemble(backbone_cfg, activation, num_classes, head_channels, weights, init_backbone)


def build_refiner(
    backbone_cfg: Any,
    num_classes: int,
    head_channels: int | None = None,
    weights: str | None = None,
    init_backbone: bool = True,
) -> DRSClassifier:
    """The refinement network (DRS-dagger): the classifier's architecture with plain ReLUs everywhere."""
    activation = make_activation("off")
    return _assemble(backbone_cfg, activation, num_classes, head_channels, weights, init_backbone)
