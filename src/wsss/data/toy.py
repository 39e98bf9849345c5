"""The toy dataset: small synthetic images in the VOC2012 layout, made for DRS's situation.

    python -m wsss.data.toy --out DIR --seed 0 [--design elongated|compact]
                            [--num-train 300 --num-val 200 --num-test 20 --size 96]
                            [--body-min 0.36 --body-max 0.46 ... any knob of SHAPE, overriding the design]

The object design is an axis (``design``, ``DESIGNS``; every knob of ``SHAPE`` can override it):

- ``elongated`` (the default, what ``make demo`` runs): the discriminative part is a small share of a
  long object, at one end of it, so a plain CAM covers the part and little else;
- ``compact``: small round bodies (radius ~1/5 of the image side) with a small saturated **ring** on
  them, and body-sized distractor discs in the background; a CAM's blob around the ring already covers
  most of the body. Like the VOC-layout dataset of issue 15, made outside wsss, on which DRS lost to CAM.

In the ``elongated`` design each object of class ``c`` (the 20 VOC classes) has

- a small **part**: a square (~1/10 of the image side) of a saturated colour unique to the class, with a
  dark rim, at one end of the body's long axis (like a head; ``part_at_end``, else anywhere near the
  body's edge): strong, small class evidence;
- a large, elongated **body** (a rotated ellipse or box, ~4/5 of the image side long and 0.35-0.5 of
  that wide for a single object) of a muted
  colour only slightly tinted toward the class colour (``body_tint``), with a stripe texture whose
  orientation is shared by the 4 classes of its group (``c // 4``), under pixel noise: weak class
  evidence spread over most of the object.

A classifier can name the class from the part alone, so a plain CAM peaks on the part; suppressing
the part's peak activations (DRS) pushes the network toward the body. Images hold one to three objects
of distinct classes (fewer when they do not fit without overlap) over a smooth random background with
a few muted distractor shapes (discs or squares, no stripes). Saliency maps are a noisy, blurred,
sometimes slightly too large or too small foreground estimate with the odd false blob, as a real
detector gives.

Written to ``<out>/VOCdevkit/VOC2012/``: ``JPEGImages/``, ``SegmentationClassAug/`` (VOC palette),
``ImageSets/Segmentation/{train,train_aug,val,test}.txt`` (train_aug = train; test has no masks),
``saliency/`` and ``toy.json`` (the parameters, the design's knobs resolved). Everything follows from
the seed; every image has its own random stream, so changing one split's size leaves the other splits
unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from wsss.constants import TMP_PREFIX
from wsss.data.palette import save_mask
from wsss.errors import ConfigError, DatasetLayoutError

log = logging.getLogger(__name__)

VERSION = 4
SIZES: dict[str, int] = {"num_train": 300, "num_val": 200, "num_test": 20, "size": 96}
"""Split sizes and the image side (pixels)."""
SHAPE: dict[str, float] = {
    "body_min": 0.36,
    "body_max": 0.46,
    "part_min": 0.09,
    "part_max": 0.11,
    "body_tint": 0.2,
    "part_shown": 1.0,
    "aspect_min": 0.35,
    "aspect_max": 0.5,
    "part_at_end": 1.0,
    "body_ellipse": 0.6,
    "part_ring": 0.0,
    "distractors": 3.0,
    "distractor_disc": 0.5,
    "distractor_max": 0.125,
}
"""Object design knobs, with the ``elongated`` design's values (as shares of the image side): body
half-length drawn from [body_min, body_max] (x0.8 when an image holds several objects), part side (or
ring diameter) from [part_min, part_max]; ``body_tint`` is the share of the class colour in the body's
muted colour (its weak class evidence); ``part_shown`` the probability that an object shows its part;
``aspect_min``/``aspect_max`` bound the body's width / length; ``part_at_end`` is the probability that
the part sits at an end of the long axis (else near any edge); ``body_ellipse`` the probability that a
body is an ellipse (else a box); ``part_ring`` the probability that the part is a ring (a class-coloured
annulus, the body showing inside) rather than a filled square; ``distractors`` the most distractor shapes
per image (0 .. that many), ``distractor_disc`` the probability that one is a disc (else a square) and
``distractor_max`` the largest distractor radius.
A part at the end of a long body is what makes a plain CAM fall short: its blob covers the head end and
misses the rest, as a CAM on a person covers the face."""
DESIGNS: dict[str, dict[str, float]] = {
    "elongated": dict(SHAPE),
    "compact": {
        **SHAPE,
        "body_min": 0.16,  # radius 15-21 px at 96 px: the body is ~3.5x the part's diameter
        "body_max": 0.22,
        "aspect_min": 0.85,  # round
        "aspect_max": 1.0,
        "body_ellipse": 1.0,
        "part_min": 0.1,  # a ring 10-12 px across, 2-3 px thick, anywhere near the body's edge
        "part_max": 0.12,
        "part_ring": 1.0,
        "part_at_end": 0.0,
        "distractors": 4.0,  # up to 4 muted discs as large as a body (no stripes, no ring)
        "distractor_disc": 1.0,
        "distractor_max": 0.2,
    },
}
"""The named object designs (``data.toy.design``): each a full set of ``SHAPE`` knobs."""
DEFAULT_DESIGN = "elongated"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
COUNTS = ("num_train", "num_val", "num_test")
"""Split sizes: a dataset that differs from the one asked for only in these is remade, not refused."""
MARKER = "toy.json"

PART_COLOURS = np.array(
    [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
        [0, 255, 255], [128, 0, 0], [0, 128, 0], [0, 0, 128], [128, 128, 0],
        [128, 0, 128], [0, 128, 128], [255, 128, 0], [255, 0, 128], [128, 255, 0],
        [0, 255, 128], [128, 0, 255], [0, 128, 255], [255, 128, 128], [128, 255, 128],
    ],
    np.float32,
)  # fmt: skip
"""20 saturated colours, one per class: the part of class ``c`` is a square of colour ``PART_COLOURS[c]``."""
GROUP_ANGLES = np.deg2rad([0.0, 36.0, 72.0, 108.0, 144.0])
"""Stripe orientation of each body group (classes 4g .. 4g+3)."""


def part_colour(c: int) -> np.ndarray:
    """RGB of the part of class ``c`` (0-based)."""
    return PART_COLOURS[c]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _background(rng: np.random.Generator, size: int, shape: Mapping[str, float]) -> np.ndarray:
    base = rng.uniform(70, 180, 3).astype(np.float32)
    field = (_smooth_noise(rng, size, 3, 3) - 0.5) * rng.uniform(40, 90)
    img = base + field
    for _ in range(rng.integers(0, int(shape["distractors"]) + 1)):  # plain distractors: no stripes
        colour = rng.uniform(40, 210, 3)
        colour = 0.4 * colour + 0.6 * colour.mean()  # muted: never a part colour
        r = int(rng.integers(max(2, size // 20), max(3, int(size * shape["distractor_max"]))))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        blob = np.zeros((size, size), np.uint8)
        if rng.random() < shape["distractor_disc"]:
            cv2.circle(blob, (cx, cy), r, 1, -1)
        else:
            cv2.rectangle(blob, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
        img[blob > 0] = 0.35 * img[blob > 0] + 0.65 * colour
    return img


def _body_mask(
    rng: np.random.Generator,
    size: int,
    centre: tuple[float, float],
    radius: float,
    shape: Mapping[str, float],
) -> tuple[np.ndarray, float]:
    """The body's mask and its major-axis angle (degrees)."""
    mask = np.zeros((size, size), np.uint8)
    axes = (int(radius), int(radius * rng.uniform(shape["aspect_min"], shape["aspect_max"])))
    angle = float(rng.uniform(0, 180))
    c = (int(round(centre[0])), int(round(centre[1])))
    if rng.random() < shape["body_ellipse"]:
        cv2.ellipse(mask, c, axes, angle, 0, 360, 1, -1)
    else:
        box = cv2.boxPoints((c, (2 * axes[0], 2 * axes[1]), angle)).astype(np.int32)
        cv2.fillConvexPoly(mask, box, 1)
    return mask, angle


def _stripes(size: int, angle: float, period: float, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return (np.sin(2 * np.pi * t / period + phase) > 0).astype(np.float32) * 2 - 1


def _draw_object(
    rng: np.random.Generator,
    img: np.ndarray,
    c: int,
    body: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    shape: Mapping[str, float],
) -> np.ndarray:
    """Paint body and part of class ``c`` into ``img``; returns the object's mask (body and part)."""
    size = img.shape[0]
    base = rng.uniform(70, 180, 3).astype(np.float32)
    base = 0.5 * base + 0.5 * base.mean()  # muted
    tint = shape["body_tint"]
    colour = (1 - tint) * base + tint * PART_COLOURS[c]
    stripes = _stripes(size, GROUP_ANGLES[c // 4] + rng.normal(0, 0.08), size / 11, rng.uniform(0, 2 * np.pi))
    texture = colour + stripes[..., None] * rng.uniform(18, 30) + rng.normal(0, 12, (size, size, 3))
    sel = body > 0
    img[sel] = texture[sel]

    mask = body.copy()
    if rng.random() >= shape["part_shown"]:  # the part is hidden: only the body tells the class
        return mask
    # The part: a square (or a ring) of the class colour with a thin dark rim, near the body's edge.
    side = max(4, int(round(size * rng.uniform(shape["part_min"], shape["part_max"]))))
    ys, xs = np.nonzero(body)
    if rng.random() < shape["part_at_end"]:  # at one end of the major axis, like a head
        theta = np.deg2rad(angle) + (np.pi if rng.random() < 0.5 else 0.0)
        along = (xs - centre[0]) * np.cos(theta) + (ys - centre[1]) * np.sin(theta)
        far = int(np.argsort(along)[int(len(along) * rng.uniform(0.9, 0.97))])
    else:  # anywhere near the body's edge
        dist = (ys - centre[1]) ** 2 + (xs - centre[0]) ** 2
        far = int(np.argsort(dist)[int(len(dist) * rng.uniform(0.55, 0.8))])
    py = int(np.clip(ys[far] - side // 2, 0, size - side))
    px = int(np.clip(xs[far] - side // 2, 0, size - side))
    colour = PART_COLOURS[c] + rng.normal(0, 8, 3)
    # A ring or a square: the coin is tossed only for 0 < part_ring < 1, so designs without rings (the
    # default) keep their random stream.
    ring = shape["part_ring"]
    if ring >= 1.0 or (ring > 0.0 and rng.random() < ring):
        _paint_ring(img, mask, py, px, side, colour)
        return mask
    img[py : py + side, px : px + side] = 20.0
    img[py + 1 : py + side - 1, px + 1 : px + side - 1] = colour
    mask[py : py + side, px : px + side] = 1
    return mask


def ring_width(side: int) -> int:
    """Thickness (px) of the class-coloured annulus of a ring part ``side`` pixels across."""
    return max(2, int(round(side / 4)))


def _paint_ring(img: np.ndarray, mask: np.ndarray, py: int, px: int, side: int, colour: np.ndarray) -> None:
    """A ring part in the ``side`` square at (py, px): dark 1 px rim, class-coloured annulus, body inside."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    centre = (side - 1) / 2
    d = np.hypot(yy - centre, xx - centre)
    outer = side / 2
    patch = img[py : py + side, px : px + side]
    patch[(d <= outer) & (d > outer - 1)] = 20.0
    patch[(d <= outer - 1) & (d > outer - 1 - ring_width(side))] = colour
    mask[py : py + side, px : px + side][d <= outer] = 1


def _saliency(rng: np.random.Generator, fg: np.ndarray) -> np.ndarray:
    """A detector-like estimate of ``fg``: boundary shifted, blurred, sometimes a spurious blob, noisy."""
    size = fg.shape[0]
    sal = fg.astype(np.uint8)
    k = int(rng.integers(0, 2))
    if k:
        kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
        sal = cv2.dilate(sal, kernel) if rng.random() < 0.5 else cv2.erode(sal, kernel)
    sal = sal.astype(np.float32) * rng.uniform(0.8, 1.0)
    if rng.random() < 0.25:
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        cv2.circle(sal, (cx, cy), int(rng.integers(2, max(3, size // 10))), float(rng.uniform(0.3, 0.7)), -1)
    sal = cv2.GaussianBlur(sal, (0, 0), rng.uniform(0.6, 1.5))
    sal = sal + rng.normal(0, 0.03, sal.shape) * (rng.random(sal.shape) < 0.5)
    return np.clip(sal * 255, 0, 255).astype(np.uint8)


def make_sample(
    rng: np.random.Generator, size: int, shape: Mapping[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (image RGB uint8, mask uint8 class ids, saliency uint8) triple; ``shape`` overrides ``SHAPE``."""
    shape = {**SHAPE, **(shape or {})}
    img = _background(rng, size, shape)
    n_objects = int(rng.choice([1, 2, 3], p=[0.55, 0.33, 0.12]))
    classes = rng.choice(20, size=n_objects, replace=False)
    mask = np.zeros((size, size), np.uint8)
    for c in classes:
        for _ in range(30):  # rejection sampling: little overlap with what is already there
            radius = (
                size * rng.uniform(shape["body_min"], shape["body_max"]) * (1.0 if n_objects == 1 else 0.8)
            )
            lo, hi = radius * 0.7, size - radius * 0.7
            centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            body, angle = _body_mask(rng, size, centre, radius, shape)
            if body.sum() and ((body > 0) & (mask > 0)).sum() <= 0.1 * body.sum():
                break
        else:
            continue  # no room left: the image holds fewer objects
        obj = _draw_object(rng, img, int(c), body, centre, angle, shape)
        mask[obj > 0] = c + 1
    img = cv2.GaussianBlur(img, (0, 0), 0.5) + rng.normal(0, 4, img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, mask, _saliency(rng, mask > 0)


def _ids(split: str, n: int) -> list[str]:
    return [f"toy_{split}_{i:04d}" for i in range(n)]


PROBABILITIES = ("part_shown", "part_at_end", "body_ellipse", "part_ring", "distractor_disc")


def _params(seed: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """The full parameter record (``toy.json``): the design's knobs, overridden by the options not None."""
    known = ["design", *SIZES, *SHAPE]
    unknown = set(options) - set(known)
    if unknown:
        raise ConfigError(f"unknown toy parameters {sorted(unknown)}; known: seed, {', '.join(known)}")
    options = {k: v for k, v in options.items() if v is not None}
    design = str(options.get("design", DEFAULT_DESIGN))
    if design not in DESIGNS:
        raise ConfigError(
            f"toy design {design!r} is not one of {list(DESIGNS)}; set data.toy.design / --design"
        )
    params: dict[str, Any] = {"version": VERSION, "seed": int(seed), "design": design}
    params.update({k: int(options.get(k, v)) for k, v in SIZES.items()})
    params.update({k: float(options.get(k, v)) for k, v in DESIGNS[design].items()})
    if params["size"] < 32 or min(params[k] for k in COUNTS) < 1:
        raise ConfigError(f"toy sizes {params}: need size >= 32 and at least one image per split")
    if not (
        0 < params["body_min"] <= params["body_max"] < 0.5
        and 0 < params["part_min"] <= params["part_max"] < 0.3
    ):
        raise ConfigError(
            f"toy shape {params}: need 0 < body_min <= body_max < 0.5 and 0 < part_min <= part_max < 0.3"
        )
    bad = [k for k in PROBABILITIES if not 0.0 <= params[k] <= 1.0]
    if bad:
        raise ConfigError(f"toy shape: {', '.join(f'{k}={params[k]}' for k in bad)} must lie in [0, 1]")
    if (
        params["distractors"] < 0
        or not params["distractors"].is_integer()
        or not 0 < params["distractor_max"] < 0.5
    ):
        raise ConfigError(
            f"toy shape: distractors={params['distractors']} must be a whole number >= 0 and "
            f"distractor_max={params['distractor_max']} must lie in (0, 0.5)"
        )
    return params


def _write(voc: Path, params: dict[str, Any]) -> None:
    for sub in ("JPEGImages", "SegmentationClassAug", "saliency", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    lists = {}
    for split, code in SPLIT_CODES.items():
        ids = _ids(split, params[f"num_{split}"])
        lists[split] = ids
        for i, image_id in enumerate(ids):
            rng = np.random.default_rng([params["seed"], code, i])
            image, mask, sal = make_sample(rng, params["size"], {k: params[k] for k in SHAPE})
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            Image.fromarray(sal, mode="L").save(voc / "saliency" / f"{image_id}.png")
            if split != "test":
                save_mask(voc / "SegmentationClassAug" / f"{image_id}.png", mask)
    lists["train_aug"] = lists["train"]
    for split, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (voc / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _existing(out: Path, params: dict[str, Any]) -> Path | None:
    """The VOC2012 folder of a finished toy dataset at ``out`` with these parameters, else None / an error."""
    voc = out / "VOCdevkit" / "VOC2012"
    if not out.exists():
        return None
    marker = voc / MARKER
    if not marker.is_file():
        raise DatasetLayoutError(
            f"{out} exists but is not a generated toy dataset (no {marker.relative_to(out)}); delete it or "
            "choose another data.root / --out"
        )
    # Made before the design axis existed: those knobs had the elongated design's values (same images).
    found = {"design": DEFAULT_DESIGN, **DESIGNS[DEFAULT_DESIGN], **json.loads(marker.read_text())}
    if found.get("version") != params["version"]:  # made by an older generator: ours to replace
        log.warning(
            "replacing the toy dataset at %s (generator version %s, now %s)",
            out,
            found.get("version"),
            VERSION,
        )
        shutil.rmtree(out, ignore_errors=True)
        return None
    differ = {k for k in set(found) | set(params) if found.get(k) != params.get(k)}
    if differ and differ <= set(COUNTS):  # image i of a split is the same whatever the counts: remake
        log.warning(
            "replacing the toy dataset at %s (%s; the images both have are the same)",
            out,
            ", ".join(f"{k} {found.get(k)} -> {params[k]}" for k in sorted(differ)),
        )
        shutil.rmtree(out, ignore_errors=True)
        return None
    if found != params:
        raise DatasetLayoutError(
            f"the toy dataset at {out} was made with {found}, but {params} is asked for; delete {out} "
            "(it is regenerated) or point data.root / --out elsewhere"
        )
    return voc


def generate(out: str | Path, seed: int = 0, **options: Any) -> Path:
    """Write the toy dataset under ``out`` (atomically: built beside it, then renamed); returns VOC2012.

    ``options``: split sizes and image side (``SIZES``), the object ``design`` (a name of ``DESIGNS``,
    default elongated) and any of its knobs (``SHAPE``) to override; None means "the design's value".

    Idempotent: an existing toy dataset with the same parameters is reused; one with other parameters
    (or a foreign folder) raises ``DatasetLayoutError``.
    """
    out = Path(out).expanduser()
    params = _params(seed, options)
    voc = _existing(out, params)
    if voc is not None:
        return voc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-", dir=out.parent))
    try:
        _write(tmp / "VOCdevkit" / "VOC2012", params)
        try:
            os.rename(tmp, out)
        except OSError:
            if _existing(out, params) is None:  # lost a race to another process: use its result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "VOCdevkit" / "VOC2012"


def ensure_toy(data_cfg: Any) -> None:
    """Generate the toy dataset at ``data_cfg.root`` on first use when ``data_cfg.generate`` is true."""
    if not data_cfg.get("generate", False):
        return
    toy = dict(data_cfg.get("toy") or {})
    seed = toy.pop("seed", 0)
    generate(Path(str(data_cfg.root)), seed=int(seed), **toy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to create (holds VOCdevkit/VOC2012)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--design", choices=list(DESIGNS), default=DEFAULT_DESIGN, help="object design")
    for key, value in SIZES.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value, dest=key)
    for key in SHAPE:
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=float,
            default=None,
            dest=key,
            help="overrides the design's value",
        )
    args = vars(parser.parse_args(argv))
    out, seed = args.pop("out"), args.pop("seed")
    voc = generate(out, seed, **args)
    print(
        f"toy dataset: {voc} ({args['num_train']} train, {args['num_val']} val, {args['num_test']} test images, "
        f"{args['size']} px, {args['design']} design; saliency in {voc / 'saliency'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
