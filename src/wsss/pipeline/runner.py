"""Run one stage or a pipeline of stages, after checking the whole plan.

Before any work: every stage's inputs must be made by an earlier stage of the list or be complete in
the experiment folder with a record that matches what the current config expects; a finished stage is
skipped (pipeline) or refused (a stage run alone) unless ``force=true``, and one whose record
contradicts the config is refused naming the keys. Then each stage runs with a ``StageContext``; the
runner records what the stage makes (``identity.json``), saves its resolved config, and marks it
complete. With ``force=true`` a stage is made anew and everything made from its old artifact in this
experiment is removed first.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from wsss.constants import TMP_PREFIX
from wsss.errors import (
    ArtifactMismatchError,
    ConfigError,
    MissingArtifactError,
    PlanError,
    StageCompleteError,
)
from wsss.pipeline.artifacts import Experiment, remove_temporaries, write_text
from wsss.pipeline.hints import adopt_command, command
from wsss.pipeline.provenance import (
    current_record,
    describe,
    differences,
    expected_record,
    staged_config,
    upstream_names,
)
from wsss.pipeline.registry import STAGES, Stage, load_plugins, stage, upstream_closure
from wsss.pipeline.store import Store
from wsss.pipeline.summary import format_table, summary_rows, write_summary
from wsss.pipeline.wandb_lineage import log_stage

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage's ``run`` gets: its config, folders, and the record of what it makes."""

    cfg: DictConfig
    exp: Experiment
    stage: Stage
    record: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    resuming: bool = False
    """The folder holds an unfinished run of the same artifact: continue it (``last.ckpt``, kept files)."""

    @property
    def out(self) -> Path:
        return self.exp.stage_dir(self.stage.name)

    def input(self, name: str) -> Path:
        """The folder of an upstream artifact this stage reads."""
        return self.inputs[name]


def auto_pipeline(cfg: DictConfig) -> list[str]:
    """The full method under ``cfg``: every stage the evaluation of the segmenter needs, in order
    (refinement, DRS-dagger, only when pseudo labels come from refined maps)."""
    return upstream_closure("eval", cfg)


def planned_closure(cfg: DictConfig, names: list[str]) -> list[str]:
    """The stages ``names`` and every stage their records name (what the plan check looks at), in order."""
    found = {up for name in names for up in upstream_closure(name, staged_config(cfg, name))}
    return [s for s in STAGES if s in found]


def pipeline_names(cfg: DictConfig) -> list[str]:
    """The pipeline stage names ``cfg.stage`` asks for, in order (after loading ``plugins``)."""
    load_plugins(cfg)
    if cfg.stage == "pipeline":
        stages = cfg.pipeline.stages
        names = auto_pipeline(cfg) if stages == "auto" else [str(s) for s in stages]
    elif cfg.stage == "maps":
        names = [f"maps_{cfg.maps.source}"]
    else:
        names = [str(cfg.stage)]
    for name in names:
        stage(name)  # unknown names fail here
    if len(set(names)) != len(names):
        raise PlanError(f"pipeline.stages={names} names a stage twice; list each stage once")
    return names


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


@dataclass
class Step:
    """One stage of the plan: what to do with it and why."""

    name: str
    action: str  # "run" | "resume" | "skip" | "reuse" (link the stored artifact)
    record: dict[str, Any]
    reason: str = ""


def _missing_chain(cfg: DictConfig, exp: Experiment, name: str, planned: set[str]) -> list[str]:
    """``name`` and every upstream of it that is neither planned nor complete and matching, in order."""
    needed: set[str] = set()

    def visit(current: str) -> None:
        if current in needed or current in planned or _matches(exp, cfg, current):
            return
        needed.add(current)
        for up in stage(current).upstream(staged_config(cfg, current)):
            visit(up)

    visit(name)
    return [s for s in STAGES if s in needed]


def _matches(exp: Experiment, cfg: DictConfig, name: str) -> bool:
    record = exp.record(name)
    return (
        exp.is_complete(name)
        and record is not None
        and record["identity"] == current_record(cfg, name)["identity"]
    )


def _mismatch(cfg: DictConfig, exp: Experiment, name: str, expected: dict, recorded: dict, what: str) -> str:
    diffs = differences(expected, recorded)
    if "external" in recorded:  # adopted (wsss.stages.adopt): its settings are what the user declared
        source = recorded["external"].get("path", "<file>")
        return (
            f"{what} {exp.stage_dir(name)} was adopted from {source} with settings that contradict the "
            f"current config:\n{describe([d for d in diffs if not d[1].startswith('external.')])}\n"
            "Two ways out:\n"
            "  - run with the settings it was adopted with (the 'made with' values above), or pick another exp=<name>;\n"
            "  - or, if the file was made with the current settings, adopt it again under them:\n"
            f"    {adopt_command(cfg, name, source)}"
        )
    return (
        f"{what} {exp.stage_dir(name)} was made with settings that contradict the current config:\n"
        f"{describe(diffs)}\n"
        "Two ways out:\n"
        f"  - keep it and make a new experiment: add exp=<new name> to your command;\n"
        f"  - or make {name} again here (this removes everything made from the old one):\n"
        f"    {command(cfg, [name], ('force=true',))}"
    )


def experiment(cfg: DictConfig) -> Experiment:
    """The experiment folder of ``cfg`` (with the shared store when ``store.enabled``)."""

    node = cfg.get("store") or {}
    store = (
        Store(node.get("root"), float(node.get("lock_timeout_s", 120)), float(node.get("heartbeat_s", 10)))
        if node.get("enabled", False)
        else None
    )
    root = Path(cfg.paths.exp_dir)
    if store is not None and (
        root.resolve() == store.root.resolve() or store.root.resolve() in root.resolve().parents
    ):
        raise ConfigError(
            f"exp={cfg.exp!r} lies inside the artifact store {store.root}; pick another exp name"
        )
    return Experiment(root, runs=cfg.paths.runs, store=store)


def _reusable(exp: Experiment, name: str, identity: str) -> bool:
    """The experiment has no artifact of ``name`` yet and the store holds a complete one of ``identity``."""
    view = exp.stage_dir(name)
    return not (view.exists() or view.is_symlink()) and exp.stored(name, identity)


def attach_data_content(cfg: DictConfig, names: list[str]) -> None:
    """Name the data the plan reads by content (``data.content``) with the function the data config
    declares (``data.content_from``, ``wsss.data.content.attach_content``), before any identity is made."""
    target = OmegaConf.select(cfg, "data.content_from", default=None)
    if target:
        get_method(str(target))(cfg, planned_closure(cfg, names))


def check_plan(cfg: DictConfig, exp: Experiment, names: list[str]) -> list[Step]:
    """Decide run/skip/reuse for every stage and check every input, before any work is done."""
    attach_data_content(cfg, names)
    force = bool(cfg.get("force", False))
    is_pipeline = cfg.stage == "pipeline"
    steps: list[Step] = []
    planned: set[str] = set()
    for name in names:
        declared = stage(name)
        expected = expected_record(cfg, name) if force else current_record(cfg, name)
        for up in declared.upstream(staged_config(cfg, name)):
            if up in planned:
                continue
            up_expected = expected["upstream"][up]
            if _reusable(exp, up, up_expected["identity"]):
                steps.append(Step(up, "reuse", up_expected, "is in the store"))
                planned.add(up)
                continue
            recorded = exp.record(up)
            if not exp.is_complete(up) or recorded is None:
                state = "is unfinished" if exp.stage_dir(up).exists() else "does not exist"
                chain = _missing_chain(cfg, exp, up, planned)
                raise MissingArtifactError(
                    f"stage {name} reads {up}, but {exp.stage_dir(up)} {state}. Produce it first with:\n"
                    f"    {command(cfg, chain)}"
                )
            if recorded["identity"] != up_expected["identity"]:
                raise ArtifactMismatchError(
                    _mismatch(cfg, exp, up, up_expected, recorded, f"stage {name} reads {up}, but")
                )
        if declared.artifact and not force and _reusable(exp, name, expected["identity"]):
            steps.append(Step(name, "reuse", expected, "is in the store"))
            planned.add(name)
            continue
        recorded = exp.record(name) if declared.artifact else None
        complete = exp.is_complete(name)
        if recorded is not None and not complete and not _has_outputs(exp.stage_dir(name)):
            recorded = None  # a run that stopped before writing anything: nothing to resume or protect
        action, reason = "run", ""
        if recorded is not None and recorded["identity"] != expected["identity"] and not force:
            what = f"stage {name}:" if complete else f"stage {name}: the unfinished run in"
            raise ArtifactMismatchError(_mismatch(cfg, exp, name, expected, recorded, what))
        if recorded is not None and not complete and not force and bool(cfg.get("resume", True)):
            action, reason = "resume", "holds an unfinished run with the same settings"
        elif recorded is None and exp.store is not None and declared.artifact and not force:
            entry = exp.store.entry(name, expected["identity"])
            if _has_outputs(entry) and bool(cfg.get("resume", True)):
                action, reason = "resume", "has an unfinished run in the store"  # killed, or running (lock)
        if complete and declared.artifact and recorded is not None and not force:
            if is_pipeline and cfg.pipeline.get("skip_complete", True):
                action, reason = "skip", "already complete"
            else:
                raise StageCompleteError(
                    f"stage {name} is already complete in {exp.stage_dir(name)} with these settings. To make it "
                    f"again (and remove what was made from it), add force=true:\n    {command(cfg, [name], ('force=true',))}"
                )
        steps.append(Step(name, action, expected, reason))
        planned.add(name)
    return steps


BOOKKEEPING = {"identity.json", "config.yaml", ".complete", "metrics.json", "wandb_run_id"}


def _has_outputs(folder: Path) -> bool:
    """Whether a stage folder holds anything beyond the runner's own files."""
    return folder.is_dir() and any(
        p.name not in BOOKKEEPING and not p.name.startswith(TMP_PREFIX) for p in folder.iterdir()
    )


def _invalidate(exp: Experiment, name: str) -> list[str]:
    """Detach stage ``name`` and every stage of the experiment made from it (plain folders are removed;
    store entries stay for the experiments that use them)."""
    removed = []
    for other in STAGES:
        record = exp.record(other)
        made_from = other == name or (record is not None and name in upstream_names(record))
        if made_from and (exp.stage_dir(other).exists() or exp.stage_dir(other).is_symlink()):
            exp.detach(other)
            removed.append(other)
    return removed


def _wait_for(exp: Experiment, name: str, poll_s: float = 2.0) -> None:
    while not exp.is_complete(name):
        time.sleep(poll_s)


def run_stages(cfg: DictConfig) -> dict[str, Any]:
    """Check the plan, then run ``cfg.stage`` (or the pipeline); returns ``{"<stage>/<metric>": value}``."""
    exp = experiment(cfg)
    steps = check_plan(cfg, exp, pipeline_names(cfg))

    from wsss.ddp.sync import barrier  # torch: only once the plan holds

    force = bool(cfg.get("force", False))
    results: dict[str, Any] = {}
    for step in steps:
        declared = stage(step.name)
        if step.action == "skip":
            log.info("stage %s %s in %s; skipping", step.name, step.reason, exp.stage_dir(step.name))
            metrics = exp.metrics(step.name)
        elif step.action == "reuse":
            if _rank() == 0:
                _reuse(cfg, exp, declared, step.record)
            barrier()
            metrics = exp.metrics(step.name)
        elif _rank() != 0 and declared.rank_zero_only:
            _wait_for(exp, step.name)
            metrics = exp.metrics(step.name)
        else:
            metrics = _run_one(cfg, exp, declared, step.record, force, resuming=step.action == "resume")
            barrier()  # other ranks continue only once rank 0 has marked the stage complete
            metrics = exp.metrics(step.name) or metrics
        results.update({f"{step.name}/{k}": v for k, v in (metrics or {}).items()})
    if _rank() == 0:
        _summarize(exp, steps)
    return results


def _summarize(exp: Experiment, steps: list[Step]) -> None:
    """The table of every stage's metrics, in the log and as ``summary.{json,md}`` in the experiment folder."""

    rows = summary_rows(exp, [(s.name, s.action) for s in steps])
    json_path, _ = write_summary(exp, rows)
    log.info("metrics of the stages of %s (%s):\n%s", exp.root.name, json_path, format_table(rows))


def _prepare(exp: Experiment, declared: Stage, identity: str, force: bool, resuming: bool) -> None:
    """Make the stage's folder ready to write (rank 0): remake, resume, or start over; link the store entry."""
    name, folder = declared.name, exp.stage_dir(declared.name)
    stored = exp.store is not None and declared.artifact
    if force:
        removed = _invalidate(exp, name)
        if removed:
            log.warning("force=true: %s made anew; removed from %s: %s", name, exp.root, ", ".join(removed))
    elif resuming:
        log.warning("stage %s: resuming the unfinished run in %s (resume=false starts over)", name, folder)
    if stored:
        entry = exp.store.entry(name, identity)
        if folder.is_symlink() and folder.resolve() != entry.resolve():
            exp.detach(name)  # it pointed at another identity's entry, which other experiments may use
        if entry.exists() and not resuming:
            if _has_outputs(entry) and not force:
                log.warning("stage %s: starting over in %s (removing its unfinished files)", name, entry)
            shutil.rmtree(entry)
        exp.attach(name, identity)
    elif folder.exists() and not resuming:
        if _has_outputs(folder) and not force:
            log.warning("stage %s: starting over in %s (removing its unfinished files)", name, folder)
        exp.clear(name)


def _context(
    staged: DictConfig, exp: Experiment, declared: Stage, record: dict[str, Any], resuming: bool = False
) -> StageContext:
    inputs = {up: exp.stage_dir(up) for up in declared.upstream(staged)}
    return StageContext(staged, exp, declared, record, inputs, resuming)


def _reuse(cfg: DictConfig, exp: Experiment, declared: Stage, record: dict[str, Any]) -> None:
    """Link the stored artifact (rank 0) and draw its figures into this experiment's ``figures/`` (the
    stage module's ``figures(ctx)``, where it has one; a figure that fails is a warning, not a failure)."""
    import importlib

    entry = exp.attach(declared.name, record["identity"])
    log.info("stage %s: reusing the stored artifact %s (identical settings and inputs)", declared.name, entry)
    draw = getattr(importlib.import_module(declared.module), "figures", None)
    if draw is None:
        return
    try:
        draw(_context(staged_config(cfg, declared.name), exp, declared, record))
    except Exception as err:  # noqa: BLE001 - a picture must not fail a reused artifact
        log.warning("stage %s: reused, but its figures could not be drawn: %s", declared.name, err)


def _run_one(
    cfg: DictConfig,
    exp: Experiment,
    declared: Stage,
    record: dict[str, Any],
    force: bool,
    resuming: bool = False,
) -> dict[str, Any]:
    """Make one stage's artifact (rank 0 holds the store entry's lock while it does)."""
    staged = staged_config(cfg, declared.name)
    identity = record["identity"]
    stored = exp.store is not None and declared.artifact
    with exp.store.lock(declared.name, identity) if stored and _rank() == 0 else nullcontext():
        if stored and not force and _rank() == 0 and exp.stored(declared.name, identity):
            _reuse(cfg, exp, declared, record)  # another job made it while this one waited
            return exp.metrics(declared.name)
        return _make(cfg, staged, exp, declared, record, force, resuming)


def _make(
    cfg: DictConfig,
    staged: DictConfig,
    exp: Experiment,
    declared: Stage,
    record: dict[str, Any],
    force: bool,
    resuming: bool,
) -> dict[str, Any]:
    import importlib

    from lightning.pytorch import seed_everything

    if _rank() == 0:
        _prepare(exp, declared, record["identity"], force, resuming)
        exp.begin(declared.name, record if declared.artifact else None)
        job_keys = [k for k in staged if k != "hydra"]  # the hydra node is Hydra's, not the job's
        write_text(
            exp.stage_dir(declared.name) / "config.yaml",
            OmegaConf.to_yaml(OmegaConf.masked_copy(staged, job_keys), resolve=True),
        )
    ctx = _context(staged, exp, declared, record, resuming)
    seed_everything(int(cfg.seed), workers=True)
    log.info("running stage %s -> %s", declared.name, ctx.out)
    metrics = importlib.import_module(declared.module).run(ctx) or {}
    if _rank() == 0:
        remove_temporaries(ctx.out)  # half-written files of a killed earlier run; every rank is done
        exp.finish(declared.name, metrics, record if declared.artifact else None)
        log_stage(exp, declared.name, list(ctx.inputs), made=declared.artifact)  # W&B only
    finish_wandb()
    return metrics


def finish_wandb() -> None:
    """Close the current W&B run (if wandb was imported), so the next stage or sweep job gets its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
