"""stage=eval: mIoU on real VOC masks by hand, inference views (scales, flip, tiles, CRF), the stage end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import compose_config, make_seg_stage, make_segmenter, run_stage, segmenter_spec
from wsss.data.palette import read_index_png, voc_palette
from wsss.errors import MissingArtifactError
from wsss.method.inference import predict_probs, segment_images, tiled_logits, to_input, window_starts
from wsss.method.metrics import ConfusionMatrix
from wsss.pipeline.artifacts import Experiment, read_json

TINY = {"name": "largefov_tiny", "hidden": 16, "backbone__width": 4}
VAL_IDS = ["2007_000033", "2007_000129", "2007_000346", "2007_000847", "2008_000853", "2010_000682"]


def hand_miou(pairs: list[tuple[np.ndarray, np.ndarray]], n: int = 21) -> tuple[float, list[float]]:
    """mIoU written out per class: TP / (TP + FP + FN) over the split, classes with no pixel left out."""
    tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
    for pred, gt in pairs:
        valid = gt != 255
        for c in range(n):
            p, g = (pred == c) & valid, (gt == c) & valid
            tp[c] += np.sum(p & g)
            fp[c] += np.sum(p & ~g)
            fn[c] += np.sum(~p & g)
    seen = (tp + fp + fn) > 0
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if seen[c] else float("nan") for c in range(n)]
    return float(np.mean([v for v, s in zip(iou, seen, strict=True) if s])), iou


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong prediction: shifted, a block relabelled to dog (12, in none of the masks), noise among
    the image's own classes, no 255 anywhere."""
    own = np.setdiff1d(np.unique(mask), [255])
    pred = np.roll(mask, shift=(7, -5), axis=(0, 1)).copy()
    pred[pred == 255] = 0
    h, w = pred.shape
    pred[h // 4 : h // 3, w // 4 : w // 3] = 12
    noise = rng.random(pred.shape) < 0.05
    pred[noise] = rng.choice(own, size=int(noise.sum()))
    return pred.astype(np.uint8)


def test_split_miou_equals_hand_computed_iou_on_real_voc_masks(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    rng = np.random.default_rng(0)
    pairs = []
    for image_id in VAL_IDS:
        shutil.copy(src / f"{image_id}.png", tmp_path / f"{image_id}.png")
        gt = read_index_png(tmp_path / f"{image_id}.png")
        pairs.append((perturb(gt, rng), gt))
    assert any((gt == 255).any() for _, gt in pairs)  # the VOC object borders are really ignored

    scorer = ConfusionMatrix(21)
    for pred, gt in pairs:
        scorer.update(pred, gt)
    scores = scorer.compute()
    expected, per_class = hand_miou(pairs)
    assert scores["miou"] == pytest.approx(expected, abs=1e-12)
    absent = [c for c, v in enumerate(per_class) if np.isnan(v)]
    assert absent  # some classes are in neither truth nor prediction: left out of the mean, not counted as 0
    assert np.isnan(list(scores["per_class_iou"].values())[absent[0]])
    both = [v for v in per_class if not np.isnan(v)]
    assert scores["miou"] != pytest.approx(sum(both) / 21)

    assert len(absent) == 11  # classes 3, 4, 9, 10, 13, 14, 16..20
    # a class only predicted (never in the truth) has IoU 0 and does count
    assert per_class[12] == 0.0 and scores["per_class_iou"]["dog"] == 0.0
    assert 0.0 < scores["per_class_iou"]["aeroplane"] < 1.0

    with pytest.raises(ValueError, match="differ"):
        scorer.update(pairs[0][0][:-1], pairs[0][1])


def test_flip_and_scales_average_the_softmax_of_each_view() -> None:
    torch.manual_seed(0)
    model = make_segmenter(**TINY).eval()
    x = torch.randn(1, 3, 40, 56)
    up = lambda t: nn.functional.interpolate(t, size=(40, 56), mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        plain = up(model(x)).softmax(1)[0]
        mirrored = up(model(x.flip(-1))).flip(-1).softmax(1)[0]
        half = up(model(nn.functional.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False)))
    torch.testing.assert_close(predict_probs(model, x, [1.0], flip=True), (plain + mirrored) / 2)
    both = predict_probs(model, x, [1.0, 0.5], flip=False)
    torch.testing.assert_close(both, (plain + half.softmax(1)[0]) / 2)
    assert both.shape == (21, 40, 56)
    torch.testing.assert_close(both.sum(0), torch.ones(40, 56))
    with pytest.raises(ValueError, match="no inference scales"):
        predict_probs(model, x, [])


def test_tiles_cover_the_image_and_stitch_exactly() -> None:
    assert window_starts(100, 48, 32) == [0, 32, 52]
    assert window_starts(40, 48, 32) == [0]
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 21, 1)  # no spatial context: tiles must give the whole-image logits
    x = torch.randn(1, 3, 70, 101)
    with torch.no_grad():
        torch.testing.assert_close(tiled_logits(pointwise, x, tile=32), pointwise(x))
        torch.testing.assert_close(tiled_logits(pointwise, x, tile=None), pointwise(x))


class Images:
    """Three small RGB images (with masks) standing for a VOC split."""

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.ids = ["a", "b", "c"]
        self._images = [rng.integers(0, 256, size=(40 + 8 * k, 48, 3), dtype=np.uint8) for k in range(3)]

    def image(self, i: int) -> np.ndarray:
        return self._images[i]

    def mask(self, i: int) -> np.ndarray | None:
        return np.zeros(self._images[i].shape[:2], np.uint8)


def test_crf_labels_in_a_pool_match_one_process_and_keep_order() -> None:
    pytest.importorskip("pydensecrf")
    from wsss.method.crf import CRFParams, dense_crf

    torch.manual_seed(0)
    model = make_segmenter(**TINY).eval()
    data = Images()
    params = CRFParams(iterations=3)
    one = list(segment_images(model, data, [2, 0, 1], crf=params, crf_workers=1))
    pool = list(segment_images(model, data, [2, 0, 1], crf=params, crf_workers=2))
    assert [i for i, _ in pool] == [2, 0, 1]
    for (_, a), (_, b) in zip(one, pool, strict=True):
        assert np.array_equal(a, b)
    probs = predict_probs(model, to_input(data.image(2))).numpy()
    assert np.array_equal(one[0][1], dense_crf(data.image(2), probs, params).argmax(0))
    plain = dict(segment_images(model, data, [0, 1, 2]))
    assert plain[1].shape == (48, 48) and plain[1].dtype == np.uint8


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    from wsss.data.toy import generate

    return generate(tmp_path / "toy", seed=0, num_train=2, num_val=5, num_test=4, size=48)


def test_eval_stage_scores_the_split_and_writes_csv_predictions_figure(
    tmp_path: Path, toy_root: Path
) -> None:
    runs = tmp_path / "runs"
    cfg = compose_config(
        [
            "stage=eval",
            "data=toy",
            f"data.root={toy_root}",
            "data.generate=false",
            "logger=none",
            "trainer=cpu",
            "exp=e1",
            "eval.scales=[1.0,0.75]",
            "eval.flip=true",
        ],
        runs=runs,
    )
    exp = Experiment(runs / "e1", runs=runs)
    with pytest.raises(
        MissingArtifactError, match=r"(?s)reads seg.*does not exist.*pipeline.stages=\[cls,maps_cls,refine"
    ):
        run_stage(cfg)

    torch.manual_seed(0)
    model = make_segmenter(**TINY)
    with torch.no_grad():  # a network that predicts something besides background
        model.head.branches[0].fc8.bias[[0, 5, 9]] = torch.tensor([0.0, 0.02, 0.01])
    make_seg_stage(cfg, model, segmenter_spec(**TINY))
    metrics = run_stage(cfg)

    out = exp.stage_dir("eval")
    assert (out / ".complete").is_file() and read_json(out / "metrics.json")["miou"] == metrics["miou"]
    assert metrics["images"] == 5 and metrics["scales"] == "1,0.75" and metrics["flip"] is True
    from wsss.data.voc import VOCDataset

    val = VOCDataset(toy_root, "val")
    pairs = []
    for k, image_id in enumerate(val.ids):
        png = out / "predictions" / f"{image_id}.png"
        with Image.open(png) as img:
            assert img.mode == "P" and np.array_equal(
                np.array(img.getpalette()).reshape(-1, 3), voc_palette()[: len(img.getpalette()) // 3]
            )
        pairs.append((read_index_png(png), val.mask(k)))
        assert pairs[-1][0].shape == pairs[-1][1].shape
    assert len(np.unique(np.concatenate([p.ravel() for p, _ in pairs]))) > 1  # not all background
    assert metrics["miou"] == pytest.approx(hand_miou(pairs)[0], abs=1e-9)
    lines = (out / "per_class_iou.csv").read_text().splitlines()
    assert lines[0] == "class,iou" and len(lines) == 22 and lines[1].startswith("background,")
    assert (exp.root / "figures" / "segmentation.png").is_file()
