"""The pseudo stage's worker gives the rules only the present classes (a speed change found by bench/):
its labels must equal, bit for bit, those of the 20 dense channels, on real VOC sample images and their
real saliency maps, for every rule, with and without the dense CRF."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.data.maps_io import dense_maps, load_maps, save_maps
from wsss.data.palette import read_index_png
from wsss.data.voc import read_saliency
from wsss.method.crf import CRFParams
from wsss.method.localization import resize_maps
from wsss.stages.pseudo_rules import LabelJob, PseudoRule, label_image, make_label, set_job

IMAGES = 6


class SampleImages:
    """What ``label_image`` asks of its dataset: ids, image sizes and (for the CRF) the RGB images."""

    def __init__(self, voc, ids: list[str]) -> None:
        self.voc, self.ids = voc, ids

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(self.voc / "JPEGImages" / f"{self.ids[i]}.jpg").convert("RGB"))

    def image_size(self, i: int) -> tuple[int, int]:
        return read_index_png(self.voc / "SegmentationClassAug" / f"{self.ids[i]}.png").shape


def maps_like_a_network(mask: np.ndarray, rng: np.random.Generator, side: int = 80) -> tuple:
    """Classes (the mask's, in a shuffled order, plus one absent from it) and their maps at a side x side
    grid: each class's region blurred by the downsampling, plus noise, in [0, 1]."""
    import cv2

    present = [c - 1 for c in np.unique(mask) if 1 <= c <= 20]
    absent = next(c for c in range(20) if c not in present)
    classes = np.array(rng.permutation([*present, absent]), dtype=np.int64)
    maps = np.stack(
        [
            cv2.resize((mask == c + 1).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
            for c in classes
        ]
    )
    return classes, np.clip(maps + rng.uniform(0, 0.35, maps.shape).astype(np.float32), 0, 1)


def dense_label(job: LabelJob, i: int) -> np.ndarray:
    """The label the worker made before the change: maps expanded to 20 channels, then the rules."""
    image_id = job.dataset.ids[i]
    classes, maps = load_maps(job.maps_dir / f"{image_id}.npz")
    saliency = read_saliency(job.saliency_dir / f"{image_id}.png") if job.saliency_dir else None
    image = job.dataset.image(i) if job.crf is not None else None
    size = tuple(job.dataset.image_size(i))
    maps = dense_maps(classes, resize_maps(maps, size), job.num_classes)
    return make_label(job.rule, maps, saliency, size, image=image, crf_params=job.crf)


@pytest.fixture(scope="module")
def sample(shared_data, tmp_path_factory):
    voc = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    ids = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))[:IMAGES]
    tmp = tmp_path_factory.mktemp("pseudo_worker")
    rng = np.random.default_rng(0)
    folders = {}
    for dtype in ("uint8", "float32"):
        folders[dtype] = tmp / f"maps_{dtype}"
        folders[dtype].mkdir()
        for image_id in ids:
            classes, maps = maps_like_a_network(
                read_index_png(voc / "SegmentationClassAug" / f"{image_id}.png"), rng
            )
            if dtype == "float32":  # raw maps (relu=none): values below zero and above one
                maps = 1.6 * maps - 0.3
            save_maps(folders[dtype] / f"{image_id}.npz", classes, maps, dtype=dtype)
    return SampleImages(voc, ids), folders, voc / "saliency_isnet_imgly", tmp


RULES = {
    "paper": PseudoRule(rule="paper"),
    "paper_conflict_object": PseudoRule(rule="paper", conflict="object", alpha=0.35),
    "release": PseudoRule(rule="release"),
    "release_alpha0": PseudoRule(rule="release", alpha=0.0),
    "fallback": PseudoRule(background="fallback", fallback_threshold=0.3),
    "paper_alpha_negative": PseudoRule(rule="paper", alpha=-0.1),
}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("name", list(RULES))
def test_present_class_labels_equal_the_dense_ones(sample, name, dtype):
    data, folders, saliency, tmp = sample
    rule = RULES[name]
    out = tmp / f"labels_{name}_{dtype}"
    out.mkdir()
    job = LabelJob(data, folders[dtype], out, None if rule.background == "fallback" else saliency, rule, None)
    set_job(job)
    for i, image_id in enumerate(data.ids):
        label_image(i)
        made = read_index_png(out / f"{image_id}.png")
        expected = dense_label(job, i)
        assert made.dtype == expected.dtype and np.array_equal(made, expected), (name, dtype, image_id)
    assert len(np.unique(made)) > 1  # the last label holds more than one value: the rules did something


@pytest.mark.parametrize("name", ["paper", "release"])
def test_present_class_labels_equal_the_dense_ones_with_the_crf(sample, name):
    pytest.importorskip("pydensecrf")
    data, folders, saliency, tmp = sample
    out = tmp / f"crf_{name}"
    out.mkdir()
    job = LabelJob(data, folders["uint8"], out, saliency, RULES[name], CRFParams())
    set_job(job)
    for i, image_id in enumerate(data.ids[:2]):
        label_image(i)
        assert np.array_equal(read_index_png(out / f"{image_id}.png"), dense_label(job, i)), image_id
