"""Sweep results -> paper-shaped tables.

Every job writes ``result.json`` (its overrides, experiment folder and metrics) into its Hydra
job folder; ``python -m wsss.report SWEEP_DIR`` reads them all and prints a Markdown table with
the paper's number beside ours where the sweep reproduces a paper table, and writes
``SWEEP_DIR/report.md`` and ``SWEEP_DIR/report.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from wsss.artifacts import read_json, write_json, write_text

RESULT = "result.json"
COLUMNS = {
    "maps_cls/miou": "seed mIoU (cls)",
    "maps_refine/miou": "seed mIoU (refine)",
    "pseudo/miou": "pseudo mIoU",
    "pseudo/precision": "pseudo precision",
    "pseudo/recall": "pseudo recall",
    "eval/miou": "seg mIoU",
}
# Paper numbers (VGG-16 LargeFOV, VOC val mIoU), keyed by the override that selects the row.
PAPER = {
    "drs.delta=0.9": 51.9,
    "drs.delta=0.8": 56.0,
    "drs.delta=0.7": 58.7,
    "drs.delta=0.6": 62.3,
    "drs.delta=0.55": 62.8,
    "drs.delta=0.5": 62.3,
    "drs.delta=0.4": 59.6,
    "drs.placement=[]": 50.1,
    "drs.placement=[layer6]": 60.8,
    "drs.placement=[layer5,layer6]": 62.2,
    "drs.placement=[layer4,layer5,layer6]": 62.8,
    "drs.placement=[layer3,layer4,layer5,layer6]": 62.9,
    "drs.placement=[layer2,layer3,layer4,layer5,layer6]": 62.7,
    "drs.placement=[layer1,layer2,layer3,layer4,layer5,layer6]": 62.9,
    "drs.placement=[layer1,layer2,layer3,layer4,layer5]": 58.2,
    "drs.placement=[layer1,layer2,layer3,layer4]": 53.6,
    "drs=learnable,pseudo.source=cls": 62.9,
    "drs=learnable,pseudo.source=refine": 63.5,
    "drs=fixed,pseudo.source=cls": 62.8,
    "drs=fixed,pseudo.source=refine": 63.6,
    "drs=learnable,segmenter=largefov_vgg16": 63.5,
    "drs=fixed,segmenter=largefov_vgg16": 63.6,
    "drs=learnable,segmenter=largefov_r101": 66.5,
    "drs=fixed,segmenter=largefov_r101": 66.8,
    "drs=learnable,segmenter=aspp_r101": 70.4,
    "drs=fixed,segmenter=aspp_r101": 71.2,
}


@rank_zero_only
def save_job_result(
    output_dir: str | Path, overrides: list[str], exp_dir: str, metrics: dict[str, Any]
) -> None:
    """Record one job's outcome for ``report`` (rank 0 only)."""
    write_json(Path(output_dir) / RESULT, {"overrides": overrides, "exp_dir": exp_dir, "metrics": metrics})


def _row_key(overrides: list[str], sweep_keys: set[str]) -> str:
    return ",".join(o for o in sorted(overrides) if o.split("=", 1)[0] in sweep_keys)


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All job results under a sweep folder, in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"sweep folder {sweep_dir} does not exist (sweeps write to runs/sweeps/<name>_<time>)"
        )
    paths = sorted(sweep_dir.glob(f"*/{RESULT}"), key=lambda p: (len(p.parent.name), p.parent.name))
    if not paths:
        raise FileNotFoundError(
            f"no job results ({RESULT}) under {sweep_dir}: did the sweep finish? Rerun it with the same overrides; "
            "finished stages are skipped."
        )
    return [read_json(p) for p in paths]


def _fmt(value: Any) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{100 * value:.1f}" if abs(value) <= 1.0 else f"{value:.1f}"
    return "-"


def table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the swept overrides, our metrics (percent), and the paper's mIoU when known."""
    per_job = [{o.split("=", 1)[0] for o in r["overrides"]} for r in results]
    varying = {
        key
        for key in set().union(*per_job)
        if len({next((o for o in r["overrides"] if o.startswith(key + "=")), "") for r in results}) > 1
    }
    columns = [c for c in COLUMNS if any(c in r["metrics"] for r in results)]
    header = ["setting", *(COLUMNS[c] for c in columns), "paper seg mIoU"]
    rows = []
    for r in results:
        key = _row_key(r["overrides"], varying)
        paper = PAPER.get(key.replace(" ", ""))
        rows.append([key or "(base)", *(_fmt(r["metrics"].get(c)) for c in columns), _fmt(paper)])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(sweep_dir: str | Path) -> str:
    sweep_dir = Path(sweep_dir)
    header, rows = table(collect(sweep_dir))
    text = markdown(header, rows)
    write_text(sweep_dir / "report.md", text)
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text(sweep_dir / "report.csv", buf.getvalue())
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise a wsss sweep folder as a paper-shaped table.")
    parser.add_argument(
        "sweep_dir", help="a Hydra multirun folder, e.g. runs/sweeps/table1_delta_20261128-101500"
    )
    args = parser.parse_args(argv)
    print(report(args.sweep_dir))


if __name__ == "__main__":
    main()
