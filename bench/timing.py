"""Timing helpers shared by the benchmarks: one timed call, interleaved rounds of several variants, ratios.

Every figure with a baseline is measured in the same run, round by round (round 1: every variant,
round 2: every variant, ...), so a load change on a shared machine hits every variant alike; the
fastest round of each variant counts (the least disturbed one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def synchronize(device: Any = None) -> None:
    """Wait for queued CUDA work when ``device`` is a CUDA device (no-op otherwise)."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: Any = None) -> float:
    """Seconds one call of ``fn`` takes (waiting for CUDA work when ``device`` is a CUDA device)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleave(
    variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, device: Any = None
) -> dict[str, list[float]]:
    """Seconds of every call: ``warmup`` untimed calls of each variant, then ``rounds`` rounds in which
    every variant runs once, in order.

    A variant may return a number instead of ``None``: that is its own measurement in seconds (e.g. the
    steady-state part of a call that includes start-up) and is recorded instead of the call's time.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; give at least one timed round")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            value = fn()
            synchronize(device)
            elapsed = time.perf_counter() - start
            times[name].append(float(value) if isinstance(value, int | float) else elapsed)
    return times


def best(times: list[float]) -> float:
    """The fastest round (seconds)."""
    if not times:
        raise ValueError("no timed rounds")
    return min(times)


def speedup(baseline: list[float], candidate: list[float]) -> float:
    """How many times faster ``candidate`` is than ``baseline``: best(baseline) / best(candidate).

    Both are seconds for the same amount of work (> 1: the candidate is faster).
    """
    fastest = best(candidate)
    if fastest <= 0:
        raise ValueError(f"candidate's best round took {fastest} s; a timed round must take time")
    return best(baseline) / fastest


def summarize(times: Mapping[str, list[float]], units: Mapping[str, float] | float, unit: str) -> dict:
    """Per variant: best seconds, ``<unit>_per_s`` at the best round, and every round (rounded).

    ``units`` is the work per call (images, steps), one number for all variants or one per variant.
    """
    out = {}
    for name, t in times.items():
        n = units if isinstance(units, int | float) else units[name]
        out[name] = {
            "seconds": round(best(t), 4),
            f"{unit}_per_s": round(n / best(t), 3),
            "rounds": [round(x, 4) for x in t],
        }
    return out


def interleaved_rates(
    variants: Mapping[str, Callable[[], object]], repeat: int, images: int, device: Any = None
) -> dict[str, dict[str, Any]]:
    """``interleave`` without warm-up, summarised as images/s (kept for the standalone scripts)."""
    times = interleave(variants, repeat, warmup=0, device=device)
    return {
        name: {
            "seconds": round(best(t), 3),
            "images_per_s": round(images / best(t), 2),
            "all_seconds": [round(x, 3) for x in t],
        }
        for name, t in times.items()
    }
