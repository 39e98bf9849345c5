"""Pipelines keep image, mask and maps aligned, pad masks with 255 and images with 0 (the mean)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from wsss.data.transforms import build_transforms as _build_transforms
from wsss.data.transforms import random_scale


def build_transforms(stage, protocol, crop, train, mean, std, **kw):
    """The pipeline a protocol gives: the release squashes cls/refine images to 1.2 x the crop first."""
    if protocol == "release" and stage in ("cls", "refine") and train:
        kw.setdefault("squash_size", round(1.2 * crop))
    return _build_transforms(stage, crop, train, mean, std, **kw)


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def pattern(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A black/white block image (asymmetric) and the mask drawn from it: 7 where white, 0 where black."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((h // 8 + 1, w // 8 + 1)) < 0.5
    white = np.kron(blocks, np.ones((8, 8), bool))[:h, :w]
    white[:3, :] = True  # a bright top band breaks the flip symmetry
    image = np.repeat((white * 255).astype(np.uint8)[..., None], 3, axis=2)
    return image, np.where(white, 7, 0).astype(np.uint8)


def grey(normalised: np.ndarray) -> np.ndarray:
    """Undo Normalize: the mean grey level in 0..255."""
    return ((normalised * np.array(STD) + np.array(MEAN)) * 255).mean(axis=2)


@pytest.mark.parametrize(
    ("stage", "protocol", "size", "crop"),
    [
        ("cls", "paper", (40, 52), 32),
        ("cls", "paper", (20, 24), 32),
        ("cls", "release", (40, 52), 32),
        ("seg", "paper", (40, 52), 32),
        ("seg", "release", (20, 24), 32),
    ],
)
def test_mask_stays_on_the_image_and_pads_with_255(stage: str, protocol: str, size: tuple, crop: int) -> None:
    image, mask = pattern(*size)
    transform = build_transforms(stage, protocol, crop, True, MEAN, STD)
    transform.set_random_seed(0)
    padded = 0
    for _ in range(20):
        out = transform(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        assert img.shape == (crop, crop, 3) and img.dtype == np.float32 and msk.shape == (crop, crop)
        valid = msk != 255
        assert set(np.unique(msk[valid])) <= {0, 7}
        # colour jitter keeps white above and black below mid-grey; resizing blurs only block edges
        agree = ((grey(img) > 127.5) == (msk == 7))[valid].mean()
        assert agree > (0.999 if stage == "cls" and protocol == "paper" else 0.9)
        pad = ~valid
        np.testing.assert_allclose(img[pad], 0.0, atol=1e-6)  # 0 after normalisation = the mean colour
        padded += int(pad.sum())
    if size[0] < crop:
        assert padded > 0


def test_smaller_image_is_padded_bottom_right_with_ignore_then_maybe_flipped() -> None:
    image, mask = pattern(20, 24)
    transform = build_transforms("seg", "paper", 32, True, MEAN, STD, seg_scales=(1.0,))
    transform.set_random_seed(0)
    flipped = set()
    for _ in range(12):
        out = transform(image=image, mask=mask)["mask"]
        left = (out[:20, :24] != 255).all()
        flipped.add(not left)
        valid = out[:20, :24] if left else out[:20, 8:]
        np.testing.assert_array_equal(valid, mask if left else mask[:, ::-1])
        assert (out == 255).sum() == 32 * 32 - 20 * 24
    assert flipped == {True, False}


def test_refine_maps_share_the_image_geometry_and_pad_with_zero() -> None:
    image, mask = pattern(28, 40)
    maps = np.zeros((28, 40, 20), np.float32)
    maps[..., 6] = mask == 7
    maps[..., 2] = 0.5
    for protocol in ("paper", "release"):
        transform = build_transforms("refine", protocol, 32, True, MEAN, STD)
        transform.set_random_seed(1)
        for _ in range(10):
            out = transform(image=image, maps=maps)
            assert out["maps"].shape == (32, 32, 20) and out["maps"].dtype == np.float32
            inside = out["maps"][..., 2] > 0.25  # the constant channel marks the non-padded area
            assert (out["maps"][~inside] == 0).all()
            agree = ((grey(out["image"]) > 127.5) == (out["maps"][..., 6] > 0.5))[inside].mean()
            assert agree > (0.999 if protocol == "paper" else 0.9)


def test_eval_only_normalises_and_infer_squashes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    out = build_transforms("eval", "paper", None, False, MEAN, STD)(image=image)["image"]
    np.testing.assert_allclose(out, (image / 255.0 - np.array(MEAN)) / np.array(STD), rtol=1e-5, atol=1e-5)
    val = build_transforms("cls", "release", 32, False, MEAN, STD)(image=image)["image"]
    assert val.shape == (30, 44, 3)
    assert build_transforms("infer", "release", 24, False, MEAN, STD)(image=image)["image"].shape == (
        24,
        24,
        3,
    )
    assert build_transforms("infer", "paper", None, False, MEAN, STD)(image=image)["image"].shape == (
        30,
        44,
        3,
    )


def test_segmenter_scales_are_the_five_deeplab_factors() -> None:
    scale = A.Compose([random_scale()])
    scale.set_random_seed(0)
    sizes = {scale(image=np.zeros((40, 40, 3), np.uint8))["image"].shape[0] for _ in range(60)}
    assert sizes == {20, 30, 40, 50, 60}


def test_release_squashes_before_cropping() -> None:
    image, mask = pattern(20, 80)  # very wide: a crop without the squash would see a 20-px-high strip only
    out = build_transforms("cls", "release", 32, True, MEAN, STD, squash_size=40)(image=image, mask=mask)
    assert (out["mask"] != 255).all()  # squashed to 40x40 first: no padding needed


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"stage='train'"):
        build_transforms("train", "paper", 32, True, MEAN, STD)
    with pytest.raises(ValueError, match=r"needs a positive crop_size"):
        build_transforms("seg", "paper", None, True, MEAN, STD)


def test_colour_jitter_is_configurable() -> None:
    def kinds(jitter):
        pipeline = build_transforms("cls", "paper", 32, True, (0.0,) * 3, (1.0,) * 3, color_jitter=jitter)
        return [type(t).__name__ for t in pipeline.transforms]

    assert "ColorJitter" in kinds((0.3, 0.3, 0.3, 0.1))
    assert "ColorJitter" not in kinds(None)  # data=toy: hue jitter would change a part's class colour
    with pytest.raises(ValueError, match=r"data.color_jitter=\[0.3, 0.3\]"):
        kinds((0.3, 0.3))


def test_release_seg_scales_resize_as_the_release_codes_do() -> None:
    """DeepLab-V2-PyTorch: cv2 linear image, PIL nearest label, sizes int(h * s); DeepLabV3Plus-Pytorch: PIL
    bilinear (uint8) image, PIL nearest label, a uniform scale."""
    import cv2
    from PIL import Image

    from wsss.data.transforms import SegScale

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, (37, 53), dtype=np.uint8)
    h, w = int(37 * 0.75), int(53 * 0.75)
    pil_label = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    out = A.Compose([SegScale([0.75], resize="cv2_pil_labels")])(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out["mask"], pil_label)
    cv2_label = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    assert (cv2_label != pil_label).mean() > 0.2  # albumentations' labels sit half a pixel off
    out = A.Compose([SegScale([0.75], resize="pil")])(image=image, mask=mask)
    np.testing.assert_array_equal(
        out["image"], np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    )
    np.testing.assert_array_equal(out["mask"], pil_label)
    span = A.Compose([SegScale(span=(0.5, 2.0), resize="pil")])
    span.set_random_seed(0)
    heights = {span(image=image, mask=mask)["image"].shape[0] for _ in range(40)}
    assert min(heights) >= 18 and max(heights) <= 74 and len(heights) > 10  # continuous, not 5 choices
    pipeline = build_transforms(
        "seg", "release", 32, True, MEAN, STD, seg_resize="pil", seg_scale_range=(0.5, 2.0)
    )
    assert [type(t).__name__ for t in pipeline.transforms][:2] == ["SegScale", "Normalize"]  # PIL needs uint8
    assert pipeline(image=image, mask=mask)["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="seg.scale_range needs seg.scale_resize"):
        build_transforms("seg", "paper", 32, True, MEAN, STD, seg_scale_range=(0.5, 2.0))
