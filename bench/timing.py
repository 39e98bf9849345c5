"""Timing helpers shared by the benchmarks: one timed call, interleaved rounds of several variants, ratios.

Every figure with a baseline is measured in the same run, round by round (round 1: every variant,
round 2: every variant, ...), so a load change on a shared machine hits every variant alike; the
fastest round of each variant counts (the least disturbed one).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
"""``cpu``: this process's CPU seconds (all its threads), what single-process work costs whatever else
the machine runs; ``wall``: elapsed seconds, for work spread over processes (pools)."""
_clock = ["wall"]


def set_clock(name: str) -> None:
    """The clock ``now`` reads (and ``interleave`` uses unless told otherwise): ``cpu`` or ``wall``."""
    if name not in CLOCKS:
        raise ValueError(f"clock {name!r}; choose one of {sorted(CLOCKS)}")
    _clock[0] = name


def clock_name() -> str:
    return _clock[0]


def now() -> float:
    """The current reading of the chosen clock (seconds)."""
    return CLOCKS[_clock[0]]()


def synchronize(device: Any = None) -> None:
    """Wait for queued CUDA work when ``device`` is a CUDA device (no-op otherwise)."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def interleave_both(
    variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, device: Any = None
) -> dict[str, dict[str, list[float]]]:
    """Seconds of every call by both clocks, ``{"cpu": {name: [...]}, "wall": {name: [...]}}``:
    ``warmup`` untimed calls of each variant, then ``rounds`` rounds in which every variant runs once,
    in order.

    A variant may return a number instead of ``None``: that is its own measurement in seconds (e.g. the
    steady-state part of a call that includes start-up) and is recorded for both clocks.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; give at least one timed round")
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {c: {name: [] for name in variants} for c in CLOCKS}
    for _ in range(rounds):
        for name, fn in variants.items():
            synchronize(device)
            start = {c: read() for c, read in CLOCKS.items()}
            value = fn()
            synchronize(device)
            for c, read in CLOCKS.items():
                elapsed = read() - start[c]
                times[c][name].append(float(value) if isinstance(value, int | float) else elapsed)
    return times


def interleave(
    variants: Mapping[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    device: Any = None,
    clock: str | None = None,
) -> dict[str, list[float]]:
    """``interleave_both`` by one clock: ``clock``, else the one of ``set_clock``."""
    return interleave_both(variants, rounds, warmup, device)[clock or _clock[0]]


def _variant_process(
    conn, factory: Callable[..., Callable[[], object]], kwargs: dict, threads: int, clock: str
) -> None:
    """Worker of ``interleave_in_processes``: build the variant once, then run it on every request."""
    import torch

    torch.set_num_threads(threads)
    set_clock(clock)
    try:
        fn = factory(**kwargs)
        conn.send(("ready", None))
        while conn.recv() == "run":
            start = now()
            value = fn()
            elapsed = now() - start
            conn.send(("done", float(value) if isinstance(value, int | float) else elapsed))
    except Exception as err:  # reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def interleave_in_processes(
    variants: Mapping[str, tuple[Callable[..., Callable[[], object]], dict]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """``interleave`` with every variant in a process of its own, for variants that change process-wide
    state (the allocator's thresholds): ``factory(**kwargs)`` (a module-level function) builds the
    variant's callable once in its process; the parent asks the processes in turn, round by round, so
    only one runs at a time, each timing itself with the clock of ``set_clock``. Returns seconds per
    round (or the callables' own returned seconds).
    """
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")
    procs, pipes = {}, {}
    try:
        for name, (factory, kwargs) in variants.items():
            parent, child = ctx.Pipe()
            procs[name] = ctx.Process(
                target=_variant_process,
                args=(child, factory, kwargs, torch.get_num_threads(), clock_name()),
                daemon=True,
            )
            procs[name].start()
            pipes[name] = parent
        for name, pipe in pipes.items():
            _expect(pipe.recv(), "ready", name)

        def ask(name: str) -> float:
            pipes[name].send("run")
            return _expect(pipes[name].recv(), "done", name)

        for _ in range(warmup):
            for name in variants:
                ask(name)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name in variants:
                times[name].append(ask(name))
        return times
    finally:
        for name, pipe in pipes.items():
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send("stop")
            procs[name].join(timeout=30)
            if procs[name].is_alive():
                procs[name].terminate()


def _expect(message: tuple[str, Any], kind: str, name: str) -> Any:
    got, value = message
    if got != kind:
        raise RuntimeError(f"variant {name!r} failed in its process: {value}")
    return value


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
