"""What a command would run, in counts: the cost model's plan (no torch, no timing).

For a train.py command line (one run, or a multirun ``-m`` sweep) ``plan`` composes every job's config,
lists the stages each job runs (``wsss.pipeline.runner.pipeline_names``, the stage declarations of
``wsss.pipeline.registry``), the identity of each stage's artifact (``wsss.pipeline.provenance.expected_record``:
jobs whose stage has the same identity share one artifact in the store, so it runs once) and what each
stage does on the dataset the projection is for (``stage_work``: optimizer steps, inference images,
images scored against ground truth, epochs), from the recipe's epochs, steps, batch sizes and splits.

``cost_key`` names what a stage's speed depends on (network, sizes, precision, ...; not seeds or learning
rates): stages of equal cost keys are measured once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsss.bench.costs import VOC_IMAGES, Work
from wsss.errors import ConfigError
from wsss.experiments.sweeps import with_seeds
from wsss.pipeline.config import compose
from wsss.pipeline.provenance import expected_record, staged_config
from wsss.pipeline.registry import stage as declaration
from wsss.pipeline.runner import pipeline_names

VOC_IMAGE_HW = (375, 500)
"""The most common VOC 2012 image size (height, width); most images are 500 px on their long side."""
CLASSES_PER_IMAGE = 1.5
"""Mean number of classes in an image label (VOC train_aug ~1.5; the toy generator's 1-3 objects ~1.6)."""


@dataclass(frozen=True)
class Dataset:
    """The data a projection is for: images per split and a typical image size."""

    name: str
    splits: Mapping[str, int]
    image_hw: tuple[int, int]
    classes_per_image: float = CLASSES_PER_IMAGE

    def images(self, split: str) -> int:
        if split not in self.splits:
            raise KeyError(
                f"split {split!r} has no known size on {self.name} (known: {', '.join(sorted(self.splits))}); "
                "project onto a dataset that has it (--dataset) or set the data.*_split keys to one of these"
            )
        return int(self.splits[split])


VOC = Dataset("voc", dict(VOC_IMAGES), VOC_IMAGE_HW)
"""PASCAL VOC 2012 + SBD: 10,582 train_aug, 1,449 val, 1,464 train, 1,456 test images."""


def toy_dataset(cfg: DictConfig) -> Dataset:
    """The generated toy data of ``cfg.data.toy`` (train_aug = train; images ``size`` x ``size``)."""
    toy = cfg.data.toy
    n_train, n_val, n_test = int(toy.num_train), int(toy.num_val), int(toy.num_test)
    splits = {"train_aug": n_train, "train": n_train, "val": n_val, "test": n_test}
    return Dataset("toy", splits, (int(toy.size), int(toy.size)))


DATASETS = ("auto", "voc", "toy")


def dataset_for(cfg: DictConfig, choice: str = "auto") -> Dataset:
    """``voc``, ``toy`` (the config's generated data), or ``auto``: toy when the config generates its data."""
    if choice not in DATASETS:
        raise ConfigError(f"dataset {choice!r}; choose one of {', '.join(DATASETS)}")
    if choice == "toy" or (choice == "auto" and bool(cfg.data.get("generate", False))):
        if "toy" not in cfg.data:
            raise ConfigError(
                "--dataset toy needs a generated data config (data=toy): cfg.data.toy is absent"
            )
        return toy_dataset(cfg)
    return VOC


# --- work per stage -------------------------------------------------------------------------------


def _trainer_value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, f"trainer.{key}", default=None)


def batches_per_epoch(images: int, batch_size: int, limit: Any = None) -> int:
    """Training batches of one epoch: the last partial batch is dropped (wsss's training loaders) unless
    the split is smaller than a batch; ``limit`` = ``trainer.limit_train_batches`` (int or share)."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}; give 1 or more")
    n = images // batch_size if images >= batch_size else 1
    if isinstance(limit, bool) or limit is None:
        return n
    if isinstance(limit, int) or (isinstance(limit, float) and limit > 1):
        return min(n, int(limit))
    return max(1, int(n * float(limit))) if float(limit) > 0 else 0


def _epochs(cfg: DictConfig, stage_epochs: Any) -> int:
    override = _trainer_value(cfg, "max_epochs")
    return int(override if override is not None and int(override) >= 0 else stage_epochs)


def seg_validations(max_steps: int, every: int | None) -> int:
    """Validation passes of the seg stage: one every ``every`` optimizer steps, plus one of the final
    network when the last step is not one of them (``every`` None: counted per epoch by the caller)."""
    if not every:
        return 0
    passes = max_steps // int(every)
    return passes + (1 if max_steps % int(every) else 0)


def stage_work(cfg: DictConfig, stage: str, data: Dataset) -> Work:
    """What ``stage`` does under ``cfg`` on ``data`` (``cfg``: the job's config, not yet staged), counted
    from the stage's declared ``cost``."""
    staged = staged_config(cfg, stage)
    cost = declaration(stage).cost

    def value(key: str | None) -> Any:
        return OmegaConf.select(staged, key) if key else None

    def images(key: str | None) -> int:
        return data.images(str(value(key))) if key else 0

    limit = _trainer_value(staged, "limit_train_batches")
    no_validation = _trainer_value(staged, "limit_val_batches") == 0
    if cost.epochs:
        epochs = _epochs(staged, value(cost.epochs))
        per_epoch = batches_per_epoch(images(cost.train), int(staged.data.batch_size), limit)
        every = int(_trainer_value(staged, "check_val_every_n_epoch") or 1)
        validations = 0 if no_validation or not cost.validate else epochs // every
        return Work(
            stage, steps=epochs * per_epoch, images=validations * images(cost.validate), epochs=epochs
        )
    if cost.steps:
        steps = int(_trainer_value(staged, "max_steps") or value(cost.steps))
        batches = steps * int(value(cost.accumulate) or 1)
        per_epoch = batches_per_epoch(
            images(cost.train), int(value(cost.batch) or staged.data.batch_size), limit
        )
        epochs = math.ceil(batches / per_epoch) if per_epoch else 0
        every = value(cost.val_every)
        validations = seg_validations(steps, every) if every else epochs
        validations = 0 if no_validation or not cost.validate else validations
        return Work(stage, steps=batches, images=validations * images(cost.validate), epochs=epochs)
    return Work(stage, images=images(cost.infer), scored=images(cost.scored))


# --- what a stage's speed depends on --------------------------------------------------------------

_COMMON = ("trainer.accelerator", "trainer.precision", "trainer.benchmark", "data.mean", "data.std")
_NOT_SPEED = ("name", "weights", "delta")
"""Keys inside those nodes that do not change the cost (labels, weight files, DRS's fixed delta)."""


def speed_config(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The values ``stage``'s cost depends on (network, sizes, precision, workers; not seeds or rates)."""

    staged = staged_config(cfg, stage)
    declared = declaration(stage)
    kind = declared.command or declared.name
    keys = declared.speed
    out: dict[str, Any] = {"stage": kind}
    for key in (*keys, *_COMMON):
        value = OmegaConf.select(staged, key, default=None, throw_on_missing=False)
        if isinstance(value, DictConfig):
            value = {
                k: v for k, v in OmegaConf.to_container(value, resolve=True).items() if k not in _NOT_SPEED
            }
        elif OmegaConf.is_list(value):
            value = OmegaConf.to_container(value, resolve=True)
        out[key] = value
    if kind == "maps":  # the refined maps come from the refiner: no DRS whatever drs says
        out["drs"] = None if staged.maps.source == "refine" else _drs_cost(staged)
    return out


def _drs_cost(cfg: DictConfig) -> Any:
    node = OmegaConf.to_container(cfg.drs, resolve=True)
    return {k: v for k, v in node.items() if k not in _NOT_SPEED}


def cost_key(cfg: DictConfig, stage: str) -> str:
    """A short hash of ``speed_config``: stages with equal keys cost the same per step and per image."""
    text = json.dumps(speed_config(cfg, stage), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- jobs -----------------------------------------------------------------------------------------


@dataclass
class StageRun:
    """One stage of one job: its artifact's identity, what it does, and what its speed depends on."""

    stage: str
    identity: str
    work: Work
    cost_key: str


@dataclass
class Job:
    overrides: list[str]
    cfg: DictConfig
    stages: list[StageRun] = field(default_factory=list)

    def runs(self) -> list[tuple[str, str]]:
        return [(s.stage, s.identity) for s in self.stages]


def job_overrides(arguments: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job ``train.py [-m] <arguments>`` would run.

    A multirun is expanded the way the sweeper does: the sweep file's ``hydra.sweeper.params`` first,
    then the command line, as a cartesian product (``seeds=[...]`` adds a seed dimension).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(arguments))
    sweeping = [o.input_line for o in parsed if o.is_sweep_override()]
    if not multirun:
        if sweeping:
            raise ConfigError(
                f"{' '.join(sweeping)} sweeps values: add -m (a multirun) to estimate the sweep"
            )
        return [list(arguments)]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = compose(fixed)
    arguments = with_seeds(base, list(arguments))
    params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *arguments]), None)
    return [list(job) for batch in batches for job in batch]


def plan(arguments: Sequence[str], multirun: bool = False, dataset: str = "auto") -> list[Job]:
    """Every job of the command with its stages (identity, work on the dataset, cost key)."""

    jobs = []
    for overrides in job_overrides(arguments, multirun):
        cfg = compose(overrides)
        data = dataset_for(cfg, dataset)
        job = Job(overrides, cfg)
        for name in pipeline_names(cfg):
            identity = expected_record(cfg, name)["identity"]
            job.stages.append(StageRun(name, identity, stage_work(cfg, name, data), cost_key(cfg, name)))
        jobs.append(job)
    return jobs


def shared_runs(jobs: Sequence[Job]) -> dict[tuple[str, str], int]:
    """How many jobs use each (stage, identity): above 1, the store makes it once for all of them."""
    counts: dict[tuple[str, str], int] = {}
    for job in jobs:
        for run in job.runs():
            counts[run] = counts.get(run, 0) + 1
    return counts
