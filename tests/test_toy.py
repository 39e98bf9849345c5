"""The toy generator: deterministic, VOC layout accepted by VOCDataset, part + body objects, ensure_toy,
the object designs (elongated, compact)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from wsss.data.toy import (
    DESIGNS,
    PART_COLOURS,
    SHAPE,
    VERSION,
    ensure_toy,
    generate,
    main,
    make_sample,
    part_colour,
)
from wsss.data.voc import DatasetLayoutError, MissingLabelsError, VOCDataset
from wsss.pipeline.config import CONF_DIR

SMALL = {"num_train": 6, "num_val": 3, "num_test": 2, "size": 48}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("toy") / "toy", seed=3, **SMALL)


def test_same_seed_same_bytes_other_seed_other_images(toy: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=3, **SMALL)
    assert files(again) == files(toy)
    other = generate(tmp_path / "other", seed=4, **SMALL)
    assert files(other)["JPEGImages/toy_train_0000.jpg"] != files(toy)["JPEGImages/toy_train_0000.jpg"]


def test_split_sizes_do_not_change_other_splits(toy: Path, tmp_path: Path) -> None:
    bigger = generate(tmp_path / "bigger", seed=3, **{**SMALL, "num_train": 9})
    a, b = files(toy), files(bigger)
    assert all(a[k] == b[k] for k in a if "toy_val_" in k or "toy_test_" in k)
    assert a["JPEGImages/toy_train_0005.jpg"] == b["JPEGImages/toy_train_0005.jpg"]


def test_layout_is_accepted_by_vocdataset(toy: Path) -> None:
    assert toy.name == "VOC2012" and toy.parent.name == "VOCdevkit"
    train = VOCDataset(
        toy.parent.parent, "train", saliency_dir=toy / "saliency", require_masks=True, require_saliency=True
    )
    assert len(train) == 6 and VOCDataset(toy, "train_aug").ids == train.ids
    val = VOCDataset(toy, "val", require_masks=True)
    assert len(val) == 3
    test = VOCDataset(toy, "test", saliency_dir=toy / "saliency", require_saliency=True)
    assert len(test) == 2 and not test.has_masks
    with pytest.raises(MissingLabelsError):
        test.label(0)
    labels = train.labels()
    for i in range(len(train)):
        image, mask = train.image(i), train.mask(i)
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48) and train.saliency(i).shape == (48, 48)
        present = sorted(set(np.unique(mask).tolist()) - {0})
        assert 1 <= len(present) <= 3 and present == (np.nonzero(labels[i])[0] + 1).tolist()
    expected = {"version": VERSION, "seed": 3, "design": "elongated", **SMALL, **SHAPE}
    assert json.loads((toy / "toy.json").read_text()) == expected


def test_each_object_carries_its_class_part_and_a_larger_body() -> None:
    assert len(np.unique(PART_COLOURS, axis=0)) == 20
    for n in range(12):
        image, mask, sal = make_sample(np.random.default_rng([9, n]), 96)
        for k in sorted(set(np.unique(mask).tolist()) - {0}):
            pixels = image[mask == k].astype(np.float32)
            part = (np.abs(pixels - part_colour(k - 1)).max(axis=1) < 30).sum()
            assert part >= 25, (n, k)  # at least a 5x5 patch of the class colour
            assert part < 0.25 * (mask == k).sum(), (n, k)  # the part is a small share of the object
            others = [np.abs(pixels - c).max(axis=1) < 30 for j, c in enumerate(PART_COLOURS) if j != k - 1]
            assert max(o.sum() for o in others) < part, (n, k)  # no other class's part colour dominates
        fg = mask > 0
        assert sal[fg].mean() > 150 > 30 > sal[~fg].mean()  # a rough, blurred foreground estimate
        assert ((sal > 20) & (sal < 235)).any()


def test_ensure_toy_generates_once_and_refuses_other_parameters(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"root": str(tmp_path / "toy"), "generate": True, "toy": {"seed": 1, **SMALL}})
    ensure_toy(cfg)
    marker = tmp_path / "toy" / "VOCdevkit" / "VOC2012" / "toy.json"
    stamp = marker.stat().st_mtime_ns
    ensure_toy(cfg)
    assert marker.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    cfg.toy.seed = 2
    with pytest.raises(DatasetLayoutError, match=r"made with .*'seed': 1.* but .*'seed': 2.* delete"):
        ensure_toy(cfg)
    # a dataset from an older generator version is replaced, not refused
    cfg.toy.seed = 1
    params = json.loads(marker.read_text())
    # one made before the design axis (no design knobs recorded: they had the elongated values) is reused
    before = {
        k: v for k, v in params.items() if k not in ("design", "body_ellipse", "part_ring", "distractors")
    }
    before = {k: v for k, v in before.items() if not k.startswith("distractor_")}
    marker.write_text(json.dumps(before))
    stamp = marker.stat().st_mtime_ns
    ensure_toy(cfg)
    assert marker.stat().st_mtime_ns == stamp
    marker.write_text(json.dumps({**params, "version": VERSION - 1}))
    ensure_toy(cfg)
    assert json.loads(marker.read_text()) == params
    ensure_toy(OmegaConf.create({"root": str(tmp_path / "absent"), "generate": False}))
    assert not (tmp_path / "absent").exists()
    (tmp_path / "foreign").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"not a generated toy dataset"):
        generate(tmp_path / "foreign", seed=0, **SMALL)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "--out",
                str(tmp_path / "t"),
                "--seed",
                "0",
                "--num-train",
                "2",
                "--num-val",
                "1",
                "--num-test",
                "1",
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert "2 train, 1 val, 1 test images, 32 px" in capsys.readouterr().out
    assert (
        tmp_path / "t" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt"
    ).read_text().split() == ["toy_test_0000"]
    with pytest.raises(ValueError, match=r"unknown toy parameters \['colour'\]"):
        generate(tmp_path / "u", seed=0, colour=1)
    with pytest.raises(ValueError, match=r"need 0 < body_min <= body_max < 0.5"):
        generate(tmp_path / "u", seed=0, body_max=0.6)


def test_shape_options_change_the_objects() -> None:
    plain = make_sample(np.random.default_rng(5), 96, {"body_tint": 0.0, "part_shown": 0.0})
    tinted = make_sample(np.random.default_rng(5), 96, {"body_tint": 0.6, "part_shown": 0.0})
    np.testing.assert_array_equal(plain[1], tinted[1])  # same layout, only colours differ
    for k in sorted(set(np.unique(plain[1]).tolist()) - {0}):
        colour = part_colour(k - 1)
        far = np.abs(plain[0][plain[1] == k].astype(float).mean(axis=0) - colour).sum()
        near = np.abs(tinted[0][tinted[1] == k].astype(float).mean(axis=0) - colour).sum()
        assert near < far
        pixels = plain[0][plain[1] == k].astype(np.float32)
        assert (np.abs(pixels - colour).max(axis=1) < 40).sum() < 10  # no part drawn


def test_part_sits_at_an_end_of_an_elongated_body() -> None:
    """Default design: like a head, the part is far from the body's centre along its long axis."""
    for n in range(8):
        image, mask, _ = make_sample(np.random.default_rng([5, n]), 96, {"body_min": 0.4, "body_max": 0.4})
        for k in sorted(set(np.unique(mask).tolist()) - {0}):
            ys, xs = np.nonzero(mask == k)
            pts = np.stack([xs, ys], 1).astype(np.float64)
            centre = pts.mean(0)
            _, sv, axes = np.linalg.svd(pts - centre, full_matrices=False)
            assert sv[1] / sv[0] < 0.7, (n, k)  # elongated
            own = np.abs(image.astype(np.float32) - part_colour(k - 1)).max(axis=2) < 30
            part = np.stack(np.nonzero(own & (mask == k))[::-1], 1).mean(0)
            along = np.abs((pts - centre) @ axes[0])
            assert abs((part - centre) @ axes[0]) > 0.6 * along.max(), (n, k)


def test_default_design_is_byte_identical_to_generator_version_4() -> None:
    """The design axis must not move make demo's numbers: same arrays as before it existed.

    Digests made with the generator at commit d08a560 (version 4, before ``design``) by hashing
    image, mask and saliency bytes of make_sample(default_rng([7, n]), size), n < 24 at 96 px, n < 8 at 48 px.
    """
    golden = {
        (96, 24): "8dfca2a7724d02325cdcb7bbe80be6fdaf77e8b6c3b88c1fb0a6f6fff93c7fc5",
        (48, 8): "d162cdfeeec245da0be85e0a43f1143d4e6426b419e8ce47030d92dfc5f9b6ae",
    }
    for (size, count), digest in golden.items():
        for shape in (None, DESIGNS["elongated"]):
            h = hashlib.sha256()
            for n in range(count):
                for array in make_sample(np.random.default_rng([7, n]), size, shape):
                    h.update(array.tobytes())
            assert h.hexdigest() == digest, (size, shape)
    assert DESIGNS["elongated"] == SHAPE


def part_geometry(design: str, n_images: int = 40) -> dict[str, np.ndarray]:
    """Per object: area / its part's bounding box (body-to-part area ratio), the farthest object pixel
    from the part's centre in part sides (reach), the share of the part's box in class colour, and the
    object's axis ratio (minor / major singular value)."""
    out: dict[str, list[float]] = {"area_ratio": [], "reach": [], "fill": [], "roundness": []}
    for n in range(n_images):
        image, mask, _ = make_sample(np.random.default_rng([11, n]), 96, DESIGNS[design])
        for k in sorted(set(np.unique(mask).tolist()) - {0}):
            obj = mask == k
            own = (np.abs(image.astype(np.float32) - part_colour(k - 1)).max(axis=2) < 30) & obj
            ys, xs = np.nonzero(own)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            oy, ox = np.nonzero(obj)
            pts = np.stack([ox, oy], 1).astype(np.float64)
            sv = np.linalg.svd(pts - pts.mean(0), compute_uv=False)
            out["area_ratio"].append(obj.sum() / box)
            out["reach"].append(np.hypot(oy - ys.mean(), ox - xs.mean()).max() / np.sqrt(box))
            out["fill"].append(own.sum() / box)
            out["roundness"].append(sv[1] / sv[0])
    return {k: np.array(v) for k, v in out.items()}


def test_compact_design_geometry_round_bodies_a_ring_a_large_share_of_the_object() -> None:
    elongated, compact = part_geometry("elongated"), part_geometry("compact")
    # body-to-part area ratio: ~12 on compact objects (median), ~30 on elongated ones
    assert 8 < np.median(compact["area_ratio"]) < 18 < 22 < np.median(elongated["area_ratio"])
    # every pixel of a compact object lies within ~3.5 part sides of its part (elongated: ~8)
    assert np.median(compact["reach"]) < 4.5 and np.percentile(compact["reach"], 90) < 5.0
    assert np.median(elongated["reach"]) > 7.0 and np.percentile(elongated["reach"], 10) > 6.0
    assert np.median(compact["roundness"]) > 0.85 > 0.6 > np.median(elongated["roundness"])
    # a ring leaves the body showing inside its box; a square fills it
    assert np.median(compact["fill"]) < 0.7 < 0.85 < np.median(elongated["fill"])


def test_designs_and_their_knobs_in_the_record_the_cli_and_errors(tmp_path: Path) -> None:
    voc = generate(tmp_path / "c", seed=0, design="compact", part_max=0.13, body_min=None, **SMALL)
    record = json.loads((voc / "toy.json").read_text())
    assert record == {
        "version": VERSION,
        "seed": 0,
        **SMALL,
        **DESIGNS["compact"],
        "design": "compact",
        "part_max": 0.13,
    }
    assert main(["--out", str(tmp_path / "cli"), "--design", "compact", "--num-train", "2", "--num-val", "1",
                 "--num-test", "1", "--size", "32", "--distractors", "0"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "cli" / "VOCdevkit" / "VOC2012" / "toy.json").read_text())
    assert record["design"] == "compact" and record["distractors"] == 0.0 and record["part_ring"] == 1.0
    with pytest.raises(ValueError, match=r"toy design 'round' is not one of \['elongated', 'compact'\]"):
        generate(tmp_path / "u", seed=0, design="round")
    with pytest.raises(ValueError, match=r"part_ring=1.5 must lie in \[0, 1\]"):
        generate(tmp_path / "u", seed=0, part_ring=1.5)
    with pytest.raises(ValueError, match=r"distractors=2.5 must be a whole number"):
        generate(tmp_path / "u", seed=0, distractors=2.5)
    with pytest.raises(DatasetLayoutError, match=r"'design': 'compact'.* but .*'design': 'elongated'"):
        generate(tmp_path / "c", seed=0, **SMALL)  # one folder, one design


def test_hydra_data_toy_compact_selects_the_compact_design() -> None:
    conf = CONF_DIR / "data"
    toy, compact = OmegaConf.load(conf / "toy.yaml"), OmegaConf.load(conf / "toy_compact.yaml")
    assert toy.toy.design == "elongated" and compact.toy.design == "compact"
    assert set(toy.toy) == {"seed", "design", "num_train", "num_val", "num_test", "size", *SHAPE}
    assert all(toy.toy[k] is None for k in SHAPE)  # the design's values unless overridden
    roots = [OmegaConf.to_container(c, resolve=False)["root"] for c in (toy, compact)]
    assert roots == ["${paths.data}/toy", "${paths.data}/toy_compact"]


def _body_aspects(voc: Path) -> list[float]:
    """Width / length of each single-object training mask's object (cv2.minAreaRect of its pixels)."""
    import cv2
    from PIL import Image

    aspects = []
    for path in sorted((voc / "SegmentationClassAug").glob("*.png")):
        mask = np.asarray(Image.open(path))
        classes = [c for c in np.unique(mask) if 0 < c < 255]
        if len(classes) != 1:
            continue
        points = np.argwhere(mask == classes[0]).astype(np.float32)
        w, h = cv2.minAreaRect(points)[1]
        aspects.append(min(w, h) / max(w, h))
    return aspects


def test_the_thick_and_thin_data_configs_draw_elongated_objects_of_their_shape(tmp_path: Path) -> None:
    """data=toy_thick / toy_thin: the elongated design with knobs changed, each in its own folder."""
    aspects = {}
    for name in ("toy_thick", "toy_thin"):
        cfg = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")
        assert OmegaConf.to_container(cfg, resolve=False)["root"] == f"${{paths.data}}/{name}"
        assert "design" not in cfg.toy  # toy.yaml's elongated design, knobs overridden
        voc = generate(tmp_path / name, seed=0, num_train=40, num_val=1, num_test=1, **cfg.toy)
        aspects[name] = float(np.median(_body_aspects(voc)))
    assert aspects["toy_thin"] < 0.4 < 0.5 < aspects["toy_thick"], aspects
