"""Pseudo segmentation labels from localization maps and saliency (pure numpy rules).

All rules take dense maps (20, h, w) in [0, 1] (zeros for classes absent from the image label),
resize them bilinearly to the label size (the saliency size, or ``size``) when they differ, and
return a (H, W) uint8 label: 0 background, 1..20 classes, 255 ignore.

``paper`` (paper "Pseudo segmentation label generation"; alpha=0.2, beta=0.06):
  object cue where the highest map value > alpha (that class wins; equal values go to the lower class
  index); background cue where saliency / 255 < beta; pixels in neither cue are 255.
  The paper does not say what a pixel in both cues becomes. Our reading (``conflict="background"``,
  the default): background, as in the authors' release, where non-salient pixels are background
  whatever the maps say. ``conflict="object"`` keeps the class, ``conflict="ignore"`` makes it 255.

``release`` (the authors' ``pseudo_seg_label_gen.py``):
  map values below alpha=0.2 are zeroed; saliency is binarised (salient where > 50 of 255); the
  background score is 1 - that binary map (so 1 on non-salient pixels, 0 on salient ones; the
  continuous saliency is not used); label = argmax over [background, 20 maps] with ties to background
  (so a non-salient pixel is background); a pixel where more than two of the 21 channels exceed 0.9
  becomes 255; a salient pixel that lands on background becomes 255.

``fallback`` (no saliency):
  background where no map exceeds ``bg_threshold`` (every map <= threshold), else the top class; no
  ignore. This is the seed label of the maps stage at that threshold (argmax over [threshold, maps],
  ties to background), so ``maps/*/metrics.json`` (``best_threshold``) shows which value fits.

Dense CRF (optional): the rule's score stack [background, maps] is normalised per pixel into
probabilities over background + the classes present, refined by ``wsss.method.crf.dense_crf``, and each pixel
takes the CRF's most probable class. Ignore regions are kept: a pixel the rule makes 255 stays 255 (the
CRF sharpens boundaries between the cues, it never turns an uncertain pixel into a label).

``label_image`` does one image from files (maps .npz, saliency PNG) to a palette PNG; it runs in the
worker processes of ``stage=pseudo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss.constants import IGNORE_INDEX
from wsss.data.maps_io import dense_maps, load_maps
from wsss.data.palette import save_mask
from wsss.data.voc import read_saliency
from wsss.errors import ConfigError, MaskSizeError, MissingSaliencyError
from wsss.method.crf import crf_labels
from wsss.method.localization import resize_maps
from wsss.method.seed_labels import channels_above, seed_label, top_of

if TYPE_CHECKING:
    from wsss.method.crf import CRFParams

RULES = ("paper", "release")
BACKGROUNDS = ("saliency", "fallback")
CONFLICTS = ("background", "object", "ignore")

RELEASE_SALIENT_ABOVE = 50
"""Release: a saliency value (0..255) above this is salient."""
RELEASE_CONFIDENT = 0.9
"""Release: a channel above this is confident ..."""
RELEASE_MAX_CONFIDENT = 2
"""... and a pixel with more confident channels than this is ignored."""


def _saliency(saliency: np.ndarray | None, rule: str) -> np.ndarray:
    if saliency is None:
        raise MissingSaliencyError(
            f"the {rule} pseudo-label rule needs a saliency map; set data.saliency_dir=<folder of "
            "saliency PNGs> or use the no-saliency rule (pseudo.background=fallback)"
        )
    saliency = np.asarray(saliency)
    if saliency.ndim != 2 or saliency.dtype != np.uint8:
        raise ValueError(
            f"saliency must be a (H, W) uint8 array (0..255), got {saliency.dtype} {saliency.shape}"
        )
    return saliency


def _top(maps: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Highest map value per pixel of dense maps and its class id (1..20), exact wherever it > floor."""
    return top_of(maps, np.arange(1, maps.shape[0] + 1), floor)


def paper_scores(maps: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """Score stack [1 - saliency / 255, maps] (21, H, W) the paper rule's CRF starts from."""
    saliency = _saliency(saliency, "paper")
    maps = resize_maps(maps, saliency.shape)
    return np.concatenate([1.0 - saliency[None].astype(np.float32) / 255.0, maps])


def paper_label(
    maps: np.ndarray,
    saliency: np.ndarray | None,
    alpha: float = 0.2,
    beta: float = 0.06,
    conflict: str = "background",
) -> np.ndarray:
    """Paper rule: object cue where max map > alpha, background where saliency / 255 < beta, else 255."""
    if conflict not in CONFLICTS:
        raise ConfigError(f"conflict={conflict!r}; choose one of {CONFLICTS}")
    saliency = _saliency(saliency, "paper")
    maps = resize_maps(maps, saliency.shape)
    top, top_class = _top(maps, alpha)
    obj = top > alpha
    bg = saliency.astype(np.float32) / 255.0 < beta
    label = np.full(saliency.shape, IGNORE_INDEX, np.uint8)
    label[obj] = top_class[obj]
    if conflict == "background":
        label[bg] = 0
    else:
        label[bg & ~obj] = 0
        if conflict == "ignore":
            label[bg & obj] = IGNORE_INDEX
    return label


def release_scores(
    maps: np.ndarray, saliency: np.ndarray, alpha: float = 0.2, salient_above: int = RELEASE_SALIENT_ABOVE
) -> np.ndarray:
    """Release score stack (21, H, W): [1 - binary saliency, maps with values < alpha zeroed]."""
    saliency = _saliency(saliency, "release")
    maps = resize_maps(maps, saliency.shape)
    maps = np.where(maps < alpha, np.float32(0.0), maps)
    background = (saliency <= salient_above).astype(np.float32)
    return np.concatenate([background[None], maps])


def release_label(
    maps: np.ndarray,
    saliency: np.ndarray | None,
    alpha: float = 0.2,
    salient_above: int = RELEASE_SALIENT_ABOVE,
    confident: float = RELEASE_CONFIDENT,
    max_confident: int = RELEASE_MAX_CONFIDENT,
) -> np.ndarray:
    """Release rule (see the module docstring): argmax over [1 - binary saliency, thresholded maps]."""
    saliency = _saliency(saliency, "release")
    maps = resize_maps(maps, saliency.shape)
    active = channels_above(maps, alpha, inclusive=True)  # the rest is zeroed by the rule
    scores = release_scores(maps[active], saliency, alpha, salient_above)
    channel_id = np.concatenate([[0], active + 1]).astype(np.uint8)
    label = channel_id[scores.argmax(axis=0)]  # first maximum wins: ties go to background
    label[(scores > confident).sum(axis=0, dtype=np.uint8) > max_confident] = IGNORE_INDEX
    label[(saliency > salient_above) & (label == 0)] = IGNORE_INDEX
    return label


def fallback_scores(
    maps: np.ndarray, bg_threshold: float = 0.2, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Score stack [bg_threshold everywhere, maps] (21, H, W) of the no-saliency rule."""
    maps = np.asarray(maps, dtype=np.float32)
    maps = resize_maps(maps, size or maps.shape[1:])
    return np.concatenate([np.full((1, *maps.shape[1:]), bg_threshold, np.float32), maps])


def fallback_label(
    maps: np.ndarray, bg_threshold: float = 0.2, size: tuple[int, int] | None = None
) -> np.ndarray:
    """No-saliency rule: background where every map <= bg_threshold, else the top class (no 255)."""
    if not 0.0 <= bg_threshold <= 1.0:
        raise ConfigError(f"pseudo.fallback_threshold={bg_threshold} must lie in [0, 1] (maps are in [0, 1])")
    maps = np.asarray(maps, dtype=np.float32)
    maps = resize_maps(maps, size or maps.shape[1:])
    return seed_label(*_top(maps, bg_threshold), bg_threshold)


@dataclass(frozen=True)
class PseudoRule:
    """Which rule makes the labels and its parameters (``cfg.pseudo``)."""

    rule: str = "paper"
    background: str = "saliency"
    alpha: float = 0.2
    beta: float = 0.06
    conflict: str = "background"
    fallback_threshold: float = 0.2

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"pseudo.rule={self.rule!r}; choose one of {', '.join(RULES)}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"pseudo.background={self.background!r}; choose saliency or fallback")
        if self.conflict not in CONFLICTS:
            raise ConfigError(f"pseudo.conflict={self.conflict!r}; choose one of {', '.join(CONFLICTS)}")

    @property
    def name(self) -> str:
        """``paper`` / ``release`` with saliency, ``fallback`` without."""
        return self.rule if self.background == "saliency" else "fallback"

    def label(self, maps: np.ndarray, saliency: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
        if self.background == "fallback":
            return fallback_label(maps, self.fallback_threshold, size)
        if self.rule == "paper":
            return paper_label(maps, saliency, self.alpha, self.beta, self.conflict)
        return release_label(maps, saliency, self.alpha)

    def scores(self, maps: np.ndarray, saliency: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
        if self.background == "fallback":
            return fallback_scores(maps, self.fallback_threshold, size)
        if self.rule == "paper":
            return paper_scores(maps, saliency)
        return release_scores(maps, saliency, self.alpha)


def make_label(
    rule: PseudoRule,
    maps: np.ndarray,
    saliency: np.ndarray | None,
    size: tuple[int, int],
    image: np.ndarray | None = None,
    crf_params: CRFParams | None = None,
) -> np.ndarray:
    """The pseudo label of one image: the rule, then (when ``crf_params`` is given) the dense CRF."""
    if saliency is not None and np.shape(saliency) != tuple(size):
        raise MaskSizeError(
            f"saliency map is {np.shape(saliency)} but the image is {tuple(size)}; saliency PNGs must have "
            "the image's size (is data.saliency_dir the right folder?)"
        )
    maps = resize_maps(maps, size)
    label = rule.label(maps, saliency, size)
    if crf_params is None:
        return label
    if image is None:
        raise ValueError("the dense CRF needs the RGB image")

    refined = crf_labels(image, rule.scores(maps, saliency, size), crf_params)
    return np.where(label == IGNORE_INDEX, np.uint8(IGNORE_INDEX), refined)


# --- one image from files to a label PNG (runs in worker processes: no torch imports here) ---


@dataclass(frozen=True)
class LabelJob:
    """What every worker needs to label one image by its index (sent once per worker)."""

    dataset: Any  # VOCDataset of data.maps_split: .ids, .image(i), optionally .image_size(i)
    maps_dir: Path
    out_dir: Path
    saliency_dir: Path | None
    rule: PseudoRule
    crf: CRFParams | None
    num_classes: int = 20


_JOB: LabelJob | None = None


def set_job(job: LabelJob) -> None:
    """Pool initializer: the job ``label_image`` works on in this process."""
    global _JOB
    _JOB = job


def _class_ids(present: np.ndarray) -> np.ndarray:
    """Lookup (256,) uint8 from a label over channels [background, present classes] to VOC ids: channel
    k (1..K) -> class ``present[k - 1] + 1``; 0 and 255 stay."""
    lookup = np.arange(256, dtype=np.uint8)
    lookup[1 : present.size + 1] = present + 1
    return lookup


def label_image(index: int) -> tuple[int, int]:
    """Make and write the label of image ``index`` of the job's dataset; returns (ignored, total) pixels."""
    job = _JOB
    if job is None:
        raise RuntimeError("label_image runs inside crf_map(..., initializer=set_job)")
    image_id = job.dataset.ids[index]
    classes, maps = load_maps(job.maps_dir / f"{image_id}.npz", job.num_classes)
    saliency = read_saliency(job.saliency_dir / f"{image_id}.png") if job.saliency_dir else None
    image = job.dataset.image(index) if job.crf is not None else None
    size = tuple(image.shape[:2]) if image is not None else tuple(job.dataset.image_size(index))
    if saliency is not None and saliency.shape != size:
        raise MaskSizeError(
            f"{job.saliency_dir / (image_id + '.png')}: saliency map is {saliency.shape[1]}x{saliency.shape[0]} "
            f"(WxH) but its image is {size[1]}x{size[0]}; saliency maps must have their image's size "
            "(is data.saliency_dir the right folder?)"
        )
    maps = resize_maps(maps, size)  # the present classes only
    if job.rule.alpha < 0:  # an absent class's all-zero map could win an object cue: give the rules all
        maps = dense_maps(classes, maps, job.num_classes)
        label = make_label(job.rule, maps, saliency, size, image=image, crf_params=job.crf)
    else:
        # The rules see the present classes as channels 1..K in class order (ties still go to the lower
        # class id). An absent class's map is all zeros and never wins, so the labels are those of the
        # 20 dense channels, at a fraction of the work; channel k is then given its class id.
        order = np.argsort(classes)
        label = make_label(job.rule, maps[order], saliency, size, image=image, crf_params=job.crf)
        label = _class_ids(classes[order])[label]
    save_mask(job.out_dir / f"{image_id}.png", label)
    return int((label == IGNORE_INDEX).sum()), int(label.size)


__all__ = [
    "BACKGROUNDS",
    "CONFLICTS",
    "RULES",
    "LabelJob",
    "PseudoRule",
    "fallback_label",
    "label_image",
    "make_label",
    "paper_label",
    "release_label",
    "set_job",
]
