"""``stage=pseudo``: stored maps (+ saliency, + optional dense CRF) -> pseudo segmentation labels.

Reads ``maps/<pseudo.source>/<id>.npz`` for every image of ``data.maps_split`` and, with
``pseudo.background=saliency``, ``<data.saliency_dir>/<id>.png``; writes ``pseudo/<id>.png``
(VOC palette, original image size, 0..20 and 255) in a pool of ``pseudo.workers`` processes, skipping
labels already written unless ``pseudo.overwrite``. Then scores the labels against the ground truth of
``data.eval_split`` (mIoU, precision, recall, pixel accuracy, ignore ratio), writes ``metrics.json``,
``per_class_iou.csv``, the figure ``<exp>/figures/pseudo.png`` (image | ground truth | pseudo label) and
``.complete``. The rules (``pseudo.rule``: paper or release) are in ``wsss.stages.pseudo_rules``.

``pseudo.source=gt`` is the oracle (the fully-supervised upper bound of WSSS tables): the stage reads no
maps and writes each image's ground-truth mask as its label (``metrics.json`` says ``source: gt``), so
the segmenter after it learns from the truth; every image of ``data.maps_split`` needs a mask.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from wsss.constants import IGNORE_INDEX
from wsss.data.figures import save_grid
from wsss.data.palette import colorize, read_index_png, save_mask
from wsss.data.toy import ensure_toy
from wsss.data.voc import VOCDataset, pending_labels
from wsss.errors import (
    ConfigError,
    MaskSizeError,
    MissingArtifactError,
    MissingLabelsError,
    MissingSaliencyError,
)
from wsss.method.crf import CRFParams, crf_map, require_pydensecrf
from wsss.method.metrics import ConfusionMatrix
from wsss.pipeline.artifacts import PER_CLASS_CSV, read_json, write_per_class_iou
from wsss.pipeline.hints import command
from wsss.pipeline.registry import GT_SOURCE
from wsss.pipeline.runner import StageContext
from wsss.stages.pseudo_rules import LabelJob, PseudoRule, label_image, set_job
from wsss.tasks.trainer import build_logger, finalize_logger, log_image, log_metrics

log = logging.getLogger(__name__)

STAGE = "pseudo"


def fallback_threshold(value: object, maps_dir: Path) -> float:
    """``pseudo.fallback_threshold``: a number, or ``best``: the maps' best seed threshold (``metrics.json``
    of the maps stage, found on data.eval_split's ground truth)."""
    if str(value) != "best":
        return float(value)  # type: ignore[arg-type]
    metrics = read_json(maps_dir / "metrics.json") if (maps_dir / "metrics.json").is_file() else {}
    if metrics.get("best_threshold") is None:
        raise MissingArtifactError(
            f"pseudo.fallback_threshold=best needs the seed evaluation of {maps_dir} (metrics.json best_threshold); "
            "remake the maps stage, or give a number, e.g. pseudo.fallback_threshold=0.2"
        )
    return float(metrics["best_threshold"])


def rule_from_config(cfg: DictConfig, maps_dir: Path) -> PseudoRule:
    """The labeling rule of ``cfg.pseudo`` (``maps_dir``: where ``fallback_threshold=best`` is read)."""
    p = cfg.pseudo
    return PseudoRule(
        rule=str(p.rule),
        background=str(p.background),
        alpha=float(p.alpha),
        beta=float(p.beta),
        conflict=str(p.get("conflict", "background")),
        fallback_threshold=fallback_threshold(p.fallback_threshold, maps_dir)
        if p.background == "fallback"
        else 0.2,
    )


def check_saliency(saliency_dir: str | None, ids: list[str]) -> Path:
    """The saliency folder, after checking it holds ``<id>.png`` for every id; raise naming the fix."""
    fix = (
        "Point data.saliency_dir=<folder> at one grayscale PNG per image (same name as the JPEG, e.g. from "
        "PoolNet), or make labels without saliency: pseudo.background=fallback"
    )
    if not saliency_dir:
        raise MissingSaliencyError(f"pseudo.background=saliency but data.saliency_dir is not set. {fix}")
    folder = Path(saliency_dir)
    if not folder.is_dir():
        raise MissingSaliencyError(f"data.saliency_dir={folder} is not a folder. {fix}")
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    if missing:
        raise MissingSaliencyError(
            f"{len(missing)} of {len(ids)} images have no saliency map in {folder} "
            f"(e.g. {folder / (missing[0] + '.png')}). {fix}"
        )
    return folder


def evaluate(out: Path, gt: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Score ``<out>/<id>.png`` against ``gt.mask(i)`` for the eval ids that have both.

    Two readings of the ignore label: the headline ``miou``/``precision``/``recall`` count a 255 pixel as
    background (the WSSS convention, e.g. IRN's ``eval_sem_seg``: an unlabelled object pixel is a
    miss), the ``*_labeled`` ones leave 255 pixels out (the quality of what is labelled, which a label
    that marks almost everything 255 can max out). ``ignore_ratio`` is the share of 255 pixels.
    """

    names = getattr(gt, "class_names", None)
    n = 21 if names is None else len(names) + 1
    dense, labeled = ConfusionMatrix(n, names), ConfusionMatrix(n, names)
    ignored = total = scored = missing = 0
    for i, image_id in enumerate(gt.ids):
        path = out / f"{image_id}.png"
        mask = gt.mask(i)
        if mask is None:
            continue
        if not path.is_file():
            missing += 1
            continue
        label = read_index_png(path)
        if label.shape != mask.shape:
            raise MaskSizeError(f"{path}: pseudo label is {label.shape} but its ground truth is {mask.shape}")
        labeled.update(label, mask)
        unlabeled = label == IGNORE_INDEX
        dense.update(np.where(unlabeled, 0, label), mask)
        ignored += int(unlabeled.sum())
        total += label.size
        scored += 1
    if scored == 0:
        raise ConfigError(
            f"none of the {len(gt.ids)} images of data.eval_split has both a mask and a pseudo label in {out}; "
            "data.eval_split must be part of data.maps_split (VOC: train within train_aug)"
        )
    if missing:
        log.warning("pseudo-label quality: %d eval images have no pseudo label and were left out", missing)
    scores, scores_labeled = dense.compute(), labeled.compute()
    metrics = {k: scores[k] for k in ("miou", "precision", "recall", "pixel_accuracy")}
    metrics |= {f"{k}_labeled": scores_labeled[k] for k in ("miou", "precision", "recall")}
    metrics |= {"ignore_ratio": ignored / total, "eval_images": scored, "eval_missing": missing}
    return metrics, scores["per_class_iou"]


def figure(gt: Any, out: Path, path: Path, n: int, rule_name: str) -> Path | None:
    """Rows of image | ground truth | pseudo label (VOC palette) for the first ``n`` labelled eval images."""

    rows = []
    for i, image_id in enumerate(gt.ids):
        if len(rows) >= n:
            break
        mask = gt.mask(i)
        if mask is None or not (out / f"{image_id}.png").is_file():
            continue
        rows.append([gt.image(i), colorize(mask), colorize(read_index_png(out / f"{image_id}.png"))])
    if not rows:
        return None
    return save_grid(rows, path, titles=["image", "ground truth", f"pseudo label ({rule_name})"])


def figures(ctx: StageContext) -> Path | None:
    """``<exp>/figures/pseudo.png`` of the stage's labels (also called by the runner when it reuses them)."""
    cfg = ctx.cfg
    n_fig = int(cfg.pseudo.get("figure_images", 4))
    if n_fig <= 0:
        return None
    if str(cfg.pseudo.source) == GT_SOURCE:
        name = "ground truth"
    else:
        name = rule_from_config(cfg, ctx.input(f"maps_{cfg.pseudo.source}")).name
    gt = voc_dataset(cfg, str(cfg.data.eval_split))
    return figure(gt, ctx.out, ctx.exp.root / "figures" / "pseudo.png", n_fig, name)


def voc_dataset(cfg: DictConfig, split: str) -> Any:
    """The images (and masks) of one split of ``data.root`` (the toy data is generated if absent: the
    oracle's pipeline starts here)."""

    ensure_toy(cfg.data)
    return VOCDataset(cfg.data.root, split)


def write_ground_truth(dataset: Any, out: Path, todo: list[int]) -> list[tuple[int, int]]:
    """The oracle's labels: ``<out>/<id>.png`` = the ground-truth mask of each image ``todo`` indexes;
    returns (ignored, total) pixel counts per label written. An image without a mask is an error."""
    no_mask = [dataset.ids[k] for k in todo if dataset.mask_path(k) is None]
    if no_mask:
        raise MissingLabelsError(
            f"pseudo.source={GT_SOURCE} writes the ground truth as labels, but {len(no_mask)} images of "
            f"data.maps_split have no mask under {dataset.root} (e.g. {no_mask[0]}); give a split whose "
            "images all have masks, or make the labels from maps (pseudo.source=cls|refine)"
        )
    counts = []
    for k in todo:
        mask = dataset.mask(k)
        save_mask(out / f"{dataset.ids[k]}.png", mask)
        counts.append((int((mask == IGNORE_INDEX).sum()), int(mask.size)))
    return counts


def _label_from_maps(ctx: StageContext, dataset: Any, todo: list[int]) -> tuple[list, dict[str, Any]]:
    """Labels of the images ``todo`` indexes from the stored maps (``pseudo.rule``); returns the per-label
    (ignored, total) counts and the rule's metrics."""
    cfg, out, pcfg = ctx.cfg, ctx.out, ctx.cfg.pseudo
    source = str(pcfg.source)
    maps_dir = ctx.input(f"maps_{source}")
    rule = rule_from_config(cfg, maps_dir)
    crf_params = None
    if bool(pcfg.crf):
        require_pydensecrf()  # fail now, not after the first image
        crf_params = CRFParams.from_config(cfg.crf)
    ids = list(dataset.ids)
    no_maps = [i for i in ids if not (maps_dir / f"{i}.npz").is_file()]
    if no_maps:
        raise MissingArtifactError(
            f"{len(no_maps)} of {len(ids)} images of data.maps_split={cfg.data.maps_split} have no maps in "
            f"{maps_dir} (e.g. {no_maps[0]}); make them with:\n    "
            + command(cfg, [f"maps_{source}"], (f"maps.split={cfg.data.maps_split}", "force=true"))
        )
    saliency_dir = (
        check_saliency(cfg.data.get("saliency_dir"), ids) if rule.background == "saliency" else None
    )
    log.info(
        "pseudo labels (%s rule, background=%s, crf=%s): %d to write, %d already written, %d workers",
        rule.rule,
        rule.background,
        crf_params is not None,
        len(todo),
        len(ids) - len(todo),
        int(pcfg.workers),
    )
    job = LabelJob(dataset, maps_dir, out, saliency_dir, rule, crf_params, int(cfg.data.num_classes))
    counts = crf_map(
        label_image,
        todo,
        workers=int(pcfg.workers),
        desc="pseudo labels",
        progress=bool(cfg.get("trainer", {}).get("enable_progress_bar", True)),
        chunksize=4,
        initializer=set_job,
        initargs=(job,),
    )
    metrics: dict[str, Any] = {
        "rule": rule.rule,
        "background": rule.background,
        "crf": crf_params is not None,
    }
    if rule.background == "fallback":
        metrics["fallback_threshold"] = rule.fallback_threshold
        metrics["fallback_threshold_from"] = (
            "maps seed evaluation (eval-split ground truth)"
            if str(pcfg.fallback_threshold) == "best"
            else "config"
        )
    return counts, metrics


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, out = ctx.cfg, ctx.out
    source = str(cfg.pseudo.source)
    dataset = voc_dataset(cfg, str(cfg.data.maps_split))
    todo = pending_labels(out, dataset, bool(cfg.pseudo.overwrite))  # a damaged kept label is made again
    if source == GT_SOURCE:
        log.info("pseudo labels = ground truth (the oracle): %d to write", len(todo))
        counts, made = write_ground_truth(dataset, out, todo), {"rule": GT_SOURCE}
    else:
        counts, made = _label_from_maps(ctx, dataset, todo)

    gt = voc_dataset(cfg, str(cfg.data.eval_split))
    quality, per_class = evaluate(out, gt)
    write_per_class_iou(out / PER_CLASS_CSV, per_class)
    n = len(dataset.ids)
    metrics: dict[str, Any] = {
        **quality,
        "images": n,
        "written": len(counts),
        "skipped": n - len(todo),
        **made,
        "source": source,
    }
    if counts:
        metrics["written_ignore_ratio"] = sum(c[0] for c in counts) / max(1, sum(c[1] for c in counts))

    logger = build_logger(cfg, STAGE)
    log_metrics(logger, metrics, prefix=STAGE)
    png = figures(ctx)
    if png is not None:
        log_image(logger, f"{STAGE}/figure", png)
    finalize_logger(logger)
    log.info(
        "pseudo labels: mIoU %.4f, precision %.4f, recall %.4f, ignore ratio %.4f on %d %s images",
        metrics["miou"],
        metrics["precision"],
        metrics["recall"],
        metrics["ignore_ratio"],
        metrics["eval_images"],
        cfg.data.eval_split,
    )
    return metrics
