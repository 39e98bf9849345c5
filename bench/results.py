"""The one results file of ``make bench`` (bench/results.json): machine, figures, and the printed table.

A benchmark returns a ``Section``: what it measured (``sizes``, in words), its ``figures`` and any
``details`` (every round, intermediate numbers). A ``Figure`` is one number; one with a baseline is a
ratio measured in the same run (``unit="x"``, > 1 = wsss faster) and may carry a ``target``:
``met`` = value >= target, or value <= target for an upper bound (``at_most``).
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
MACHINE_KEYS = ("platform", "cpu_model", "cores", "threads", "torch", "device", "python")
FIGURE_KEYS = ("name", "value", "unit", "baseline", "target", "at_most", "met", "note")


@dataclass
class Figure:
    """One measured number; ``baseline`` names what a ratio is measured against."""

    name: str
    value: float
    unit: str
    baseline: str | None = None
    target: float | None = None
    note: str = ""
    at_most: bool = False

    @property
    def met(self) -> bool | None:
        """Whether the value reaches the target (None without a target or a finite value)."""
        if self.target is None or not math.isfinite(self.value):
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = round(self.value, 4) if math.isfinite(self.value) else None
        out["met"] = self.met
        return {k: out[k] for k in FIGURE_KEYS}


def ratio(name: str, value: float, baseline: str, target: float | None = None, note: str = "") -> Figure:
    """A speed ratio (times faster than ``baseline``)."""
    return Figure(name, value, "x", baseline=baseline, target=target, note=note)


@dataclass
class Section:
    """What one benchmark hands the runner."""

    sizes: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def run_section(build: Callable[[], Section]) -> dict[str, Any]:
    """A benchmark's entry in the results file: its section as dicts, its seconds, and the traceback
    (``error``) when it crashed instead: a broken benchmark is reported, the others still run."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"sizes": "", "figures": [], "details": {}, "error": None}
    try:
        section = build()
        entry.update(
            sizes=section.sizes, figures=[f.to_dict() for f in section.figures], details=section.details
        )
    except Exception:
        entry["error"] = traceback.format_exc()
        print(entry["error"], file=sys.stderr)
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return entry


def finish(results: dict[str, Any], out: Path, started: float) -> int:
    """Total seconds, check, write ``out`` atomically, print the table; exit status 1 if a benchmark crashed."""
    from wsss.pipeline.artifacts import write_json

    results["seconds"] = round(time.perf_counter() - started, 1)
    validate(results)
    write_json(out, results)
    print(table(results))
    print(f"\n{results['seconds']:.0f} s; wrote {out}")
    return 1 if any(b["error"] for b in results["benchmarks"].values()) else 0


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where the run happened (``wsss.bench.measure.machine``)."""
    from wsss.bench.measure import machine as describe

    return describe(device)


def validate(results: dict[str, Any]) -> None:
    """Raise ValueError naming the first thing ``results`` lacks to be a bench/results.json."""
    if results.get("schema") != SCHEMA:
        raise ValueError(f"results schema is {results.get('schema')!r}, expected {SCHEMA}")
    missing = [k for k in MACHINE_KEYS if k not in results.get("machine", {})]
    if missing:
        raise ValueError(f"results.machine lacks {missing}")
    benchmarks = results.get("benchmarks")
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise ValueError("results.benchmarks must map benchmark names to their sections")
    for name, section in benchmarks.items():
        for key in ("sizes", "seconds", "figures", "error"):
            if key not in section:
                raise ValueError(f"benchmark {name!r} lacks {key!r}")
        for fig in section["figures"]:
            absent = [k for k in FIGURE_KEYS if k not in fig]
            if absent:
                raise ValueError(f"benchmark {name!r}: figure {fig.get('name')!r} lacks {absent}")
            if fig["unit"] == "x" and not fig["baseline"]:
                raise ValueError(f"benchmark {name!r}: ratio {fig['name']!r} names no baseline")


def table(results: dict[str, Any]) -> str:
    """Every figure of every benchmark as one text table (target column: '>= t' and met/MISSED)."""
    rows = [("figure", "value", "target", "vs", "note")]
    for name, section in results["benchmarks"].items():
        if section.get("error"):
            rows.append((f"{name}", "ERROR", "", "", section["error"].splitlines()[-1][:80]))
        for fig in section["figures"]:
            value = "n/a" if fig["value"] is None else f"{fig['value']:.4g} {fig['unit']}".strip()
            target = ""
            if fig["target"] is not None:
                bound = "<=" if fig["at_most"] else ">="
                target = f"{bound} {fig['target']:g} " + {True: "met", False: "MISSED", None: "?"}[fig["met"]]
            rows.append((fig["name"], value, target, fig["baseline"] or "", fig["note"]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
        if i == 0:
            lines.append("-" * (sum(widths) + 12))
    return "\n".join(lines)
