"""The cost model's arithmetic: what a stage does (``Work``), what each unit costs here (``Rate``), and
the projected seconds of stages and sweeps (``stage_seconds``, ``project``, ``sweep_cost``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

VOC_IMAGES: dict[str, int] = {"train_aug": 10_582, "val": 1_449, "train": 1_464, "test": 1_456}
"""Images per split of VOC 2012 + SBD (docs/protocol.md "Data")."""


@dataclass(frozen=True)
class Work:
    """What one stage does: ``steps`` training batches (a forward and backward pass each), ``images``
    through inference (maps, pseudo labels, evaluation, a training stage's validation passes),
    ``scored`` images compared with ground truth (seed sweep, pseudo-label quality) and ``epochs``."""

    stage: str
    steps: int = 0
    images: int = 0
    scored: int = 0
    epochs: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.images, self.scored, self.epochs) < 0:
            raise ValueError(f"{self.stage}: counts cannot be negative ({self})")


@dataclass(frozen=True)
class Rate:
    """Measured cost on one machine: seconds per training batch, per inference image, per scored
    image, per epoch, and fixed seconds (start-up, set-up, the end)."""

    seconds_per_step: float = 0.0
    seconds_per_image: float = 0.0
    seconds_per_scored: float = 0.0
    seconds_per_epoch: float = 0.0
    fixed_seconds: float = 0.0

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 0:
            raise ValueError(f"negative seconds in {self}; a measured cost is >= 0")


def stage_seconds(work: Work, rate: Rate) -> float:
    """Projected seconds of one stage: fixed + steps x s/step + images x s/image + scored x s/scored
    + epochs x s/epoch."""
    return (
        rate.fixed_seconds
        + work.steps * rate.seconds_per_step
        + work.images * rate.seconds_per_image
        + work.scored * rate.seconds_per_scored
        + work.epochs * rate.seconds_per_epoch
    )


def project(works: Sequence[Work], rates: Mapping[str, Rate]) -> dict[str, float]:
    """Seconds per stage (in order) and ``total``; every stage of ``works`` needs a rate."""
    missing = [w.stage for w in works if w.stage not in rates]
    if missing:
        raise KeyError(f"no measured rate for stage(s) {missing}; measure them first (have: {sorted(rates)})")
    out = {w.stage: stage_seconds(w, rates[w.stage]) for w in works}
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class SweepCost:
    """A sweep's projected seconds with shared stages run once (``shared``) and every job alone
    (``unshared``), and how many stage runs each counts."""

    shared: float
    unshared: float
    stage_runs_shared: int
    stage_runs_unshared: int

    @property
    def saved(self) -> float:
        return self.unshared - self.shared


def sweep_cost(
    jobs: Sequence[Sequence[tuple[str, str]]],
    seconds: Mapping[str, float] | Mapping[tuple[str, str], float],
) -> SweepCost:
    """Total seconds of a sweep whose jobs are lists of (stage, identity).

    Jobs holding the same (stage, identity) share that stage's output: ``shared`` counts each identity
    once, ``unshared`` every job's every stage. ``seconds`` gives each stage's cost, keyed by
    (stage, identity) or, for every identity of a stage, by the stage name.
    """

    def cost(stage: str, identity: str) -> float:
        if (stage, identity) in seconds:
            return float(seconds[(stage, identity)])  # type: ignore[index]
        if stage in seconds:
            return float(seconds[stage])  # type: ignore[index]
        raise KeyError(f"no projected seconds for stage {stage!r} (identity {identity!r})")

    runs = [(str(s), str(i)) for job in jobs for s, i in job]
    unique = list(dict.fromkeys(runs))
    return SweepCost(
        shared=sum(cost(*r) for r in unique),
        unshared=sum(cost(*r) for r in runs),
        stage_runs_shared=len(unique),
        stage_runs_unshared=len(runs),
    )
