"""Discriminative Region Suppression (DRS): a ReLU that caps every activation at a share of its channel's max.

On a feature map X = ReLU(x) of shape (B, K, H, W):

- extractor: ``X_max`` = per-channel global max over H, W;
- controller: learnable ``G = sigmoid(FC(GAP(X)))`` with a K -> K linear layer without bias
  (initialised N(0, 0.01), so G starts near 0.5), or a constant ``G = delta``;
- suppressor: ``out = min(X, X_max * G)``.

Nothing is detached: gradients flow through ``X_max`` and ``G``. Backbones ask the factory that
``make_activation`` returns (the ``_target_`` of the ``drs`` config group) for the module that follows
each conv, by block name (``layer1`` .. ``layer6``, layer6 being the classifier head), so the placement
is configuration, not code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from wsss.constants import DRS_LAYERS, DRS_MODES
from wsss.errors import ConfigError

LAYERS = DRS_LAYERS
MODES = DRS_MODES

FC_INIT_STD = 0.01
"""Standard deviation of the controller's initial weights (the authors' release)."""

Activation = Callable[[str, int], nn.Module]
"""``(block name, channels) -> module`` applied after a conv: DRS or a plain ReLU."""


class DRS(nn.Module):
    """DRS after a conv: ``min(ReLU(x), X_max * G)`` with a learnable or fixed controller G.

    Args:
        channels: K, the number of feature channels.
        mode: ``learnable`` (G = sigmoid(FC(GAP(X)))) or ``fixed`` (G = delta).
        delta: the constant controller of ``fixed`` mode, in (0, 1].
        block: the block it follows (``layer1`` .. ``layer6``; set by ``make_activation``), for logs.
    """

    def __init__(self, channels: int, mode: str = "learnable", delta: float = 0.55, block: str = "") -> None:
        super().__init__()
        self.block = str(block)
        if mode not in ("learnable", "fixed"):
            raise ConfigError(f"DRS mode {mode!r} is not one of learnable, fixed (use nn.ReLU for drs=off)")
        if mode == "fixed" and not 0.0 < float(delta) <= 1.0:
            raise ConfigError(f"drs.delta={delta} must lie in (0, 1]; the paper uses 0.4 .. 0.9 (best 0.55)")
        self.channels = int(channels)
        self.mode = mode
        self.delta = float(delta)
        if mode == "learnable":
            # fc.0.weight is the key of the authors' checkpoints (layer{b}_relu{i}.fc.0.weight).
            self.fc = nn.Sequential(nn.Linear(self.channels, self.channels, bias=False), nn.Sigmoid())
            nn.init.normal_(self.fc[0].weight, mean=0.0, std=FC_INIT_STD)

    def controller(self, x: torch.Tensor) -> torch.Tensor | float:
        """G for X = ReLU(x): (B, K, 1, 1) when learnable, else the float delta."""
        if self.mode == "fixed":
            return self.delta
        b, k = x.shape[:2]
        return self.fc(x.mean(dim=(2, 3))).view(b, k, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        x_max = x.amax(dim=(2, 3), keepdim=True)
        return torch.minimum(x, x_max * self.controller(x))

    def extra_repr(self) -> str:
        return f"{self.channels}, mode={self.mode}" + (
            f", delta={self.delta}" if self.mode == "fixed" else ""
        )


def check_placement(placement: Iterable[str]) -> tuple[str, ...]:
    """The placement as a tuple, after checking every name is one of layer1..layer6."""
    names = tuple(str(p) for p in placement)
    unknown = [p for p in names if p not in LAYERS]
    if unknown:
        raise ConfigError(
            f"drs.placement holds {unknown}; use names from {list(LAYERS)} (layer6 = the classifier head)"
        )
    return names


def make_activation(mode: str, delta: float = 0.55, placement: Sequence[str] = LAYERS) -> Activation:
    """A factory ``(block name, channels) -> module``: DRS on the placed blocks, ``nn.ReLU`` elsewhere.

    ``mode="off"`` gives a plain ReLU everywhere (the CAM baseline).
    """
    if mode not in MODES:
        raise ConfigError(f"drs.mode={mode!r} is not one of {list(MODES)}; pick drs=learnable|fixed|off")
    placed = frozenset(check_placement(placement))
    if mode == "fixed":
        DRS(1, "fixed", delta)  # validates delta once, at configuration time

    def activation(layer: str, channels: int) -> nn.Module:
        if layer not in LAYERS:
            raise ValueError(f"unknown block name {layer!r}; backbones name their blocks {list(LAYERS)}")
        if mode != "off" and layer in placed:
            return DRS(channels, mode, delta, block=layer)
        return nn.ReLU(inplace=False)

    return activation


def count_drs(module: nn.Module) -> int:
    """The number of DRS modules inside ``module``."""
    return sum(isinstance(m, DRS) for m in module.modules())
