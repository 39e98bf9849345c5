"""``make bench``: every benchmark, one bench/results.json, one table.

    python bench/run.py [--only release torch ...] [--rounds 3] [--threads N] [--quick] [--out FILE]

Benchmarks (modules under bench/, each with ``run(opts) -> results.Section``):
release (vs the authors' code paths), torch (Lightning vs plain loops), growth (memory, storage, eval),
pseudo (pseudo-label rules, CRF with 1 and 2 processes), cls_speed (memory formats), data (loaders).
A benchmark that crashes is recorded with its error and the others still run; the exit status is 1 then.
Missing a target is reported in the table, not an error. ``--quick`` runs tiny sizes only (smoke test).
The quality experiment bench/bench_demo_seeds.py (~17 min) is not part of this run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import SCHEMA, finish, machine, run_section  # noqa: E402
from timing import set_clock  # noqa: E402

BENCHMARKS = {
    "release": "bench_release",
    "torch": "bench_torch",
    "growth": "bench_growth",
    "pseudo": "bench_pseudo",
    "cls_speed": "bench_cls_speed",
    "data": "bench_data",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds; the fastest counts")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: on a shared machine more threads wait on each other)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="single-process timings: CPU seconds (steady on a shared machine) or wall time; pools always wall",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes of the pseudo-label and CRF pools")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes only (a smoke test, not a measurement)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    opts = parse(argv)
    torch.set_num_threads(opts.threads)
    set_clock(opts.clock)
    started = time.perf_counter()
    results = {
        "schema": SCHEMA,
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": opts.rounds,
            "workers": opts.workers,
            "quick": opts.quick,
            "clock": opts.clock,
        },
        "note": (
            "ratios: best interleaved round of each variant, measured in this run (a shared machine's "
            "load hits every variant of a round alike); > 1 = wsss faster. Single-process variants are "
            "timed in CPU seconds of their process (settings.clock), pools in wall time"
        ),
        "benchmarks": {},
    }
    for name in opts.only or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        results["benchmarks"][name] = run_section(
            lambda name=name: importlib.import_module(BENCHMARKS[name]).run(opts)
        )
    return finish(results, opts.out, started)


if __name__ == "__main__":
    sys.exit(main())
