"""``stage=maps``: localization maps for every image of ``maps.split``, then the seed evaluation.

``maps.source=cls`` reads ``<exp>/cls/checkpoints/best.ckpt`` (classifier with DRS) and writes
``<exp>/maps/cls``; ``maps.source=refine`` reads the refinement network and writes ``<exp>/maps/refine``.
All DDP ranks share the writing; rank 0 then scores the maps on ``data.eval_split`` (images with masks),
writes ``metrics.json``, ``seed_sweep.csv``, the Figure-1 grid, and ``.complete``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from wsss.artifacts import Experiment, atomic_path, read_json, write_json
from wsss.maps import barrier, figure1, load_state, write_maps
from wsss.seeds import evaluate_seeds
from wsss.training import build_trainer, finalize_logger, log_image, log_metrics

log = logging.getLogger(__name__)

PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    # The paper states no inference scales: one pass at the original image size, maps stored at that size.
    "paper": {"infer_size": None, "scales": [1.0]},
    # The release: squash to 320x320, scales 256/320/384 fused at 320x320.
    "release": {"infer_size": 320, "scales": [256, 320, 384]},
}
SOURCES = ("cls", "refine")


def resolve_settings(cfg: DictConfig) -> tuple[int | None, list[float]]:
    """``maps.infer_size`` and ``maps.scales``, where ``auto`` follows ``protocol``."""
    defaults = PROTOCOL_DEFAULTS[str(cfg.protocol)]
    infer_size = cfg.maps.infer_size
    scales = cfg.maps.scales
    infer_size = defaults["infer_size"] if infer_size == "auto" else infer_size
    scales = defaults["scales"] if scales == "auto" else list(scales)
    if infer_size is not None and int(infer_size) <= 0:
        raise ValueError(f"maps.infer_size={infer_size}: give a positive size, null (original size) or auto")
    return (None if infer_size is None else int(infer_size)), [float(s) for s in scales]


def build_net(cfg: DictConfig, folder: Path, source: str) -> nn.Module:
    """The network of ``source`` with the weights of its stage folder's best checkpoint."""
    from wsss.models.classifier import build_classifier, build_refiner

    num_classes = int(cfg.data.num_classes)
    head = cfg.model.get("head_channels")
    if source == "cls":
        net = build_classifier(cfg.backbone, cfg.drs, num_classes, head_channels=head, init_backbone=False)
    else:
        net = build_refiner(cfg.backbone, num_classes, head_channels=head, init_backbone=False)
    net.load_state_dict(load_state(folder / "checkpoints" / "best.ckpt"))
    return net.eval()


def infer_dataset(cfg: DictConfig, split: str, infer_size: int | None) -> Dataset:
    """The ``infer`` dataset of ``split`` (normalised images, labels, ids; ``.ids``) from the DataModule."""
    from wsss.data.datamodule import WSSSDataModule

    dm = WSSSDataModule(cfg.data, "infer", str(cfg.protocol), infer_size=infer_size, split=split)
    dm.setup("predict")
    assert dm.predict_set is not None
    return dm.predict_set


SETTINGS = "maps_settings.json"


def check_settings(out: Path, settings: dict[str, Any], overwrite: bool, rank: int) -> None:
    """Refuse to resume over maps made with other settings (or another checkpoint); record them."""
    path = out / SETTINGS
    if path.is_file() and not overwrite:
        before = read_json(path)
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise ValueError(
                f"{out} holds maps made with other settings ({', '.join(changed)}: {before} -> now {settings}); "
                "rerun with maps.overwrite=true to replace them, or use another exp"
            )
    if rank == 0:
        write_json(path, settings)


def eval_dataset(cfg: DictConfig) -> Any:
    """Images with masks for the seed evaluation (``data.eval_split``): ``.ids``, ``mask(i)``, ``image(i)``."""
    from wsss.data.voc import VOCDataset

    return VOCDataset(cfg.data.root, str(cfg.data.eval_split))


def _write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    lines = ["threshold,miou,precision,recall"]
    lines += [f"{r['threshold']:.2f},{r['miou']:.6f},{r['precision']:.6f},{r['recall']:.6f}" for r in curve]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def figure_columns(cfg: DictConfig, exp: Experiment, current: str) -> dict[str, Path]:
    """Figure-1 columns of this experiment: CAM or DRS (classifier maps) and DRS† (refined maps).

    A map set appears when it is the one being made now or a finished stage.
    """
    titles = {"maps_cls": "CAM" if str(cfg.drs.mode) == "off" else "DRS", "maps_refine": "DRS†"}
    return {
        title: exp.stage_dir(stage)
        for stage, title in titles.items()
        if stage == current or exp.is_complete(stage)
    }


def evaluate(cfg: DictConfig, exp: Experiment, stage: str, out: Path, logger: Any) -> dict[str, Any]:
    """Seed mIoU sweep on ``data.eval_split`` and the Figure-1 grid (rank 0)."""
    gt = eval_dataset(cfg)
    metrics, curve = evaluate_seeds(out, list(gt.ids), gt.mask, list(cfg.maps.thresholds))
    _write_curve(out / "seed_sweep.csv", curve)
    log_metrics(logger, metrics, prefix=stage)
    n_fig = int(cfg.maps.get("figure_images", 4))
    if n_fig > 0:
        ids = [i for i in gt.ids if (out / f"{i}.npz").is_file()][:n_fig]
        png = figure1(ids, gt, figure_columns(cfg, exp, stage), exp.root / "figures" / "figure1.png")
        log_image(logger, f"{stage}/figure1", png)
    return metrics


def run(cfg: DictConfig, exp: Experiment) -> dict[str, Any]:
    source = str(cfg.maps.source)
    if source not in SOURCES:
        raise ValueError(f"maps.source={source!r}; choose cls (classifier maps) or refine (refined maps)")
    stage = f"maps_{source}"
    mcfg = cfg.maps
    infer_size, scales = resolve_settings(cfg)
    folder = exp.require(source)
    net = build_net(cfg, folder, source)
    out = exp.begin(stage)
    trainer = build_trainer(cfg, stage, out, checkpoint=False)
    ckpt = (folder / "checkpoints" / "best.ckpt").stat()
    settings = {
        "split": str(mcfg.split),
        "infer_size": infer_size,
        "scales": scales,
        "flip": bool(mcfg.flip),
        "dtype": str(mcfg.dtype),
        "checkpoint": f"{ckpt.st_size}:{ckpt.st_mtime_ns}",
    }
    check_settings(out, settings, bool(mcfg.overwrite), trainer.global_rank)
    dataset = infer_dataset(cfg, str(mcfg.split), infer_size)
    counts = write_maps(
        trainer,
        net,
        dataset,
        out,
        scales=scales,
        flip=bool(mcfg.flip),
        dtype=str(mcfg.dtype),
        batch_size=int(mcfg.batch_size),
        overwrite=bool(mcfg.overwrite),
        num_workers=int(cfg.data.num_workers),
        writer_threads=int(mcfg.get("writer_threads", 2)),
    )
    if trainer.global_rank == 0:
        for tmp in out.glob(".tmp-*"):  # left by a run killed mid-write; every rank has finished
            tmp.unlink(missing_ok=True)
        metrics: dict[str, Any] = {"images": counts["images"], "skipped": counts["skipped"]}
        metrics |= evaluate(cfg, exp, stage, out, trainer.logger)
        log.info(
            "%s: %d maps (%d written before), infer_size %s, scales %s, flip %s; seed mIoU %.4f at "
            "background threshold %.2f on %d images",
            stage,
            counts["images"],
            counts["skipped"],
            infer_size or "original",
            scales,
            bool(mcfg.flip),
            metrics["miou"],
            metrics["best_threshold"],
            metrics["seed_images"],
        )
        exp.finish(stage, metrics)
        finalize_logger(trainer.logger)
    barrier()  # other ranks leave only once metrics.json and .complete exist
    return exp.metrics(stage)
