"""``stage=adopt``: a file or folder made elsewhere becomes a stage's complete artifact.

    python train.py stage=adopt adopt.stage=cls adopt.path=/weights/drs_learnable_best.pth \\
        experiment=release data.root=/data/voc exp=release_ckpt
    python train.py stage=maps experiment=release data.root=/data/voc exp=release_ckpt

What ``adopt.stage`` can name, and what ``adopt.path`` must then be:

- ``cls`` / ``refine``: a classifier (refinement network) weights file: the authors' ``best.pth``
  (``{"model": state_dict}``, keys ``layer1_conv1.weight`` ..., ``module.`` optional), a wsss checkpoint
  (``<exp>/cls/checkpoints/best.ckpt``) or a bare state dict of wsss keys (``backbone.*``, ``head.*``,
  ``classifier.*``). It is loaded into the network the config declares (``backbone``, ``drs``, ``model``,
  ``data.num_classes``; the refiner has no DRS): every tensor must fit and every model tensor must be
  given. Written as ``checkpoints/best.ckpt`` in wsss's format (network spec + weights), which
  ``stage=maps`` reads as it reads a trained one.
- ``maps_cls`` / ``maps_refine``: a folder with one maps file per image of ``maps.split``: the release's
  ``<id>.npy`` (``(data.num_classes, H, W)``, uint8 = map x 255 or float) or wsss's ``<id>.npz``
  (``wsss.data.maps_io``), at the size the config's recipe makes (``maps.<source>.size``: the
  ``maps.infer_size`` square, or the image's size). Absent classes must be all zero; the present ones are
  stored as wsss ``.npz`` (uint8 files as they are, float files with the recipe's dtype). The seed
  evaluation runs on ``data.eval_split`` as after ``stage=maps``.
- ``pseudo``: a folder with one ``<id>.png`` per image of ``data.maps_split``: index or palette PNGs of
  class ids ``0..data.num_classes`` and 255 (ignored), each the size of its image; written as VOC-palette
  PNGs, then scored on ``data.eval_split`` as after ``stage=pseudo``.
- ``seg``: a segmenter weights file: the release's DeepLab-V2 ``checkpoint_final.pth`` (``base.`` keys),
  its DeepLab-V3+ ``best_*.pth`` (``{"model_state": ...}``) or a wsss checkpoint, loaded whole into the
  segmenter the config declares (``segmenter=...``, ``seg.multi_scale_inputs``).

The record (``identity.json``) holds the stage's usual identity keys, valued from the config (the
settings the user declares the file was made with), plus ``external.kind``, ``external.format``,
``external.path`` and ``external.sha256`` (of the file; of a folder, of the sorted ``name sha256`` lines
of its maps or label files),
and no upstream. Later stages of the experiment read an adopted artifact exactly as one wsss made
(``wsss.pipeline.provenance.current_record``) while the config gives its stage the declared settings; otherwise
they refuse it naming the keys (maps of an adopted ``drs=fixed`` classifier under ``drs=learnable``).
Every file is checked before anything is written; the first bad one is refused naming it and the fix.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from wsss.constants import IGNORE_INDEX, TMP_PREFIX
from wsss.data.content import attach_content
from wsss.data.maps_io import MapsFolder, maps_file_problem, save_maps
from wsss.data.palette import read_index_png, save_mask
from wsss.data.toy import ensure_toy
from wsss.data.voc import VOCDataset
from wsss.errors import AdoptionError, StageCompleteError, WsssError
from wsss.method.seed_labels import evaluate_seeds
from wsss.models.deeplabv2 import MultiScaleInputs
from wsss.models.networks import build, classifier_spec, refiner_spec
from wsss.models.segmenter_weights import load_weights
from wsss.models.torch_files import non_finite_tensors
from wsss.models.weights import (
    MSC_PREFIX,
    detect_format,
    load_classifier_weights,
    read_state_dict,
    strip_prefix,
)
from wsss.pipeline.artifacts import atomic_path, save_npz, write_csv, write_text
from wsss.pipeline.provenance import EXTERNAL, identity_of, stage_config, staged_config
from wsss.pipeline.registry import stage
from wsss.pipeline.runner import _prepare, experiment
from wsss.stages.maps import write_seed_curve
from wsss.stages.pseudo import evaluate
from wsss.stages.seg import network_spec

log = logging.getLogger(__name__)

KINDS: dict[str, str] = {
    "cls": "classifier",
    "refine": "refiner",
    "maps_cls": "maps",
    "maps_refine": "maps",
    "pseudo": "pseudo_labels",
    "seg": "segmenter",
}
"""Stage names ``adopt.stage`` can name -> the kind of artifact it takes."""


# ---------------------------------------------------------------------------------------------- hashing


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(paths: list[Path]) -> str:
    """The sha256 of ``<name> <sha256 of the file>`` lines of ``paths``, sorted by name."""
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in sorted(paths, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def adopted_record(cfg: DictConfig, name: str, external: dict[str, str]) -> dict[str, Any]:
    """The record of ``name`` adopted from ``external``: the stage's identity keys from ``cfg`` plus
    ``external.*`` keys, no upstream."""

    config = stage_config(staged_config(cfg, name), name)
    config |= {f"{EXTERNAL}{k}": v for k, v in sorted(external.items())}
    config = dict(sorted(config.items()))
    return {
        "stage": name,
        "identity": identity_of(name, config, {}),
        "config": config,
        "upstream": {},
        "external": dict(external),
    }


# ---------------------------------------------------------------------------------------------- networks


def _finite_state(state: dict[str, Any], path: Path) -> None:
    bad = non_finite_tensors(state)
    if bad:
        raise AdoptionError(
            f"adopt.path={path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]}); "
            "this network diverged: adopt another file"
        )


def _save_network(out: Path, net: Any, spec: dict[str, Any], extra: dict[str, Any]) -> None:
    """``checkpoints/best.ckpt`` as the stages' Lightning checkpoints hold it (``model.`` keys + spec)."""
    import torch

    state = {f"model.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    ckpt = {"state_dict": state, "hyper_parameters": {"network": spec, **extra}}
    with atomic_path(out / "checkpoints" / "best.ckpt") as tmp:
        torch.save(ckpt, tmp)


def adopt_score_network(cfg: DictConfig, name: str, path: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """A classifier (``cls``) or refinement network (``refine``) file -> ``checkpoints/best.ckpt``."""

    spec = classifier_spec(cfg) if name == "cls" else refiner_spec(cfg)
    net = build(spec)
    report = load_classifier_weights(net, path, "adopt.path")
    _finite_state(dict(net.state_dict()), path)
    _save_network(out, net, spec, {"num_classes": int(cfg.data.num_classes)})
    return report.format, {"tensors": len(report.loaded)}


def adopt_segmenter(cfg: DictConfig, name: str, path: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """A trained segmenter file (release DeepLab-V2 / V3+, wsss) -> ``checkpoints/best.ckpt``."""

    state = read_state_dict(path, "adopt.path")
    fmt = detect_format(state)
    if fmt == "release_deeplabv2_coco_init":
        raise AdoptionError(
            f"adopt.path={path} is the release's COCO init (no ASPP classifier), not a trained segmenter: "
            "train on it with stage=seg segmenter.weights=<this file>, or adopt checkpoint_final.pth"
        )
    spec = network_spec(cfg)
    model = build(spec)
    if not fmt.startswith("release_"):  # a wsss segmenter: loaded whole, strictly
        if fmt != "wsss_segmenter":
            raise AdoptionError(
                f"adopt.path={path} holds {fmt} weights, not a trained segmenter; adopt the "
                "release's checkpoint_final.pth / best_*.pth or a wsss <exp>/seg/checkpoints/best.ckpt"
            )
        net = model.base if isinstance(model, MultiScaleInputs) else model
        try:
            net.load_state_dict(strip_prefix(state, MSC_PREFIX))
        except RuntimeError as err:
            raise AdoptionError(
                f"adopt.path={path} does not fit segmenter={cfg.segmenter.get('name')} "
                f"({str(err).splitlines()[0]}); set segmenter=... (and data.num_classes) to what it was trained as"
            ) from err
    else:
        load_weights(model, path, "adopt.path")  # the release's layouts; every tensor must fit
    _finite_state(dict(model.state_dict()), path)
    _save_network(out, model, spec, {"num_classes": int(cfg.data.seg_classes)})
    return fmt, {"tensors": len(model.state_dict())}


# ---------------------------------------------------------------------------------------------- folders


def _split(cfg: DictConfig, split: str) -> Any:

    ensure_toy(cfg.data)
    return VOCDataset(
        cfg.data.root,
        split,
        saliency_dir=cfg.data.get("saliency_dir"),
        labels_file=cfg.data.get("labels_file"),
        cache_dir=cfg.data.get("cache_dir"),
    )


def _files_for(folder: Path, ids: list[str], suffixes: tuple[str, ...], split: str) -> list[Path]:
    """One file per id (the first suffix found); a missing one is refused naming it."""
    if not folder.is_dir():
        raise AdoptionError(f"adopt.path={folder} is not a folder; give the folder of the files to adopt")
    found = []
    for image_id in ids:
        path = next(
            (folder / f"{image_id}{s}" for s in suffixes if (folder / f"{image_id}{s}").is_file()), None
        )
        if path is None:
            raise AdoptionError(
                f"adopt.path={folder} has no {' or '.join(image_id + s for s in suffixes)}: every image of "
                f"split {split!r} ({len(ids)} images) needs one; add it, or adopt with the split the files "
                "were made for"
            )
        found.append(path)
    return found


def _map_size(cfg: DictConfig, source: str, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) wsss's maps stage stores for an image under ``cfg``."""
    infer = cfg.maps.infer_size
    if str(cfg.maps[source].size) == "input" and infer is not None:
        return int(infer), int(infer)
    return image_size


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise AdoptionError(
            f"{path}: not a readable .npy array ({type(err).__name__}: {err}); re-copy it"
        ) from err


def _check_dense(path: Path, maps: np.ndarray, num_classes: int, size: tuple[int, int]) -> None:
    if maps.ndim != 3 or maps.shape != (num_classes, *size):
        raise AdoptionError(
            f"{path}: maps of shape {maps.shape}; expected ({num_classes}, {size[0]}, {size[1]}) (data.num_classes x "
            "the size maps.infer_size / maps.<source>.size give): adopt with the settings the maps were made with"
        )
    if maps.dtype != np.uint8 and maps.dtype.name not in ("float16", "float32", "float64"):
        raise AdoptionError(f"{path}: maps stored as {maps.dtype}; expected uint8 (map x 255) or float")
    if maps.dtype != np.uint8 and not np.isfinite(maps).all():
        raise AdoptionError(f"{path}: maps hold NaN or infinite values; the network that made them diverged")


def adopt_maps(cfg: DictConfig, name: str, folder: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """A folder of release ``.npy`` / wsss ``.npz`` maps of ``maps.split`` -> ``<id>.npz`` (present classes)."""
    import shutil

    source = name.removeprefix("maps_")
    recipe = cfg.maps[source]
    num_classes = int(cfg.data.num_classes)
    split = str(cfg.maps.split)
    data = _split(cfg, split)
    paths = _files_for(folder, list(data.ids), (".npy", ".npz"), split)
    formats = {p.suffix for p in paths}
    if len(formats) > 1:
        raise AdoptionError(f"adopt.path={folder} mixes .npy and .npz maps files; adopt one format")
    plan: list[tuple[Path, np.ndarray, Any]] = []
    for i, path in enumerate(paths):  # everything is checked before anything is written
        present = np.flatnonzero(data.label(i)).astype(np.int16)
        size = _map_size(cfg, source, data.image_size(i))
        if path.suffix == ".npz":
            problem = maps_file_problem(path, num_classes)
            if problem is None:
                with np.load(path) as stored:
                    classes, shape = stored["classes"], stored["maps"].shape
                if sorted(classes.tolist()) != present.tolist():
                    problem = f"classes {classes.tolist()} but the image's label has {present.tolist()}"
                elif tuple(shape[1:]) != size:
                    problem = f"maps of {shape[1]}x{shape[2]}; the config's maps are {size[0]}x{size[1]}"
            if problem:
                raise AdoptionError(f"{path}: {problem}; adopt maps made for this split and these settings")
            plan.append((path, present, None))
            continue
        maps = _read_npy(path)
        _check_dense(path, maps, num_classes, size)
        absent = np.flatnonzero(data.label(i) == 0)
        if absent.size and np.abs(maps[absent]).max() > 0:
            first = int(absent[np.abs(maps[absent]).reshape(absent.size, -1).max(1).argmax()])
            raise AdoptionError(
                f"{path}: class {first} is not in the image's label ({present.tolist()}) but its map is not 0: "
                "the file belongs to another image or label list (data.labels_file)"
            )
        if maps.dtype != np.uint8 and str(recipe.dtype) == "uint8" and (maps.min() < 0 or maps.max() > 1):
            raise AdoptionError(
                f"{path}: float maps outside [0, 1] cannot be stored as uint8 (maps.{source}.dtype=uint8): "
                f"set maps.{source}.dtype=float32 for raw maps"
            )
        plan.append((path, present, None))
    for path, present, _ in plan:
        target = out / f"{path.stem}.npz"
        if path.suffix == ".npz":
            shutil.copyfile(path, target)
            continue
        maps = _read_npy(path)
        if maps.dtype == np.uint8:  # stored values kept as they are (the release's uint8(M * 255))
            save_npz(target, classes=present, maps=np.ascontiguousarray(maps[present]))
        else:
            save_maps(target, present, maps[present], dtype=str(recipe.dtype), quantize=str(recipe.quantize))
    fmt = "wsss_npz" if formats == {".npz"} else "release_npy"
    metrics: dict[str, Any] = {"images": len(paths)}
    metrics |= _score_maps(cfg, out)
    return fmt, metrics


def _score_maps(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """The maps stage's seed evaluation on ``data.eval_split`` (``seed_sweep.csv``, metrics)."""

    gt = _split(cfg, str(cfg.data.eval_split))
    metrics, curve = evaluate_seeds(
        MapsFolder(out, gt.num_classes), list(gt.ids), gt.mask, list(cfg.maps.thresholds), gt.num_classes
    )
    write_seed_curve(out / "seed_sweep.csv", curve)
    return metrics


def adopt_pseudo(cfg: DictConfig, name: str, folder: Path, out: Path) -> tuple[str, dict[str, Any]]:
    """A folder of index / palette PNG pseudo labels of ``data.maps_split`` -> VOC-palette ``<id>.png``."""

    num_classes = int(cfg.data.num_classes)
    split = str(cfg.data.maps_split)
    data = _split(cfg, split)
    paths = _files_for(folder, list(data.ids), (".png",), split)
    for i, path in enumerate(paths):  # everything is checked before anything is written
        try:
            label = read_index_png(path)
        except WsssError as err:
            raise AdoptionError(str(err)) from err
        if label.shape != data.image_size(i):
            h, w = data.image_size(i)
            raise AdoptionError(
                f"{path}: pseudo label is {label.shape[1]}x{label.shape[0]} but its image is {w}x{h}; labels "
                "must be at the original image size"
            )
        values = np.unique(label)
        bad = values[(values > num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            raise AdoptionError(
                f"{path}: values {bad.tolist()} are not class ids 0..{num_classes} or {IGNORE_INDEX} (ignore); "
                "a colour PNG saved as grayscale? Save index PNGs of class ids"
            )
    for path in paths:
        save_mask(out / path.name, read_index_png(path))
    metrics: dict[str, Any] = {"images": len(paths)}
    gt = _split(cfg, str(cfg.data.eval_split))
    scores, per_class = evaluate(out, gt)
    write_csv(out / "per_class_iou.csv", ("class", "iou"), per_class.items())
    return "png", metrics | scores


# ---------------------------------------------------------------------------------------------- command

ADOPTERS: dict[str, Callable[[DictConfig, str, Path, Path], tuple[str, dict[str, Any]]]] = {
    "classifier": adopt_score_network,
    "refiner": adopt_score_network,
    "maps": adopt_maps,
    "pseudo_labels": adopt_pseudo,
    "segmenter": adopt_segmenter,
}


def _source(cfg: DictConfig) -> tuple[str, Path]:
    name = cfg.adopt.get("stage")
    if name not in KINDS:
        raise AdoptionError(
            f"adopt.stage={name!r}; name the stage whose artifact adopt.path is: {', '.join(KINDS)}"
        )
    if not cfg.adopt.get("path"):
        raise AdoptionError(f"adopt.stage={name} needs adopt.path=<the file or folder to adopt>")
    path = Path(str(cfg.adopt.path)).expanduser().absolute()
    if not path.exists():
        raise AdoptionError(f"adopt.path={path} does not exist; give the file or folder to adopt")
    folder_kind = KINDS[name] in ("maps", "pseudo_labels")
    if folder_kind != path.is_dir():
        want = "a folder" if folder_kind else "a file"
        raise AdoptionError(f"adopt.path={path}: adopt.stage={name} takes {want} ({KINDS[name]})")
    return str(name), path


FOLDER_FILES = {"maps": (".npy", ".npz"), "pseudo_labels": (".png",)}
"""What a folder kind's hash covers (other files in the folder, e.g. a README, do not change it)."""


def _hash(path: Path, kind: str) -> str:
    if path.is_file():
        return file_sha256(path)
    suffixes = FOLDER_FILES[kind]
    return folder_sha256([p for p in path.iterdir() if p.is_file() and p.suffix in suffixes])


def adopt(cfg: DictConfig) -> dict[str, Any]:
    """Check ``adopt.path`` as ``adopt.stage``'s artifact and install it in the experiment; returns
    ``{"<stage>/<metric>": value}``."""
    import shutil
    from contextlib import nullcontext

    name, path = _source(cfg)
    attach_content(cfg, [name])  # declared like the stage it stands for: its data named by content
    exp = _experiment(cfg, name)
    external = {"kind": KINDS[name], "path": str(path), "sha256": _hash(path, KINDS[name])}
    scratch = exp.root / f"{TMP_PREFIX}adopt-{name}"  # checked and converted here, then moved into place
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        fmt, metrics = ADOPTERS[KINDS[name]](_staged(cfg, name), name, path, scratch)
        external["format"] = fmt
        record = adopted_record(cfg, name, external)
        identity = record["identity"]
        with exp.store.lock(name, identity) if exp.store is not None else nullcontext():
            if exp.store is not None and exp.stored(name, identity) and not bool(cfg.get("force", False)):
                exp.attach(name, identity)  # the same file with the same settings, adopted before
                log.info("adopt: %s is already in the store as %s %s; linked", path, name, identity)
                return {f"{name}/{k}": v for k, v in exp.metrics(name).items()}
            _install(cfg, exp, name, record, scratch, {"format": fmt, **metrics})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info(
        "adopted %s (%s, %s) as stage %s in %s (identity %s)",
        path,
        KINDS[name],
        fmt,
        name,
        exp.stage_dir(name),
        identity,
    )
    return {f"{name}/{k}": v for k, v in {"format": fmt, **metrics}.items()}


def _staged(cfg: DictConfig, name: str) -> DictConfig:

    return staged_config(cfg, name)


def _experiment(cfg: DictConfig, name: str) -> Any:
    """The experiment, after refusing to replace an artifact of ``name`` it holds without ``force``."""

    exp = experiment(cfg)
    folder = exp.stage_dir(name)
    if (folder.exists() or folder.is_symlink()) and not bool(cfg.get("force", False)):
        raise StageCompleteError(
            f"{folder} already exists; adopting replaces it and removes everything made from it in this "
            "experiment: add force=true (or pick another exp=...)"
        )
    return exp


def _install(
    cfg: DictConfig, exp: Any, name: str, record: dict[str, Any], scratch: Path, metrics: dict[str, Any]
) -> None:
    """Move the checked files into the stage's folder (the store entry), record it, mark it complete."""
    import shutil

    from omegaconf import OmegaConf

    _prepare(exp, stage(name), record["identity"], bool(cfg.get("force", False)), resuming=False)
    folder = exp.begin(name, record)
    for item in scratch.iterdir():
        shutil.move(str(item), str(folder / item.name))
    staged = _staged(cfg, name)
    job_keys = [k for k in staged if k != "hydra"]
    write_text(
        folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.masked_copy(staged, job_keys), resolve=True)
    )
    exp.finish(name, metrics, record)
