"""``stage=predict``: test-set predictions for the PASCAL VOC evaluation server.

Segments every image of ``predict.split`` (VOC test, 1,456 images) at its original size, as
``stage=eval`` does, and writes ``<exp>/predict/results/VOC2012/Segmentation/comp6_test_cls/<id>.png``
(VOC palette; comp6 = trained with data beyond VOC's own, as every WSSS method is), then
``<exp>/predict/results.tar.gz`` holding exactly those PNGs under ``results/VOC2012/...``, ready to
upload. Both are written atomically; a rerun keeps the PNGs already written unless
``predict.overwrite``. When the split has ground truth (e.g. ``predict.split=val``), mIoU is reported too.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsss.data.palette import read_index_png, save_mask
from wsss.data.voc import pending_labels
from wsss.errors import MissingArtifactError
from wsss.method.inference import segment_images
from wsss.method.metrics import ConfusionMatrix
from wsss.models.checkpoint import load_network
from wsss.pipeline.artifacts import atomic_path
from wsss.pipeline.runner import StageContext
from wsss.stages.eval import checkpoint_path, inference_settings, split_dataset

log = logging.getLogger(__name__)

STAGE = "predict"
RESULTS = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
ARCHIVE = "results.tar.gz"


def write_archive(results_root: Path, ids: Sequence[str], archive: Path) -> Path:
    """A .tar.gz of ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` for ``ids`` (atomic)."""
    folder = results_root / RESULTS
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    if missing:
        raise MissingArtifactError(f"{len(missing)} predictions missing in {folder} (e.g. {missing[0]}.png)")
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for image_id in ids:
            tar.add(folder / f"{image_id}.png", arcname=(RESULTS / f"{image_id}.png").as_posix())
    return archive


def run(ctx: StageContext) -> dict[str, Any]:

    cfg, out = ctx.cfg, ctx.out
    pcfg = cfg.predict
    settings = inference_settings(cfg, pcfg)
    model = load_network(checkpoint_path(ctx.input("seg")))
    split = str(pcfg.split)
    dataset = split_dataset(cfg, split, require_masks=False)
    ids = list(dataset.ids)
    folder = out / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    overwrite = bool(pcfg.overwrite)
    todo = pending_labels(folder, dataset, overwrite)  # kept PNGs are checked: a damaged one is made again
    log.info("predict on %s: %d images to write, %d already written", split, len(todo), len(ids) - len(todo))
    for index, label in segment_images(model, dataset, todo, **settings):
        save_mask(folder / f"{ids[index]}.png", label)
    archive = write_archive(out, ids, out / ARCHIVE)
    metrics: dict[str, Any] = {
        "images": len(ids),
        "written": len(todo),
        "skipped": len(ids) - len(todo),
        "split": split,
        "scales": ",".join(f"{s:g}" for s in settings["scales"]),
        "flip": settings["flip"],
        "crf": settings["crf"] is not None,
        "archive": archive.name,
    }
    if getattr(dataset, "has_masks", False):  # a split with ground truth: score the written PNGs
        acc = ConfusionMatrix(int(cfg.data.seg_classes), getattr(dataset, "class_names", None))
        for k, image_id in enumerate(ids):
            acc.update(read_index_png(folder / f"{image_id}.png"), dataset.mask(k))
        metrics |= {k: v for k, v in acc.compute().items() if k != "per_class_iou"}
    log.info("predict: %d PNGs in %s, archive %s", len(ids), folder, archive)
    return metrics
