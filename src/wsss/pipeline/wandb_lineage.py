"""W&B as a dashboard needs it: each stage's artifact with its lineage, its per-class IoU table.

A stage that runs with ``logger=wandb`` has its own W&B run (``wsss.tasks.trainer.build_logger``: one run per
stage, grouped by experiment). When the stage has finished, the runner calls ``log_stage``, which adds
to that run:

- ``run.use_artifact`` for each artifact the stage read, ``run.log_artifact`` for the one it wrote, so
  W&B draws the chain classifier checkpoint -> maps -> pseudo labels -> segmenter -> eval. An artifact is
  named ``<stage>-<identity>`` (``wsss.pipeline.provenance``: the same settings and inputs give the same name in
  every experiment and job) and holds a *reference* to its folder in the store (``file://...``, no copy,
  no checksum of its files: its identity already says what it is), with the stage, identity and metrics
  as metadata. Offline (``WANDB_MODE=offline``) wandb refuses ``use_artifact``; the input is then
  recorded the way ``use_artifact`` records a new artifact online (logged with ``use_after_commit``),
  so ``wandb sync`` uploads the same lineage.
- the stage's ``per_class_iou.csv`` (maps, pseudo labels, eval) as the table ``<stage>/per_class_iou``.

A sweep's report (``wsss.experiments.report``) gets a run of its own (``log_report``: job type ``report``, grouped by
the sweep folder's name) holding the report table and figure, when the sweep logs to W&B.

Every function is a no-op when no W&B run is active (other loggers, ``logger=none``, ``WANDB_MODE=
disabled``, ranks other than 0), so callers need no check of their own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.pipeline.artifacts import PER_CLASS_CSV, Experiment, read_per_class_iou
from wsss.pipeline.summary import numeric_metrics

log = logging.getLogger(__name__)

ARTIFACT_TYPES = {
    "cls": "classifier",
    "maps_cls": "maps",
    "refine": "refiner",
    "maps_refine": "maps",
    "pseudo": "pseudo-labels",
    "seg": "segmenter",
    "eval": "evaluation",
    "predict": "predictions",
}
"""W&B artifact type of each stage's artifact (W&B groups artifacts by type)."""


def active_run() -> Any | None:
    """The W&B run of the current stage, or None (wandb not imported, no run, or a disabled run)."""
    if "wandb" not in sys.modules:
        return None
    import wandb

    run = wandb.run
    if run is None or getattr(run, "disabled", False):
        return None
    return run


def artifact_name(stage: str, identity: str) -> str:
    """``<stage>-<identity>``: one name per artifact, the same in every experiment that makes or reads it."""
    return f"{stage}-{identity}"


def stage_artifact(exp: Experiment, stage: str) -> Any:
    """A W&B artifact naming ``stage``'s folder (resolved: the store entry) by reference, or None when the
    experiment holds no record of it."""
    import wandb

    record = exp.record(stage)
    if record is None:
        return None
    identity = str(record["identity"])
    folder = exp.stage_dir(stage).resolve()
    artifact = wandb.Artifact(
        artifact_name(stage, identity),
        type=ARTIFACT_TYPES.get(stage, "artifact"),
        description=f"wsss stage {stage} ({folder})",
        metadata={
            "stage": stage,
            "identity": identity,
            "upstream": {k: v["identity"] for k, v in (record.get("upstream") or {}).items()},
            "metrics": numeric_metrics(exp.metrics(stage) or {}),
        },
    )
    artifact.add_reference(folder.as_uri(), name=stage, checksum=False)
    return artifact


def use(run: Any, artifact: Any) -> None:
    """Record ``artifact`` as an input of ``run`` (online: ``use_artifact``; offline: what it does)."""
    if getattr(run, "offline", False):
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def log_per_class_table(run: Any, stage: str, folder: Path) -> None:
    """``<folder>/per_class_iou.csv`` as the W&B table ``<stage>/per_class_iou``, when the stage wrote one."""
    import wandb

    path = folder / PER_CLASS_CSV
    if path.is_file():
        table = wandb.Table(columns=["class", "iou"], data=read_per_class_iou(path))
        run.log({f"{stage}/per_class_iou": table})


def log_stage(exp: Experiment, stage: str, inputs: list[str], made: bool = True) -> None:
    """After a stage ran: its inputs (``use``), its artifact (``log_artifact``) and its per-class table go
    to the stage's W&B run; nothing without one. ``made``: the stage wrote an artifact later stages read.
    The stage is complete by then: a W&B failure is a warning, never a failed stage."""
    run = active_run()
    if run is None:
        return
    try:
        for name in inputs:
            artifact = stage_artifact(exp, name)
            if artifact is not None:
                use(run, artifact)
        log_per_class_table(run, stage, exp.stage_dir(stage))
        artifact = stage_artifact(exp, stage) if made else None
        if artifact is not None:
            run.log_artifact(artifact)
            log.info(
                "stage %s: W&B artifact %s (read: %s)", stage, artifact.name, ", ".join(inputs) or "none"
            )
    except Exception as err:  # noqa: BLE001 - the dashboard's extras must not fail a finished stage
        log.warning("stage %s: complete, but its W&B artifacts or table could not be logged: %r", stage, err)


def uses_wandb(cfg: Any) -> bool:
    """Whether ``cfg.logger`` is the W&B logger (and ``WANDB_MODE`` does not disable it)."""
    node = cfg.get("logger") if cfg is not None else None
    target = str(node.get("_target_", "")) if node else ""
    return target.endswith("WandbLogger") and os.environ.get("WANDB_MODE", "offline") != "disabled"


def log_report(sweep_dir: Path, columns: list[str], rows: Sequence[Sequence[Any]], png: Path | None) -> None:
    """A sweep report's own W&B run (group: the sweep folder's name): the table and the figure."""
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project="wsss", group=sweep_dir.name, job_type="report", name=f"{sweep_dir.name}/report",
        dir=str(sweep_dir), mode=mode, reinit="finish_previous", config={"sweep_dir": str(sweep_dir)},
    )  # fmt: skip
    data: dict[str, Any] = {"report/table": wandb.Table(columns=columns, data=[list(r) for r in rows])}
    if png is not None:
        data["report/figure"] = wandb.Image(str(png))
    run.log(data)
    run.finish()
