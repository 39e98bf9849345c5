"""The table a run ends with: the metrics of every stage it ran, resumed, reused or skipped.

``run_stages`` logs it as a short text table and writes it to the experiment folder as
``summary.json`` (every numeric metric of each stage, with how the run got it and its identity) and
``summary.md`` (the headline metrics, the same table as the log), both written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.pipeline.artifacts import Experiment, write_json, write_text

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
HEADLINE = ("miou", "precision", "recall", "pixel_accuracy", "map", "accuracy", "loss", "best_threshold")
"""The metrics the table shows, in this order, where a stage has them (summary.json keeps them all)."""
HOW = {"run": "ran", "resume": "resumed", "reuse": "reused", "skip": "skipped"}
"""How the run got each stage (``runner.Step.action``), as the table says it."""


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The numeric entries of a stage's ``metrics.json`` (no flags, names or nulls)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def summary_rows(exp: Experiment, actions: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per ``(stage, action)``: stage, how, identity, its numeric metrics (from ``metrics.json``)."""
    rows = []
    for name, action in actions:
        record = exp.record(name) or {}
        rows.append(
            {
                "stage": name,
                "how": HOW.get(action, action),
                "identity": record.get("identity"),
                "metrics": numeric_metrics(exp.metrics(name) or {}),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The headline metrics of ``rows`` as an aligned text table (``markdown``: a Markdown table)."""
    columns = [k for k in HEADLINE if any(k in r["metrics"] for r in rows)]
    header = ["stage", "how", *columns]
    body = [[r["stage"], r["how"], *(_cell(r["metrics"].get(k)) for k in columns)] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in body)]) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *body]) + "\n"


def write_summary(exp: Experiment, rows: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """``summary.json`` and ``summary.md`` in the experiment folder (atomic writes); their paths."""
    root = Path(exp.root)
    json_path, md_path = root / SUMMARY_JSON, root / SUMMARY_MD
    write_json(json_path, {"experiment": str(root), "stages": list(rows)})
    write_text(md_path, f"# {root.name}: metrics of each stage\n\n{format_table(rows, markdown=True)}")
    return json_path, md_path
