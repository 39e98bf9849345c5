"""Shared test set-up: quiet, offline environment and the read-only VOC fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# One intra-op thread per process: on a shared 2-core machine, small convs run far slower with two
# threads fighting over the cores (and subprocess tests start several processes at once).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = Path(os.environ.get("WSSS_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real VOC fixtures (``$WSSS_SHARED_DATA``, else ``shared/data`` beside the checkout);
    skips when absent."""
    if not (SHARED_DATA / "voc_sample" / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"real VOC fixtures not found at {SHARED_DATA} (they ship beside the repo, not in it)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def own_environment():
    """Each test starts from the same environment variables: what a test, or a run inside it, sets in
    ``os.environ`` (``WSSS_RUN_ID``, Lightning's ``PL_GLOBAL_SEED``, ...) is undone after it, so tests
    that share a process (make test runs two) do not see each other's leftovers."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_source(dest: Path) -> Path:
    """What a source distribution of wsss holds (pyproject, README, LICENSE, src/), copied to ``dest``: a
    wheel is built from the copy, so a build leaves nothing in the checkout."""
    import shutil

    shutil.copytree(
        REPO / "src", dest / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "local")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, dest / name)
    return dest


def run_ok(args: list[str], cwd: Path = REPO, env: dict[str, str] | None = None, timeout: int = 300):
    """Run a command (W&B off, no inherited run id unless ``env`` is given); fails the test, with its
    output, when it exits non-zero. Returns the CompletedProcess."""
    import shlex
    import subprocess

    if env is None:
        env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
        env.pop("WSSS_RUN_ID", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{shlex.join(map(str, args))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def compose_config(overrides: list[str], runs: Path | None = None):
    """Compose the real config the way train.py does (with the hydra node set), for tests."""
    from wsss.pipeline.config import compose

    extra = [f"paths.runs={runs}", f"paths.data={runs.parent / 'data'}"] if runs is not None else []
    return compose([*overrides, *extra])


def run_train(
    args: list[str],
    cwd: Path = REPO,
    timeout: int = 600,
    tracebacks: bool = True,
    extra: dict[str, str] | None = None,
):
    """Run train.py in a subprocess; returns the CompletedProcess (stdout and stderr merged).

    ``tracebacks=False`` runs it as a user would (no HYDRA_FULL_ERROR): user errors print one block.
    ``extra``: variables set on top of the test environment (``WANDB_MODE=offline`` for the W&B tests)."""
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("WSSS_RUN_ID", None)
    env.pop("WSSS_TRACEBACKS", None)
    if not tracebacks:
        env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env={**env, **(extra or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def net_config(group: str, name: str, **overrides):
    """A network config node as the config group holds it (``wsss.models.networks.group_config``)."""
    from wsss.models.networks import group_config

    return group_config(group, name, **overrides)


def make_classifier(backbone: str = "tiny", drs: str = "learnable", **kwargs):
    """A classifier (or refiner, ``refiner=True``) built the way the stages build it, from the real config
    files (``wsss.models.networks.classifier_from_files``)."""
    from wsss.models.networks import classifier_from_files

    return classifier_from_files(backbone, drs, **kwargs)


def segmenter_spec(name: str = "largefov_tiny", **overrides) -> dict:
    """The ``_target_`` spec of ``wsss/conf/segmenter/<name>.yaml`` with dotted ``overrides``."""
    from wsss.models.networks import group_config, spec

    return spec(group_config("segmenter", name, **overrides))


def make_segmenter(name: str = "largefov_tiny", **overrides):
    """A segmenter built from ``wsss/conf/segmenter/<name>.yaml`` (``wsss.models.networks.segmenter_from_files``)."""
    from wsss.models.networks import segmenter_from_files

    return segmenter_from_files(name, **overrides)


def make_seg_stage(cfg, model, network: dict):
    """A finished seg stage of ``cfg``'s experiment holding ``model`` as a SegmenterTask checkpoint would."""
    import torch

    from wsss.pipeline.artifacts import Experiment

    folder = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs).stage_dir("seg") / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"network": network, "num_classes": 21},
    }
    torch.save(ckpt, folder / "best.ckpt")
    finish_as_made(cfg, "seg", {"miou": 0.0})
    return folder / "best.ckpt"


def attach_data_content(cfg, names: list[str]) -> None:
    """Name the data by content in ``cfg`` as train.py does before its plan check (when there is data)."""
    from wsss.data.content import attach_content
    from wsss.pipeline.runner import planned_closure

    if cfg.data.get("generate") or Path(str(cfg.data.root)).exists():
        attach_content(cfg, planned_closure(cfg, names))


def run_stage(cfg) -> dict:
    """Run ``cfg.stage`` through the runner (plan check, records, .complete); returns its own metrics."""
    from wsss.pipeline.runner import pipeline_names, run_stages

    attach_data_content(cfg, pipeline_names(cfg))
    results = run_stages(cfg)
    return {k.split("/", 1)[1]: v for k, v in results.items()}


def finish_as_made(cfg, name: str, metrics: dict | None = None) -> None:
    """Mark the stage ``name`` of ``cfg``'s experiment complete, with the record the config expects
    (for tests that write an upstream artifact by hand)."""
    from wsss.pipeline.artifacts import Experiment
    from wsss.pipeline.provenance import expected_record

    attach_data_content(cfg, [name])
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    record = expected_record(cfg, name)
    exp.begin(name, record)
    exp.finish(name, metrics or {}, record)


TINY_TOY = [
    "experiment=toy",
    "data.toy.num_train=8",
    "data.toy.num_val=2",
    "data.toy.num_test=1",
    "data.toy.size=48",
    "logger=none",
    "trainer.enable_progress_bar=false",
]
"""The toy recipe at the smallest size that runs every stage (seconds per stage)."""


def copy_voc_sample(shared_data: Path, dest: Path, train: int = 3, val: int = 2) -> Path:
    """A tiny VOC copy: the first ``train`` ids of voc_sample's train list (also as train_aug) and the
    first ``val`` of val, with images, SegmentationClassAug masks and saliency maps; returns the VOC2012
    folder (``dest`` is the ``data.root``; saliency in ``<VOC2012>/saliency``)."""
    import shutil

    src = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    voc = dest / "VOCdevkit" / "VOC2012"
    lists = {}
    for split, n in (("train", train), ("val", val)):
        lists[split] = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    lists["train_aug"] = lists["train"]
    for folder in ("JPEGImages", "SegmentationClassAug", "saliency", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_id in lists["train"] + lists["val"]:
        shutil.copy(src / "JPEGImages" / f"{image_id}.jpg", voc / "JPEGImages")
        shutil.copy(src / "SegmentationClassAug" / f"{image_id}.png", voc / "SegmentationClassAug")
        shutil.copy(src / "saliency_isnet_imgly" / f"{image_id}.png", voc / "saliency")
    for split, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc
