"""``stage=maps``: localization maps for every image of ``maps.split``, then the seed evaluation.

``maps.source=cls`` (pipeline name ``maps_cls``) reads the classifier's ``best.ckpt`` and writes
``maps/cls``; ``maps.source=refine`` (``maps_refine``) reads the refinement network's and writes
``maps/refine``. The network is rebuilt from the checkpoint's own spec. How a source's maps are computed
and stored is ``maps.<source>`` (``relu``, ``normalize``, ``align_corners``, ``size``, ``dtype``,
``quantize``; the protocol group sets them). All DDP ranks share the writing; rank 0 then scores the
maps on ``data.eval_split`` (images with masks) and writes ``metrics.json``, ``seed_sweep.csv`` and the
Figure-1 grid. A killed run resumes: finished files are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from wsss.constants import NUM_CLASSES
from wsss.data.datamodule import WSSSDataModule
from wsss.data.figures import figure1
from wsss.data.maps_io import MapsFolder
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError
from wsss.method.localization import MapMaths
from wsss.method.seed_labels import evaluate_seeds
from wsss.models.checkpoint import load_network
from wsss.pipeline.artifacts import PER_CLASS_CSV, Experiment, write_csv
from wsss.pipeline.runner import StageContext
from wsss.stages.maps_writer import MapPredictor, write_maps
from wsss.tasks.trainer import build_trainer, finalize_logger, log_image, log_metrics

log = logging.getLogger(__name__)


def infer_dataset(cfg: DictConfig, split: str, infer_size: int | None) -> Dataset:
    """The ``infer`` dataset of ``split`` (normalised images, labels, ids, sizes) from the DataModule."""

    dm = WSSSDataModule(cfg.data, "infer", infer_size=infer_size, split=split)
    dm.setup("predict")
    assert dm.predict_set is not None
    return dm.predict_set


def write_seed_curve(path: Path, curve: list[dict[str, float]]) -> None:
    """``seed_sweep.csv``: mIoU, precision and recall of the seed labels per background threshold."""
    write_csv(
        path,
        ("threshold", "miou", "precision", "recall"),
        ([f"{r['threshold']:.2f}", r["miou"], r["precision"], r["recall"]] for r in curve),
    )


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


def evaluate(ctx: StageContext, logger: Any) -> dict[str, Any]:
    """Seed mIoU sweep on ``data.eval_split`` and the Figure-1 grid (rank 0)."""

    cfg, out = ctx.cfg, ctx.out
    gt = VOCDataset(cfg.data.root, str(cfg.data.eval_split))
    num_classes = getattr(gt, "num_classes", NUM_CLASSES)
    metrics, curve = evaluate_seeds(
        MapsFolder(out, num_classes),
        list(gt.ids),
        gt.mask,
        list(cfg.maps.thresholds),
        num_classes,
        per_class_csv=out / PER_CLASS_CSV,
    )
    write_seed_curve(out / "seed_sweep.csv", curve)
    log_metrics(logger, metrics, prefix=ctx.stage.name)
    png = draw_figure1(ctx, gt)
    if png is not None:
        log_image(logger, f"{ctx.stage.name}/figure1", png)
    return metrics


def draw_figure1(ctx: StageContext, gt: Any) -> Path | None:
    """``<exp>/figures/figure1.png``: the first ``maps.figure_images`` images with this experiment's maps."""

    n_fig = int(ctx.cfg.maps.get("figure_images", 4))
    if n_fig <= 0:
        return None
    ids = [i for i in gt.ids if (ctx.out / f"{i}.npz").is_file()][:n_fig]
    columns = figure_columns(ctx.cfg, ctx.exp, ctx.stage.name)
    return figure1(ids, gt, columns, ctx.exp.root / "figures" / "figure1.png")


def figures(ctx: StageContext) -> Path | None:
    """``draw_figure1`` on the eval split (the runner calls it when it reuses stored maps)."""

    return draw_figure1(ctx, VOCDataset(ctx.cfg.data.root, str(ctx.cfg.data.eval_split)))


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, out = ctx.cfg, ctx.out
    source = str(cfg.maps.source)
    mcfg, recipe = cfg.maps, cfg.maps[source]
    infer_size = None if mcfg.infer_size is None else int(mcfg.infer_size)
    scales = [float(s) for s in mcfg.scales]
    net = load_network(ctx.input(source) / "checkpoints" / "best.ckpt")
    trainer = build_trainer(cfg, ctx.stage.name, out, checkpoint=False)
    dataset = infer_dataset(cfg, str(mcfg.split), infer_size)
    predictor = MapPredictor(net, scales, bool(mcfg.flip), MapMaths.from_config(recipe), str(recipe.size))
    counts = write_maps(
        trainer,
        predictor,
        dataset,
        out,
        dtype=str(recipe.dtype),
        quantize=str(recipe.quantize),
        batch_size=int(mcfg.batch_size),
        overwrite=bool(mcfg.overwrite),
        num_workers=int(cfg.data.num_workers),
        writer_threads=int(mcfg.get("writer_threads", 2)),
    )
    if trainer.global_rank != 0:
        return {}
    missing = [i for i in dataset.ids if not (out / f"{i}.npz").is_file()]
    if missing:
        raise ConfigError(
            f"{ctx.stage.name}: {len(missing)} of {len(dataset.ids)} images got no maps (e.g. {missing[0]}): "
            f"trainer.limit_predict_batches={cfg.trainer.get('limit_predict_batches')} or "
            f"fast_dev_run={cfg.trainer.get('fast_dev_run')} cut the run short (debug=limit / debug=fdr?). The maps "
            "stage is not marked complete; rerun without them to finish it (written maps are kept)."
        )
    metrics: dict[str, Any] = {"images": counts["images"], "skipped": counts["skipped"]}
    metrics |= evaluate(ctx, trainer.logger)
    log.info(
        "%s: %d maps (%d written before), infer_size %s, scales %s, flip %s; seed mIoU %.4f at "
        "background threshold %.2f on %d images",
        ctx.stage.name,
        counts["images"],
        counts["skipped"],
        infer_size or "original",
        scales,
        bool(mcfg.flip),
        metrics["miou"],
        metrics["best_threshold"],
        metrics["seed_images"],
    )
    finalize_logger(trainer.logger)
    return metrics
