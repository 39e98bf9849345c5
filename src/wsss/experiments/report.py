"""Sweep results -> the paper's tables, with spreads over seeds, as Markdown, CSV, PNG and a W&B table.

    python -m wsss.experiments.report SWEEP_DIR          # also run by wsss's sweeper at the end of every sweep

Every job writes ``result.json`` into its Hydra job folder (``record_job``): its overrides, experiment
folder, the settings its row depends on (``wsss.experiments.paper.JobSettings``, from the resolved config), its
metrics, and - for a job that failed - the error. The report groups jobs by row (all seeds of a setting
together), gives mean ± sd and n of seed mIoU (the maps the pseudo labels came from), pseudo-label mIoU
and segmentation mIoU, puts the paper's and the release's numbers beside them (matched by settings,
not by override strings), marks rows whose headline mIoU lies within the spread of the best row, lists
the failed jobs, and writes ``report.md``, ``report.csv``, ``report.json`` and ``report.png`` into the
sweep folder. Seed and pseudo-label mIoU are measured against ground truth on the VOC train images
(the WSSS convention for label quality); segmentation mIoU on val.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss.errors import MissingArtifactError
from wsss.experiments.paper import TABLES, JobSettings, order, paper_value, release_value
from wsss.pipeline.artifacts import atomic_path, read_json, write_csv, write_json, write_text
from wsss.pipeline.wandb_lineage import log_report

RESULT = "result.json"
METRICS = {"seed": "seed mIoU", "pseudo": "pseudo mIoU", "seg": "seg mIoU"}
TABLE_KEYS = {
    "table1_delta": {"drs", "drs.mode", "drs.delta"},
    "table2_layers": {"drs.placement"},
    "table3_refine": {"drs", "drs.mode", "pseudo.source"},
    "table4_seg": {"drs", "drs.mode", "segmenter"},
}
"""Overrides a table's rows already tell apart (other varying overrides go into the row label)."""


def record_job(
    output_dir: str | Path, cfg: Any, metrics: dict[str, Any] | None, error: BaseException | None = None
) -> None:
    """Write one job's ``result.json`` for the report (rank 0 only; outside Hydra: nothing)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    if os.environ.get("LOCAL_RANK", "0") != "0" or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    try:
        settings = JobSettings.from_config(cfg)
        described = {**settings.__dict__, "placement": list(settings.placement)}
    except Exception:  # a job whose config is broken (that is why it failed) still gets its line
        described = None
    write_json(
        Path(output_dir) / RESULT,
        {
            "overrides": list(hc.overrides.task),
            "sweep": hc.runtime.choices.get("sweep"),
            "exp_dir": str(cfg.paths.get("exp_dir", "")),
            "settings": described,
            "metrics": metrics or {},
            "status": "failed" if error is not None else "ok",
            "error": f"{type(error).__name__}: {error}" if error is not None else None,
        },
    )


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All job results under a sweep folder, in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingArtifactError(
            f"sweep folder {sweep_dir} does not exist (sweeps write to runs/sweeps/<name>_<time>)"
        )
    paths = sorted(sweep_dir.glob(f"*/{RESULT}"), key=lambda p: (len(p.parent.name), p.parent.name))
    if not paths:
        raise MissingArtifactError(
            f"no job results ({RESULT}) under {sweep_dir}: did the sweep run? Rerun it with the same overrides; "
            "finished stages are reused."
        )
    return [{**read_json(p), "job": p.parent.name} for p in paths]


@dataclass
class Row:
    """One row of a table: a setting and its jobs (one per seed)."""

    table: str
    label: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    mark: str = ""

    @property
    def paper(self) -> float | None:
        return paper_value(self.table, self.label)

    @property
    def release(self) -> str | None:
        return release_value(self.label)

    def stat(self, metric: str) -> tuple[float, float, int] | None:
        """(mean, sd, n) in %; sd is 0 for one seed."""
        values = self.values.get(metric) or []
        if not values:
            return None
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return 100 * statistics.fmean(values), 100 * sd, len(values)


def _metric_values(result: dict[str, Any]) -> dict[str, float]:
    metrics, source = result.get("metrics") or {}, (result.get("settings") or {}).get("source", "cls")
    seed = metrics.get(f"maps_{source}/miou", metrics.get("maps_cls/miou"))  # the maps the labels came from
    found = {
        "seed": seed,
        "pseudo": metrics.get("pseudo/miou"),
        "seg": metrics.get("eval/miou"),
    }
    return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and math.isfinite(v)}


def build_rows(results: Sequence[dict[str, Any]]) -> tuple[list[Row], list[dict[str, Any]]]:
    """The rows (paper order) and the failed jobs."""
    ok = [r for r in results if r.get("status", "ok") == "ok"]
    failed = [r for r in results if r.get("status") == "failed"]
    keys_of = [{o.split("=", 1)[0].lstrip("+") for o in r["overrides"]} for r in ok]
    varying = {
        key
        for key in set().union(*keys_of)
        if key != "seed"
        and len({next((o for o in r["overrides"] if o.split("=", 1)[0].lstrip("+") == key), "") for r in ok})
        > 1
    }
    rows: dict[tuple[str, str], Row] = {}
    for result in ok:
        table = result.get("sweep") or "sweep"
        if not result.get("settings"):
            continue
        settings = JobSettings.from_dict(result["settings"])
        label = settings.label(table)
        extra = sorted(
            o for o in result["overrides"] if o.split("=", 1)[0] in varying - TABLE_KEYS.get(table, set())
        )
        if extra:
            label = f"{label} [{', '.join(extra)}]"
        row = rows.setdefault((table, label), Row(table, label))
        row.jobs.append(result)
        for metric, value in _metric_values(result).items():
            row.values.setdefault(metric, []).append(value)
    ordered = sorted(rows.values(), key=lambda r: (r.table, *order(r.table, r.label)))
    _mark_spread(ordered)
    return ordered, failed


def _headline(rows: Sequence[Row]) -> str | None:
    for metric in ("seg", "pseudo", "seed"):
        if any(r.stat(metric) for r in rows):
            return metric
    return None


def _mark_spread(rows: Sequence[Row]) -> None:
    """Per table: the best row by the headline metric, and rows within the spread of it (sd_a + sd_b)."""
    for table in {r.table for r in rows}:
        mine = [r for r in rows if r.table == table]
        metric = _headline(mine)
        scored = [r for r in mine if metric and r.stat(metric)]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda r: r.stat(metric)[0])
        best.mark = "best"
        b_mean, b_sd, b_n = best.stat(metric)
        for row in scored:
            mean, sd, n = row.stat(metric)
            if row is not best and n > 1 and b_n > 1 and abs(b_mean - mean) <= sd + b_sd:
                row.mark = "within spread of best"


def _cell(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "-"
    mean, sd, n = stat
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {sd:.1f}"


HEADER = ["setting", *METRICS.values(), "n", "paper", "release", "note"]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        n = max((len(v) for v in row.values.values()), default=len(row.jobs))
        paper = f"{row.paper:.1f}" if row.paper is not None else "-"
        out.append(
            [row.label, *(_cell(row.stat(m)) for m in METRICS), str(n), paper, row.release or "-", row.mark]
        )
    return out


def markdown(rows: Sequence[Row], failed: Sequence[dict[str, Any]]) -> str:
    lines = []
    for table in sorted({r.table for r in rows}):
        mine = [r for r in rows if r.table == table]
        lines += [
            f"### {TABLES.get(table, table)}",
            "",
            "| " + " | ".join(HEADER) + " |",
            "|" + "---|" * len(HEADER),
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(mine)]
        lines.append("")
    lines.append(
        "In %, mean ± sd over seeds (n). Seed and pseudo-label mIoU are scored against ground truth on VOC train "
        "(the WSSS convention for label quality); seg mIoU on val. 'paper': the paper's val mIoU for the row; "
        "'release': what the authors' released code reports."
    )
    if failed:
        lines += ["", f"**{len(failed)} job(s) failed** (the rows above leave them out):", ""]
        lines += [f"- job {r['job']} ({' '.join(r['overrides'])}): {r.get('error')}" for r in failed]
    return "\n".join(lines) + "\n"


def figure(rows: Sequence[Row], path: Path) -> Path | None:
    """One panel per table: mIoU against delta (Table 1), bars otherwise; error bars are the sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = sorted({r.table for r in rows})
    metric = _headline(rows)
    if not tables or metric is None:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for ax, table in zip(axes[0], tables, strict=True):
        mine = [r for r in rows if r.table == table and r.stat(metric)]
        means = [r.stat(metric)[0] for r in mine]
        sds = [r.stat(metric)[1] for r in mine]
        papers = [r.paper for r in mine]
        deltas = [JobSettings.from_dict(r.jobs[0]["settings"]) for r in mine]
        if table == "table1_delta" and all(s.mode == "fixed" for s in deltas):
            x = [s.delta for s in deltas]
            ax.errorbar(x, means, yerr=sds, marker="o", capsize=3, label=f"wsss ({METRICS[metric]})")
            if any(p is not None for p in papers):
                ax.plot(
                    x, [p if p is not None else math.nan for p in papers], "s--", label="paper (seg mIoU)"
                )
            ax.set_xlabel("delta")
        else:
            x = list(range(len(mine)))
            ax.bar([i - 0.2 for i in x], means, 0.4, yerr=sds, capsize=3, label=f"wsss ({METRICS[metric]})")
            ax.bar(
                [i + 0.2 for i in x],
                [p if p is not None else 0 for p in papers],
                0.4,
                label="paper (seg mIoU)",
            )
            ax.set_xticks(x, [r.label for r in mine], rotation=30, ha="right", fontsize=8)
        ax.set_title(TABLES.get(table, table), fontsize=9)
        ax.set_ylabel("mIoU (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def report(sweep_dir: str | Path, wandb_log: bool = True) -> str:
    """Write the sweep's report files; returns the Markdown."""
    sweep_dir = Path(sweep_dir)
    rows, failed = build_rows(collect(sweep_dir))
    text = markdown(rows, failed)
    write_text(sweep_dir / "report.md", text)
    write_csv(
        sweep_dir / "report.csv",
        ["table", *HEADER],
        ([r.table, *c] for r, c in zip(rows, table_rows(rows), strict=True)),
    )
    write_json(
        sweep_dir / "report.json",
        {
            "rows": [
                {"table": r.table, "label": r.label, "paper": r.paper, "release": r.release, "mark": r.mark,
                 "stats": {m: r.stat(m) for m in METRICS}, "jobs": [j["job"] for j in r.jobs]}
                for r in rows
            ],
            "failed": [{"job": r["job"], "overrides": r["overrides"], "error": r.get("error")} for r in failed],
        },
    )  # fmt: skip
    png = figure(rows, sweep_dir / "report.png")
    if wandb_log:
        log_report(
            sweep_dir,
            ["table", *HEADER],
            [[r.table, *c] for r, c in zip(rows, table_rows(rows), strict=True)],
            png,
        )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise a wsss sweep folder as the paper's tables.")
    parser.add_argument(
        "sweep_dir", help="a Hydra multirun folder, e.g. runs/sweeps/table1_delta_20261128-101500"
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log the table and figure to W&B")
    args = parser.parse_args(argv)
    print(report(args.sweep_dir, wandb_log=not args.no_wandb))


if __name__ == "__main__":
    main()
