"""The cost model's arithmetic: projected wall time of a full run from a few measured steps.

A stage's ``Work`` counts what it does (optimizer steps, images through inference); a ``Rate`` is
what one step / one image costs on a machine (``wsss.bench.measure``), plus fixed seconds (start-up).
``project`` multiplies them per stage and sums; ``voc_work`` gives the counts of the paper's recipe on
VOC; ``sweep_cost`` totals a sweep with and without sharing upstream stages between jobs (a stage
identity that several jobs share runs once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VOC_IMAGES: dict[str, int] = {"train_aug": 10_582, "val": 1_449, "train": 1_464, "test": 1_456}
"""Images per split of VOC 2012 + SBD (SPEC.md)."""


@dataclass(frozen=True)
class Work:
    """What one stage does: ``steps`` optimizer steps and ``images`` images through inference
    (maps, pseudo labels, evaluation, the validation passes of a training stage)."""

    stage: str
    steps: int = 0
    images: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.images < 0:
            raise ValueError(
                f"{self.stage}: steps={self.steps}, images={self.images}; counts cannot be negative"
            )


@dataclass(frozen=True)
class Rate:
    """Measured cost on one machine: seconds per optimizer step, per inference image, and fixed seconds."""

    seconds_per_step: float = 0.0
    seconds_per_image: float = 0.0
    fixed_seconds: float = 0.0

    def __post_init__(self) -> None:
        if min(self.seconds_per_step, self.seconds_per_image, self.fixed_seconds) < 0:
            raise ValueError(f"negative seconds in {self}; a measured cost is >= 0")


def stage_seconds(work: Work, rate: Rate) -> float:
    """Projected seconds of one stage: fixed + steps x s/step + images x s/image."""
    return rate.fixed_seconds + work.steps * rate.seconds_per_step + work.images * rate.seconds_per_image


def project(works: Sequence[Work], rates: Mapping[str, Rate]) -> dict[str, float]:
    """Seconds per stage (in order) and ``total``; every stage of ``works`` needs a rate."""
    missing = [w.stage for w in works if w.stage not in rates]
    if missing:
        raise KeyError(f"no measured rate for stage(s) {missing}; measure them first (have: {sorted(rates)})")
    out = {w.stage: stage_seconds(w, rates[w.stage]) for w in works}
    out["total"] = sum(out.values())
    return out


def epoch_steps(images: int, batch_size: int, epochs: int, drop_last: bool = True) -> int:
    """Optimizer steps of ``epochs`` epochs over ``images`` at ``batch_size`` (wsss drops the last
    partial training batch)."""
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"batch_size={batch_size}, epochs={epochs}; need batch_size >= 1 and epochs >= 0")
    per_epoch = images // batch_size if drop_last else -(-images // batch_size)
    return per_epoch * epochs


def voc_work(
    cls_epochs: int = 15,
    cls_batch: int = 5,
    refine_epochs: int = 15,
    refine_batch: int = 5,
    seg_steps: int = 20_000,
    seg_accumulate: int = 1,
    seg_val_every: int | None = 2_000,
    refine: bool = True,
    validate_cls: bool = True,
    images: Mapping[str, int] = VOC_IMAGES,
) -> list[Work]:
    """The stages of the paper's pipeline on VOC (defaults: SPEC.md's recipe) and their counts.

    cls: epochs over train_aug, plus one validation pass over val per epoch when ``validate_cls``;
    maps: every train_aug image; refine (when ``refine``): epochs over train_aug and its maps; pseudo:
    every train_aug image; seg: ``seg_steps`` optimizer steps of ``seg_accumulate`` batches each plus a
    pass over val every ``seg_val_every`` optimizer steps; eval: val. ``Work.steps`` counts batches (a
    forward and backward pass each: what ``wsss.bench.measure`` times per step).
    """
    if seg_accumulate < 1:
        raise ValueError(f"seg_accumulate={seg_accumulate}; give 1 or more batches per optimizer step")
    train, val = images["train_aug"], images["val"]
    works = [
        Work("cls", epoch_steps(train, cls_batch, cls_epochs), cls_epochs * val if validate_cls else 0),
        Work("maps_cls", images=train),
    ]
    if refine:
        works += [
            Work("refine", epoch_steps(train, refine_batch, refine_epochs)),
            Work("maps_refine", images=train),
        ]
    validations = seg_steps // seg_val_every if seg_val_every else 0
    works += [
        Work("pseudo", images=train),
        Work("seg", seg_steps * seg_accumulate, validations * val),
        Work("eval", images=val),
    ]
    return works


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


def format_projection(seconds: Mapping[str, float]) -> str:
    """A text table: stage, hours, share of the total."""
    total = seconds.get("total") or sum(v for k, v in seconds.items() if k != "total")
    lines = [f"{'stage':<12} {'hours':>9} {'share':>6}"]
    for stage, s in seconds.items():
        share = f"{100 * s / total:5.1f}%" if total else "    -"
        lines.append(f"{stage:<12} {s / 3600:9.2f} {share:>6}")
    return "\n".join(lines)
