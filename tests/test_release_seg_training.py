"""The release's segmenter training under wsss's seg stage: DeepLab-V2's poly-every-10, two-term loss on
the MSC outputs, batch x accumulation and test-time fusion; DeepLab-V3+'s recipe, one step, SyncBN."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import compose_config, finish_as_made, run_stage
from wsss.tasks.segmentation import SegmenterTask, poly_factor

# ------------------------------------------------------------------ test-only re-creations of the release


def release_poly_lrs(
    base: float, iter_max: int, power: float, step_size: int, iterations: int
) -> list[float]:
    """The lr each 1-based iteration runs at under DeepLab-V2-PyTorch's ``PolynomialLR``: after every
    update ``scheduler.step(epoch=iteration)`` sets ``base * (1 - iteration / iter_max) ** power`` when the
    iteration is a multiple of ``step_size`` (and > 0, <= iter_max), else keeps the current lr."""
    lr, out = base, []
    for iteration in range(1, iterations + 1):
        out.append(lr)
        if iteration % step_size == 0 and iteration <= iter_max:
            lr = base * (1 - iteration / iter_max) ** power
    return out


def release_resize_labels(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``main.py``'s ``resize_labels``: float label image, PIL nearest, back to long."""
    out = [
        np.asarray(Image.fromarray(lab.float().numpy()).resize((w, h), resample=Image.NEAREST))
        for lab in labels
    ]
    return torch.LongTensor(np.stack(out))


def release_loss(logits: list[torch.Tensor], labels: torch.Tensor, cls_labels: torch.Tensor) -> torch.Tensor:
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    iter_loss = 0
    for logit in logits:
        _, _, h, w = logit.shape
        labels_ = release_resize_labels(labels, h, w)
        pseudo = (logit.detach() * cls_labels[:, :, None, None]).argmax(dim=1)
        iter_loss += criterion(logit, labels_) + criterion(logit, pseudo)
    return iter_loss


# ------------------------------------------------------------------------------------------- formulas


def test_poly_every_10_steps_is_the_release_s_polynomial_lr() -> None:
    release = release_poly_lrs(2.5e-4, 20000, 0.9, 10, 20000)
    factor = poly_factor(20000, 0.9, step=10)
    ours = [2.5e-4 * factor(s) for s in range(20000)]  # optimizer step s = iteration s + 1
    assert max(abs(a - b) for a, b in zip(ours, release, strict=True)) < 1e-12
    assert ours[9] == 2.5e-4 and ours[10] == pytest.approx(2.5e-4 * (1 - 10 / 20000) ** 0.9, rel=1e-12)
    assert poly_factor(100, 0.9, step=1)(37) == (1 - 37 / 100) ** 0.9  # wsss's default: every step


class FixedOutputs(nn.Module):
    """Returns hand-set logits, as the multi-scale wrapper does in training (full, 0.5, 0.75, max)."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = nn.ParameterList(nn.Parameter(o.clone()) for o in outputs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.outputs)


def test_release_v2_loss_of_a_training_step_on_hand_built_outputs() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [(12, 12), (6, 6), (9, 9), (12, 12)]  # full, 0.5, 0.75, max of a 96 px crop at stride 8
    outputs = [torch.randn(2, 21, h, w, generator=g) * 3 for h, w in sizes]
    labels = torch.randint(0, 21, (2, 96, 96), generator=g)
    labels[:, :20] = 255
    image_labels = torch.zeros(2, 20)
    image_labels[0, [4, 11]] = 1
    image_labels[1, 0] = 1
    cls21 = torch.cat([torch.ones(2, 1), image_labels], dim=1)
    expected = release_loss(outputs, labels, cls21)
    task = SegmenterTask(FixedOutputs(outputs), loss="release_v2")
    task.log = lambda *a, **k: None  # no trainer attached
    batch = {"image": torch.zeros(2, 3, 96, 96), "mask": labels, "label": image_labels}
    got = task.training_step(batch, 0)
    assert abs(float(got.detach()) - float(expected.detach())) <= 1e-6 * float(expected.detach())
    assert float(expected.detach()) > 4 * 2  # two cross-entropies of four outputs, none trivially small
    got.backward()  # gradients reach every output
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.outputs)
    with pytest.raises(ValueError, match="needs the image labels"):
        task.training_step({"image": batch["image"], "mask": labels}, 0)


# ----------------------------------------------------------------------------- through the seg stage


def _toy_seg_config(tmp_path: Path, overrides: list[str]):
    from wsss.data.palette import save_mask
    from wsss.data.toy import ensure_toy
    from wsss.data.voc import VOCDataset

    runs = tmp_path / "runs"
    cfg = compose_config(
        [
            "stage=seg",
            "exp=s",
            "logger=none",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            *overrides,
            "data=toy",
            "data.toy.num_train=6",
            "data.toy.num_val=2",
            "data.toy.num_test=1",
            "data.toy.size=64",
            "data.num_workers=0",
            "seg.val_every_n_steps=null",
            "trainer.limit_val_batches=0",
        ],
        runs=runs,
    )
    ensure_toy(cfg.data)
    voc = VOCDataset(cfg.data.root, cfg.data.maps_split)
    pseudo = runs / "s" / "pseudo"
    for i, image_id in enumerate(voc.ids):  # ground truth as pseudo labels, with an ignored band
        mask = voc.mask(i).copy()
        mask[:6] = 255
        save_mask(pseudo / f"{image_id}.png", mask)
    finish_as_made(cfg, "pseudo")
    return cfg, voc


def test_seg_stage_trains_deeplabv2_as_the_release_and_tests_with_its_fusion(tmp_path: Path) -> None:
    from wsss.method.inference import predict_probs
    from wsss.models.checkpoint import load_network
    from wsss.stages.seg import build_datamodule

    cfg, voc = _toy_seg_config(
        tmp_path, ["protocol=release", "segmenter=largefov_tiny", "seg.max_steps=2", "seg.lr=0.01"]
    )
    assert (cfg.seg.loss, cfg.seg.poly_step, cfg.seg.accumulate, cfg.seg.scale_resize) == (
        "release_v2",
        10,
        2,
        "cv2_pil_labels",
    )
    dm = build_datamodule(cfg, tmp_path / "runs" / "s" / "pseudo")
    dm.setup("fit")
    sample = dm.train_set[0]
    assert set(sample) == {"image", "mask", "label", "id"} and sample["label"].shape == (20,)
    metrics = run_stage(cfg)
    assert (metrics["steps"], metrics["accumulate"]) == (2, 2)
    ckpt = torch.load(tmp_path / "runs" / "s" / "seg" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["loss"] == "release_v2" and ckpt["hyper_parameters"]["poly_step"] == 10
    assert ckpt["hyper_parameters"]["network"]["_target_"] == "wsss.models.deeplabv2.MultiScaleInputs"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())

    # the release's test: MSC max of the logits at 1, 0.5, 0.75, upsampled to the image, softmax, argmax
    net = load_network(tmp_path / "runs" / "s" / "seg" / "checkpoints" / "best.ckpt")
    base = net.base.eval()
    x = torch.randn(1, 3, 61, 75, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = base(x)
        scaled = [
            base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in (0.5, 0.75)
        ]
        up = [F.interpolate(o, size=full.shape[2:], mode="bilinear", align_corners=False) for o in scaled]
        fused = torch.max(torch.stack([full, *up]), dim=0)[0]
        logits = F.interpolate(fused, size=(61, 75), mode="bilinear", align_corners=False)
        expected = torch.argmax(F.softmax(logits, dim=1), dim=1)[0]
        probs = predict_probs(net, x)
    torch.testing.assert_close(probs, F.softmax(logits, dim=1)[0], rtol=0, atol=1e-6)
    assert torch.equal(probs.argmax(0), expected)


def test_release_v3plus_recipe_and_one_training_step_through_the_seg_stage(tmp_path: Path) -> None:
    recipe = compose_config(["experiment=release_v3plus"], runs=tmp_path)
    s = recipe.seg
    assert (
        recipe.segmenter._target_ == "wsss.models.deeplabv3plus.DeepLabV3Plus"
        and recipe.segmenter.output_stride == 16
    )
    assert (s.loss, s.multi_scale_inputs, s.lr, s.momentum, s.weight_decay, s.poly_power, s.poly_step) == (
        "ce",
        False,
        0.05,
        0.9,
        1e-4,
        0.9,
        1,
    )
    assert (s.max_steps, s.batch_size, s.accumulate, s.crop_size, list(s.scale_range), s.scale_resize) == (
        20000,
        32,
        1,
        513,
        [0.5, 2.0],
        "pil",
    )
    assert (s.precision, s.sync_batchnorm) == ("16-mixed", True)

    # one step on toy data (CPU: fp32, ResNet-50 for speed, a 48 px crop, batch 2: BN needs two images)
    cfg, _ = _toy_seg_config(
        tmp_path,
        [
            "experiment=release_v3plus",
            "segmenter.depth=50",
            "seg.max_steps=1",
            "seg.batch_size=2",
            "seg.crop_size=48",
            "seg.precision=null",
        ],
    )
    from wsss.models.networks import build, segmenter_spec

    before = build(segmenter_spec(cfg)).state_dict()
    metrics = run_stage(cfg)
    assert metrics["steps"] == 1
    ckpt = torch.load(tmp_path / "runs" / "s" / "seg" / "checkpoints" / "best.ckpt", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert list(state) == list(before)
    assert [g["weight_decay"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [1e-4, 1e-4]
    # the release's groups: backbone at lr x 0.1, head at lr, weight decay on everything
    assert [g["initial_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == pytest.approx(
        [0.005, 0.05]
    )
    assert int(state["backbone.bn1.num_batches_tracked"]) == 1  # BatchNorm in training mode for one batch


def test_sync_batchnorm_under_ddp_for_deeplabv3plus_only(tmp_path: Path) -> None:
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
    from lightning.pytorch.strategies import DDPStrategy

    from conftest import make_segmenter
    from wsss.models.deeplabv3plus import DeepLabV3Plus
    from wsss.stages.seg import trainer_settings
    from wsss.tasks.trainer import build_trainer

    ddp = trainer_settings(compose_config(["experiment=release_v3plus", "trainer=ddp"], runs=tmp_path))
    assert (ddp.trainer.strategy, ddp.trainer.sync_batchnorm, ddp.trainer.precision) == (
        "ddp",
        True,
        "16-mixed",
    )
    # the same on CPU processes (no GPU needed to build it): Lightning's layer sync converts BN to SyncBN
    sim = compose_config(
        ["experiment=release_v3plus", "trainer=ddp_sim", "seg.precision=null"], runs=tmp_path
    )
    trainer = build_trainer(trainer_settings(sim), "seg", tmp_path / "seg", logger=False, checkpoint=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)
    net = trainer.strategy._layer_sync.apply(DeepLabV3Plus(num_classes=21, depth=50))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in net.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in DeepLabV3Plus(num_classes=21, depth=50).modules()
    )
    assert not any(
        isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm) for m in net.modules()
    )
    v2 = trainer.strategy._layer_sync.apply(make_segmenter("aspp_r101", backbone__depth=50))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in v2.modules())  # frozen BN stays frozen
    release = trainer_settings(compose_config(["experiment=release", "trainer=ddp_sim"], runs=tmp_path))
    assert not release.trainer.get("sync_batchnorm")  # DeepLab-V2: BN frozen, nothing to synchronise
    assert math.isclose(float(release.seg.lr), 2.5e-4)
