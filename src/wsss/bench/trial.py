"""Measure every stage of a job on this machine: run the job's own stages, briefly, and time them.

``probe(cfg, stages, data)`` runs the listed stages (and whatever they read) through the runner on
generated data at the projection's image sizes (``wsss.bench.synthetic``, or the toy generator for the
toy data) with random weights and a few steps each: 2 epochs of 3 batches for cls and refine, 6 steps
for seg with a validation after 3, 3 validation images. A ``PhaseTimer`` callback
(``wsss.bench.measure``) in every Trainer-based stage records when each batch ends; the runner's log
gives each stage's start. From these, per stage (``StageRates``): seconds per training batch (loading
included: the stage's own loader and workers), per validation or inference image, per image scored
against ground truth, per epoch (checkpoint, loader restart, validation start) and fixed seconds (the
rest of the probe's stage time). Pseudo labels and evaluation run no Trainer: their per-image work is
timed on the probe's own files (pseudo labels in one process, divided by the worker processes the
stage uses).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from wsss.bench.costs import Rate
from wsss.bench.plan import Dataset
from wsss.bench.synthetic import synthetic_voc
from wsss.data.voc import VOCDataset
from wsss.method.crf import CRFParams
from wsss.method.inference import segment_images
from wsss.models.checkpoint import load_network
from wsss.pipeline.artifacts import read_json
from wsss.pipeline.provenance import staged_config
from wsss.pipeline.registry import STAGES, stage
from wsss.pipeline.runner import experiment, run_stages
from wsss.stages import pseudo as pseudo_stage
from wsss.stages.eval import checkpoint_path, inference_settings, split_dataset
from wsss.stages.pseudo_rules import LabelJob, label_image, set_job

EPOCHS = 2
STEPS_PER_EPOCH = 3
VAL_IMAGES = 3
SEG_STEPS = 6
"""The probe's sizes: enough batches to time a steady step after a warm-up one, and an epoch boundary."""
QUIET = (
    "lightning.pytorch",
    "lightning.fabric",
    "wsss.models.weights",
    "wsss.stages",
    "wsss.tasks",
    "wsss.data",
)
"""Loggers whose start-up messages the probe's short runs would repeat for every stage."""


class StageStarts(logging.Handler):
    """Collects when the runner starts each stage (its ``running stage <name>`` log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.starts: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("running stage "):
            self.starts[record.args[0]] = time.perf_counter()  # type: ignore[index]


def stage_walls(starts: dict[str, float], end: float) -> dict[str, float]:
    """Seconds of each stage: from its start to the next stage's start (the last one: to ``end``)."""
    ordered = sorted(starts.items(), key=lambda kv: kv[1])
    ends = [t for _, t in ordered[1:]] + [end]
    return {name: stop - start for (name, start), stop in zip(ordered, ends, strict=True)}


def upstream_closure(cfg: DictConfig, names: Sequence[str]) -> list[str]:
    """``names`` and every stage they read (directly or through others), in pipeline order."""

    needed: set[str] = set()
    frontier = list(names)
    while frontier:
        name = frontier.pop()
        if name not in needed:
            needed.add(name)
            frontier += list(stage(name).upstream(staged_config(cfg, name)))
    return [s for s in STAGES if s in needed]


def probe_config(cfg: DictConfig, stages: Sequence[str], data: Dataset, tmp: Path) -> DictConfig:
    """``cfg`` made into a short run of ``stages`` on generated data under ``tmp`` (random weights)."""

    probe = cfg.copy()
    batch = int(cfg.data.batch_size)
    n_train = batch * STEPS_PER_EPOCH
    n_eval = min(n_train, 2 * VAL_IMAGES)
    values: dict[str, Any] = {
        "paths.runs": str(tmp / "runs"),
        "paths.data": str(tmp / "data"),
        "exp": "probe",
        "store.enabled": False,
        "logger": None,
        "stage": "pipeline",
        "pipeline.stages": list(stages),
        "force": False,
        "resume": False,
        "backbone.weights": None,
        "model.weights": None,
        "segmenter.weights": None,
        "cls.epochs": EPOCHS,
        "refine.epochs": EPOCHS,
        "seg.max_steps": SEG_STEPS,
        "seg.val_every_n_steps": SEG_STEPS // 2,
        "seg.monitor": None,
        "trainer.devices": 1,
        "trainer.strategy": "auto",
        "trainer.num_nodes": 1,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
        "trainer.max_epochs": None,
        "trainer.max_steps": None,
        "trainer.limit_train_batches": None,
        "trainer.limit_val_batches": None,
        "trainer.limit_predict_batches": None,
        "trainer.fast_dev_run": False,
        "trainer.val_check_interval": None,
        "callbacks.bench_timer": {
            "_target_": "wsss.bench.measure.PhaseTimer",
            "path": str(tmp / "timing") + "/${stage_name}.json",
        },
    }
    if data.name == "toy":
        values |= {"data.toy.num_train": n_train, "data.toy.num_val": VAL_IMAGES, "data.toy.num_test": 1}
    else:
        splits = {"train_aug": n_train, "train": n_eval, "val": VAL_IMAGES, "test": VAL_IMAGES}
        for key in ("train_split", "val_split", "maps_split", "eval_split", "test_split"):
            name = str(cfg.data.get(key))
            splits.setdefault(name, n_train if key in ("train_split", "maps_split") else VAL_IMAGES)
        root = synthetic_voc(tmp / "voc", splits, data.image_hw)
        values |= {
            "data.root": str(root),
            "data.saliency_dir": str(root / "VOCdevkit" / "VOC2012" / "saliency"),
            "data.labels_file": None,
            "data.cache_dir": None,
            "data.generate": False,
        }
    with open_dict(probe):
        for key, value in values.items():
            OmegaConf.update(probe, key, value, merge=False, force_add=True)
    return probe


# --- from times to rates ----------------------------------------------------------------------------


def _mean(values: Sequence[float], default: float = 0.0) -> float:
    return float(statistics.fmean(values)) if values else default


def trainer_rates(times: dict[str, Any]) -> tuple[float, float, float, dict[str, int]]:
    """(seconds per training batch, per validation image, per epoch, counts) from a ``PhaseTimer`` file.

    A batch's seconds are the time between the ends of consecutive batches of one epoch (loading and
    step); the first such interval is a warm-up and left out when others remain, and intervals holding a
    validation pass are left out. An epoch's own seconds are what the time between the ends of two
    epochs' first batches holds beyond their batches and validation images.
    """
    train = [(int(e), float(t)) for e, t in times.get("train", [])]
    val = [(int(p), float(t)) for p, t in times.get("val", [])]
    val_times = [t for _, t in val]
    steps: list[float] = []
    for epoch in sorted({e for e, _ in train}):
        ends = [t for e, t in train if e == epoch]
        for a, b in zip(ends, ends[1:], strict=False):
            if not any(a < v < b for v in val_times):
                steps.append(b - a)
    if len(steps) > 1:
        steps = steps[1:]
    per_val: list[float] = []
    for p in sorted({p for p, _ in val}):
        ends = [t for q, t in val if q == p]
        per_val += [b - a for a, b in zip(ends, ends[1:], strict=False)]
    s_step, s_val = _mean(steps), _mean(per_val)
    firsts = {}
    for e, t in train:
        firsts.setdefault(e, t)
    epochs = sorted(firsts)
    overheads = []
    for e0, e1 in zip(epochs, epochs[1:], strict=False):
        a, b = firsts[e0], firsts[e1]
        n_batches = sum(1 for e, t in train if a < t <= b)
        n_val = sum(1 for v in val_times if a < v < b)
        overheads.append(max(0.0, (b - a) - n_batches * s_step - n_val * s_val))
    counts = {"steps": len(train), "val_images": len(val), "epochs": len(epochs)}
    return s_step, s_val, _mean(overheads), counts


def predict_rate(times: dict[str, Any]) -> tuple[float, int]:
    """(seconds per image, images) of the predict batches (the first batch, a warm-up, left out when
    there are more), up to the Trainer's end (the last files flushed)."""
    batches = [(int(n), float(t)) for n, t in times.get("predict", [])]
    images = sum(n for n, _ in batches)
    if not batches:
        return 0.0, 0
    end = float(times.get("end") or batches[-1][1])
    if len(batches) > 1:
        return (end - batches[0][1]) / max(1, images - batches[0][0]), images
    return (end - float(times["start"])) / max(1, images), images


def _fixed(wall: float, *parts: float) -> float:
    return max(0.0, wall - sum(parts))


def training_rate(wall: float, times: dict[str, Any]) -> Rate:
    s_step, s_val, s_epoch, n = trainer_rates(times)
    fixed = _fixed(wall, n["steps"] * s_step, n["val_images"] * s_val, n["epochs"] * s_epoch)
    return Rate(
        seconds_per_step=s_step, seconds_per_image=s_val, seconds_per_epoch=s_epoch, fixed_seconds=fixed
    )


def maps_rate(wall: float, times: dict[str, Any], timer_end_to_stage_end: float, scored: int) -> Rate:
    s_image, images = predict_rate(times)
    s_scored = timer_end_to_stage_end / max(1, scored)
    return Rate(
        seconds_per_image=s_image,
        seconds_per_scored=s_scored,
        fixed_seconds=_fixed(wall, images * s_image, scored * s_scored),
    )


# --- stages without a Trainer -----------------------------------------------------------------------


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pseudo_rate(cfg: DictConfig, exp: Any, wall: float) -> Rate:
    """Per image: ``label_image`` in this process divided by the stage's worker processes (at most the
    cores); per scored image: the quality evaluation; fixed: the rest of the probe's stage time."""

    staged = staged_config(cfg, "pseudo")
    maps_dir = exp.stage_dir(f"maps_{staged.pseudo.source}")
    out = exp.stage_dir("pseudo")
    dataset = pseudo_stage.voc_dataset(staged, str(staged.data.maps_split))
    rule = pseudo_stage.rule_from_config(staged, maps_dir)
    saliency = Path(staged.data.saliency_dir) if rule.background == "saliency" else None
    crf = CRFParams.from_config(staged.crf) if bool(staged.pseudo.crf) else None
    scratch = Path(tempfile.mkdtemp(prefix="wsss-probe-labels-"))
    try:
        set_job(LabelJob(dataset, maps_dir, scratch, saliency, rule, crf, int(staged.data.num_classes)))
        n = len(dataset.ids)
        one = _timed(lambda: [label_image(i) for i in range(n)]) / n
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parallel = max(1, min(int(staged.pseudo.workers), os.cpu_count() or 1))
    gt = pseudo_stage.voc_dataset(staged, str(staged.data.eval_split))
    scored = len(gt.ids)
    s_scored = _timed(lambda: pseudo_stage.evaluate(out, gt)) / max(1, scored)
    s_image = one / parallel
    return Rate(
        seconds_per_image=s_image,
        seconds_per_scored=s_scored,
        fixed_seconds=_fixed(wall, n * s_image, scored * s_scored),
    )


def inference_rate(cfg: DictConfig, exp: Any, name: str, wall: float) -> Rate:
    """Per image: ``segment_images`` as the eval (or predict) stage runs it, on the probe's images."""

    staged = staged_config(cfg, name)
    section = staged[name]
    settings = inference_settings(staged, section)
    model = load_network(checkpoint_path(exp.stage_dir("seg")))
    dataset = split_dataset(staged, str(section.split), require_masks=False)
    n = len(dataset.ids)
    s_image = _timed(lambda: list(segment_images(model, dataset, range(n), **settings))) / max(1, n)
    return Rate(seconds_per_image=s_image, fixed_seconds=_fixed(wall, n * s_image))


# --- the probe --------------------------------------------------------------------------------------


def probe(cfg: DictConfig, stages: Sequence[str], data: Dataset, keep: Path | None = None) -> dict[str, Rate]:
    """Run ``stages`` of ``cfg`` (and what they read) briefly on generated data; their rates.

    ``keep``: a folder for the probe's files (kept); else a temporary folder, removed afterwards.
    """

    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="wsss-probe-"))
    tmp.mkdir(parents=True, exist_ok=True)
    names = upstream_closure(cfg, stages)
    probe_cfg = probe_config(cfg, names, data, tmp)
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: quiet them after)

    handler = StageStarts()
    runner_log = logging.getLogger("wsss.pipeline.runner")
    runner_log.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in QUIET}
    runner_log.setLevel(logging.INFO)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_stages(probe_cfg)
        end = time.perf_counter()
    finally:
        runner_log.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    walls = stage_walls(handler.starts, end)
    exp = experiment(probe_cfg)
    rates: dict[str, Rate] = {}
    try:
        for name in names:
            timing = tmp / "timing" / f"{name}.json"
            times = read_json(timing) if timing.is_file() else {}
            wall = walls.get(name, 0.0)
            if name in ("cls", "refine", "seg"):
                rates[name] = training_rate(wall, times)
            elif name.startswith("maps_"):
                start = handler.starts[name]
                after = start + wall - float(times.get("end") or start)
                rates[name] = maps_rate(wall, times, max(0.0, after), _scored(probe_cfg))
            elif name == "pseudo":
                rates[name] = pseudo_rate(probe_cfg, exp, wall)
            elif name in ("eval", "predict"):
                rates[name] = inference_rate(probe_cfg, exp, name, wall)
            else:
                rates[name] = Rate(fixed_seconds=wall)
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rates


def _scored(cfg: DictConfig) -> int:

    return len(VOCDataset(cfg.data.root, str(cfg.data.eval_split)).ids)
