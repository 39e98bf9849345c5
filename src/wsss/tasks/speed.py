"""Speed options shared by the training tasks: the channels_last memory format.

With ``channels_last`` a task keeps its network's weights in NHWC order and hands the network NHWC
images, so every convolution runs on NHWC tensors (faster with mixed precision on recent GPUs; a wash
on CPU, bench/bench_cls_speed.py). Results equal the contiguous ones up to float rounding.
``torch.compile`` is applied by the stages (``<stage>.compile``), in place, before the task wraps the
network, so parameter names and checkpoint keys stay the same.
"""

from __future__ import annotations

import torch
from torch import nn


def use_channels_last(model: nn.Module, enabled: bool) -> None:
    """Store ``model``'s weights in channels_last order (in place) when ``enabled``."""
    if enabled:
        model.to(memory_format=torch.channels_last)


def channels_last_input(images: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``images`` (B, 3, H, W) in channels_last order when ``enabled``, else unchanged."""
    return images.contiguous(memory_format=torch.channels_last) if enabled else images
