"""Localization maps: normalisation, scale fusion, flip, the writer, resuming and checkpoint loading."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from wsss.data.figures import figure1
from wsss.data.maps_io import load_maps
from wsss.method.localization import EPS, multiscale_maps, present_class_maps, scale_sizes
from wsss.stages.maps_writer import MapPredictor, pending_indices, write_maps

NUM_CLASSES = 20


class AffineScores(nn.Module):
    """F_c = w_c * x[0] + b_c at the input resolution (stride 1), so maps can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(NUM_CLASSES)
        b = torch.zeros(NUM_CLASSES)
        w[0], b[0] = 1.0, 0.0  # class 0: x
        w[2], b[2] = 1.0, -2.5  # class 2: x - 2.5
        w[5], b[5] = 0.0, 10.0  # class 5: strong everywhere but absent from the label
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * self.w[None, :, None, None] + self.b[None, :, None, None]


class ToyInfer(torch.utils.data.Dataset):
    """The ``infer`` sample layout: image (3, H, W), label (20,), id. ``fail_at`` raises like a crash."""

    def __init__(self, n: int, size: int = 8, fail_at: int | None = None, varied: bool = False) -> None:
        self.ids = [f"img_{i:03d}" for i in range(n)]
        self.size = size
        self.fail_at = fail_at
        self.varied = varied

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        if self.fail_at is not None and i == self.fail_at:
            raise RuntimeError("simulated crash")
        g = torch.Generator().manual_seed(i)
        h = self.size + (i % 3) * 4 if self.varied else self.size
        label = torch.zeros(NUM_CLASSES)
        label[[i % 20, (i * 7 + 3) % 20]] = 1
        return {"image": torch.rand(3, h, self.size, generator=g), "label": label, "id": self.ids[i]}


def _trainer() -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )


def test_known_scores_give_hand_computed_maps_and_absent_classes_are_not_stored(tmp_path: Path) -> None:
    class One(torch.utils.data.Dataset):
        ids = ["a"]

        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> dict:
            image = torch.zeros(3, 2, 2)
            image[0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
            label = torch.zeros(NUM_CLASSES)
            label[[0, 2]] = 1
            return {"image": image, "label": label, "id": "a"}

    counts = write_maps(
        _trainer(), MapPredictor(AffineScores(), scales=[1.0]), One(), tmp_path, dtype="float16"
    )
    assert counts == {"images": 1, "skipped": 0, "written": 1}
    classes, maps = load_maps(tmp_path / "a.npz")
    assert classes.tolist() == [0, 2]  # class 5 scores 10 everywhere but is not in the label
    expected0 = np.array([[1, 2], [3, 4]]) / (4 + EPS)
    expected2 = np.array([[0, 0], [0.5, 1.5]]) / (1.5 + EPS)
    np.testing.assert_allclose(maps[0], expected0, atol=1e-3)
    np.testing.assert_allclose(maps[1], expected2, atol=1e-3)


def test_uint8_maps_are_scaled_by_255(tmp_path: Path) -> None:
    ds = ToyInfer(1)
    write_maps(_trainer(), MapPredictor(AffineScores()), ds, tmp_path, dtype="uint8")
    with np.load(tmp_path / "img_000.npz") as data:
        assert data["maps"].dtype == np.uint8 and data["maps"].max() == 255


def test_scale_sizes_relative_and_absolute() -> None:
    assert scale_sizes([256, 0.5, 1.0], (100, 200)) == [(256, 256), (50, 100), (100, 200)]
    with pytest.raises(ValueError, match="maps.scales"):
        scale_sizes([], (10, 10))
    with pytest.raises(ValueError, match="positive"):
        scale_sizes([-1.0], (10, 10))


class WidthDependent(nn.Module):
    """4x4 output whatever the input: width 4 -> ones with column 0 = 2; width 8 -> tens with column 3 = 20."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ones(x.shape[0], NUM_CLASSES, 4, 4)
        if x.shape[-1] == 4:
            out[..., 0] = 2.0
        else:
            out = out * 10
            out[..., 3] = 20.0
        return out


def test_each_scale_is_normalised_by_its_own_max_then_fused_by_max() -> None:
    maps = multiscale_maps(WidthDependent(), torch.zeros(1, 3, 4, 4), scales=[1.0, 2.0])
    row = maps[0, 0, 0].numpy()
    # scale 1: [2, 1, 1, 1] / 2; scale 2: [10, 10, 10, 20] / 20; max -> [1, .5, .5, 1]
    np.testing.assert_allclose(row, [2 / (2 + EPS), 0.5, 0.5, 20 / (20 + EPS)], atol=1e-5)


class LeftBump(nn.Module):
    """Scores 1 everywhere plus 3 in the leftmost column, whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ones(x.shape[0], NUM_CLASSES, *x.shape[-2:])
        out[..., 0] += 3.0
        return out


def test_flip_adds_the_mirrored_view() -> None:
    images = torch.zeros(1, 3, 2, 4)
    plain = multiscale_maps(LeftBump(), images, flip=False)[0, 0, 0].numpy()
    flipped = multiscale_maps(LeftBump(), images, flip=True)[0, 0, 0].numpy()
    np.testing.assert_allclose(plain, [1, 0.25, 0.25, 0.25], atol=1e-4)
    np.testing.assert_allclose(flipped, [1, 0.25, 0.25, 1], atol=1e-4)


def test_labels_zero_absent_classes() -> None:
    labels = torch.zeros(1, NUM_CLASSES)
    labels[0, 3] = 1
    maps = multiscale_maps(LeftBump(), torch.zeros(1, 3, 2, 4), labels=labels)
    assert maps[0, 3].max() > 0.99 and maps[0, torch.arange(NUM_CLASSES) != 3].abs().max() == 0


def test_present_class_maps_equal_the_dense_maps_of_present_classes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 3, padding=1)
    )
    images = torch.randn(3, 3, 24, 32)
    labels = torch.zeros(3, NUM_CLASSES)
    labels[0, [1, 7]] = 1
    labels[2, 19] = 1  # image 1 has no class
    with torch.no_grad():
        dense = multiscale_maps(net, images, [0.75, 40], flip=True, labels=labels)
        per_image = present_class_maps(net, images, labels, [0.75, 40], flip=True)
    assert [p.tolist() for p, _ in per_image] == [[1, 7], [], [19]]
    for i, (present, maps) in enumerate(per_image):
        assert maps.shape == (len(present), 24, 32)
        torch.testing.assert_close(maps, dense[i, present])
    assert float(dense[0, 1].max()) == pytest.approx(1.0, abs=1e-4)


def test_images_of_different_sizes_are_written_at_their_size(tmp_path: Path) -> None:
    ds = ToyInfer(5, size=8, varied=True)
    write_maps(_trainer(), MapPredictor(AffineScores()), ds, tmp_path, batch_size=5, writer_threads=0)
    for i, image_id in enumerate(ds.ids):
        classes, maps = load_maps(tmp_path / f"{image_id}.npz")
        assert maps.shape == (2, 8 + (i % 3) * 4, 8)
        assert sorted(classes.tolist()) == sorted({i % 20, (i * 7 + 3) % 20})


def test_killed_run_resumed_equals_a_clean_run(tmp_path: Path) -> None:
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(7), clean, batch_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(7, fail_at=5), resumed, batch_size=2)
    done = sorted(p.name for p in resumed.glob("*.npz"))
    assert done == [f"img_{i:03d}.npz" for i in range(4)]  # batches [0,1] and [2,3] made it
    mtimes = {name: (resumed / name).stat().st_mtime_ns for name in done}
    counts = write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(7), resumed, batch_size=2)
    assert counts == {"images": 7, "skipped": 4, "written": 3}
    assert {name: (resumed / name).stat().st_mtime_ns for name in done} == mtimes  # not rewritten
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in clean.iterdir())
    for path in clean.glob("*.npz"):
        with np.load(path) as a, np.load(resumed / path.name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    assert write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(7), resumed)["written"] == 0


def test_overwrite_rewrites_everything(tmp_path: Path) -> None:
    write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(3), tmp_path)
    assert pending_indices(["img_000", "img_001", "img_002", "x"], tmp_path) == [3]
    assert (
        write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(3), tmp_path, overwrite=True)["written"]
        == 3
    )


def test_bad_dtype_is_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="maps dtype='int8'.*uint8, float16"):
        write_maps(_trainer(), MapPredictor(AffineScores()), ToyInfer(1), tmp_path, dtype="int8")


def test_a_checkpoint_rebuilds_its_own_network(tmp_path: Path) -> None:
    from wsss.errors import CorruptArtifactError, MissingArtifactError
    from wsss.models.checkpoint import load_network

    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1}
    net = nn.Conv2d(3, 2, 1)
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"network": spec}}, tmp_path / "best.ckpt")
    rebuilt = load_network(tmp_path / "best.ckpt")
    assert isinstance(rebuilt, nn.Conv2d) and not rebuilt.training
    assert torch.equal(rebuilt.weight, net.weight.detach())
    torch.save({"state_dict": state, "hyper_parameters": {}}, tmp_path / "old.ckpt")
    with pytest.raises(CorruptArtifactError, match="records no network spec.*force=true"):
        load_network(tmp_path / "old.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "best.ckpt").read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="cut.ckpt: not a readable checkpoint"):
        load_network(tmp_path / "cut.ckpt")
    with pytest.raises(MissingArtifactError, match="run the stage that writes it"):
        load_network(tmp_path / "missing.ckpt")


class FigureData:
    ids = ["a", "b"]

    def image(self, i: int) -> np.ndarray:
        return np.full((20, 30, 3), 40 * (i + 1), dtype=np.uint8)


def test_figure1_has_one_column_per_existing_map_folder(tmp_path: Path) -> None:
    from PIL import Image

    from wsss.data.maps_io import save_maps

    cam, drs = tmp_path / "cam", tmp_path / "drs"
    save_maps(cam / "a.npz", np.array([1]), np.ones((1, 10, 15)))
    save_maps(drs / "a.npz", np.array([1]), np.ones((1, 20, 30)))
    dirs = {"CAM": cam, "DRS": drs, "DRS†": tmp_path / "absent"}
    png = figure1(["a", "b"], FigureData(), dirs, tmp_path / "fig" / "figure1.png", cell=50)
    with Image.open(png) as img:
        assert img.size == (3 * 50, 18 + 2 * 50)  # image | CAM | DRS; two rows
        pixels = np.asarray(img.convert("RGB"))
    assert tuple(pixels[18 + 50 + 5, 50 + 5]) == (128, 128, 128)  # "b" has no CAM maps: grey panel
    with pytest.raises(KeyError, match="not in the dataset"):
        figure1(["zzz"], FigureData(), dirs, tmp_path / "f.png")


class EvalData:
    """Stand-in for VOCDataset on the eval split: three of ToyInfer's ids, masks from the first class."""

    def __init__(self) -> None:
        self.ids = ["img_000", "img_002", "img_004"]
        self.source = ToyInfer(6)

    def mask(self, i: int) -> np.ndarray:
        index = int(self.ids[i][-3:])
        sample = self.source[index]
        cls = int(torch.nonzero(sample["label"])[0]) + 1
        return np.where(sample["image"][0].numpy() > 0.5, cls, 0)

    def image(self, i: int) -> np.ndarray:
        return np.zeros((8, 8, 3), np.uint8)


@pytest.fixture
def stage_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import wsss.stages.maps as stage
    from conftest import compose_config
    from wsss.pipeline.artifacts import Experiment

    cfg = compose_config(
        [
            "stage=maps",
            "exp=e",
            "logger=csv",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "maps.batch_size=2",
            "maps.figure_images=2",
            "drs=off",
        ],
        runs=tmp_path / "runs",
    )
    seen = {}

    def fake_net(path: Path) -> nn.Module:
        seen["checkpoint"] = path
        return AffineScores()

    monkeypatch.setattr(stage, "load_network", fake_net)
    monkeypatch.setattr(stage, "infer_dataset", lambda cfg, split, infer_size: ToyInfer(6))
    monkeypatch.setattr(stage, "VOCDataset", lambda root, split: EvalData())
    return cfg, Experiment(tmp_path / "runs" / "e", runs=tmp_path / "runs"), seen


def test_maps_stage_writes_maps_metrics_figure_and_marker(stage_env) -> None:
    import json

    from conftest import finish_as_made, run_stage
    from wsss.errors import ArtifactMismatchError, MissingArtifactError

    cfg, exp, seen = stage_env
    with pytest.raises(MissingArtifactError, match="stage=cls"):
        run_stage(cfg)
    (exp.stage_dir("cls") / "checkpoints").mkdir(parents=True)
    (exp.stage_dir("cls") / "checkpoints" / "best.ckpt").write_bytes(b"stand-in")
    finish_as_made(cfg, "cls")
    metrics = run_stage(cfg)
    out = exp.stage_dir("maps_cls")
    assert seen["checkpoint"] == exp.stage_dir("cls") / "checkpoints" / "best.ckpt"
    assert sorted(p.name for p in out.glob("*.npz")) == [f"img_{i:03d}.npz" for i in range(6)]
    assert (out / ".complete").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["images"] == 6 and metrics["skipped"] == 0 and metrics["seed_images"] == 3
    assert {"best_threshold", "miou", "precision", "recall"} <= set(metrics)
    assert 0.0 <= metrics["best_threshold"] <= 0.95 and isinstance(metrics["best_threshold_at_edge"], bool)
    assert len((out / "seed_sweep.csv").read_text().splitlines()) == 21  # header + 0, 0.05 .. 0.95
    assert (exp.root / "figures" / "figure1.png").is_file()
    logged = (exp.root / "logs" / "maps_cls" / "version_0" / "metrics.csv").read_text()
    assert "maps_cls/miou" in logged
    (out / ".complete").unlink()  # killed before the end: a rerun resumes, nothing left to write
    again = run_stage(cfg)
    assert again["skipped"] == 6 and again["miou"] == metrics["miou"]
    cfg.maps.flip = True  # other settings must not silently resume over these maps
    with pytest.raises(
        ArtifactMismatchError, match=r"(?s)maps_cls: maps.flip: made with False, now True.*force=true"
    ):
        run_stage(cfg)
    cfg.force = True
    assert run_stage(cfg)["skipped"] == 0


def _made_classifier(cfg, exp) -> None:
    from conftest import finish_as_made

    (exp.stage_dir("cls") / "checkpoints").mkdir(parents=True)
    (exp.stage_dir("cls") / "checkpoints" / "best.ckpt").write_bytes(b"stand-in")
    finish_as_made(cfg, "cls")


def test_a_truncated_maps_file_is_named_and_remade_when_the_stage_resumes(stage_env) -> None:
    """Finding 2: a maps file cut in half crashed its readers unnamed (zipfile.BadZipFile), and a rerun
    of stage=maps kept it and marked the stage complete over it."""
    from conftest import run_stage
    from wsss.data.maps_io import maps_file_problem
    from wsss.errors import CorruptArtifactError

    cfg, exp, _ = stage_env
    _made_classifier(cfg, exp)
    first = run_stage(cfg)
    out = exp.stage_dir("maps_cls")
    cut = out / "img_002.npz"
    good = cut.read_bytes()
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        CorruptArtifactError, match=r"img_002\.npz: not a readable maps file .*rerun the maps stage"
    ):
        load_maps(cut)
    (out / ".complete").unlink()  # left by a killed run: the rerun resumes
    again = run_stage(cfg)
    assert again["skipped"] == 5  # the damaged file was made again, the five sound ones kept
    assert maps_file_problem(cut) is None and cut.read_bytes() == good
    assert again["miou"] == first["miou"] and exp.is_complete("maps_cls")


@pytest.mark.parametrize(
    ("classes", "maps", "problem"),
    [
        (np.array([3, 3], np.int16), np.zeros((2, 4, 4), np.uint8), "class ids [3, 3] repeat"),
        (np.array([25], np.int16), np.zeros((1, 4, 4), np.uint8), "class ids [25] outside 0..19"),
        (np.array([1], np.int16), np.full((1, 4, 4), np.nan, np.float32), "maps hold NaN or infinite values"),
        (np.array([1], np.int16), np.zeros((1, 4, 4), np.int32), "maps stored as int32"),
        (np.array([1, 2], np.int16), np.zeros((1, 4, 4), np.uint8), "maps of shape (1, 4, 4) for 2 classes"),
    ],
)
def test_maps_files_are_checked_on_read(tmp_path: Path, classes, maps, problem: str) -> None:

    from wsss.errors import CorruptArtifactError

    path = tmp_path / "x.npz"
    np.savez_compressed(path, classes=classes, maps=maps)
    with pytest.raises(CorruptArtifactError, match=re.escape(f"x.npz: {problem}")):
        load_maps(path)


def test_a_prediction_limit_never_marks_the_maps_stage_complete(stage_env) -> None:
    """Finding 6: debug=limit on stage=maps wrote .complete with 256 of 300 maps."""
    from conftest import run_stage
    from wsss.errors import ConfigError

    cfg, exp, _ = stage_env
    _made_classifier(cfg, exp)
    cfg.trainer.limit_predict_batches = 1  # what debug=limit sets (8 batches there)
    with pytest.raises(ConfigError, match=r"maps_cls: 4 of 6 images got no maps .*limit_predict_batches=1"):
        run_stage(cfg)
    assert not exp.is_complete("maps_cls") and len(list(exp.stage_dir("maps_cls").glob("*.npz"))) == 2
