"""Timing helpers shared by the benchmarks: one timed call, and interleaved rounds of several variants."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def timed(fn: Callable[[], object], device: Any = None) -> float:
    """Seconds one call of ``fn`` takes (waiting for CUDA work when ``device`` is a CUDA device)."""
    cuda = getattr(device, "type", None) == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_rates(
    variants: Mapping[str, Callable[[], object]], repeat: int, images: int, device: Any = None
) -> dict[str, dict[str, Any]]:
    """Time every variant ``repeat`` times, round by round (load changes on a shared machine hit every
    variant alike); per variant the fastest round, images/s at that round, and all rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {
        name: {
            "seconds": round(min(t), 3),
            "images_per_s": round(images / min(t), 2),
            "all_seconds": [round(x, 3) for x in t],
        }
        for name, t in times.items()
    }
