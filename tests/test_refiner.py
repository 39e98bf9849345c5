"""The refinement task (DRS-dagger): target, loss, schedule, checkpoint keys, the stage on toy data."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from wsss.models.checkpoint import network_state, read_checkpoint
from wsss.tasks.refinement import PAPER_ADAM, RefinerTask, keep_top_class

NUM_CLASSES = 20


def tiny_net() -> nn.Module:
    """Output stride 2, like the real network's stride 8 in miniature."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, NUM_CLASSES, 1))


class ToyMaps(torch.utils.data.Dataset):
    """Images with a bright square; the map of one class is 1 on the square (0.5 for a second class)."""

    def __init__(self, n: int = 4, size: int = 32) -> None:
        self.samples = []
        g = torch.Generator().manual_seed(1)
        for i in range(n):
            image = torch.rand(3, size, size, generator=g) * 0.2
            maps = torch.zeros(NUM_CLASSES, size, size)
            y, x = 4 + 4 * i, 6 + 3 * i
            image[:, y : y + 12, x : x + 12] += 1.0
            maps[i % 3, y : y + 12, x : x + 12] = 1.0
            maps[10, y : y + 12, x : x + 12] = 0.5
            self.samples.append({"image": image, "maps": maps, "label": (maps.amax((1, 2)) > 0).float()})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def _loss(task: RefinerTask, data: ToyMaps) -> float:
    task.eval()
    with torch.no_grad():
        return sum(
            float(nn.functional.mse_loss(task(s["image"][None]), s["maps"][None])) for s in data
        ) / len(data)


def _fit(task: RefinerTask, data: ToyMaps, epochs: int, root: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        enable_checkpointing=False,
    )
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=2, shuffle=True))
    return trainer


def test_keep_top_class_by_hand() -> None:
    maps = torch.tensor([[[0.2, 0.9]], [[0.7, 0.1]], [[0.0, 0.0]]])[None]  # (1, 3, 1, 2)
    top = keep_top_class(maps)
    assert top[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.7, 0.0])
    assert top[0, :, 0, 1].tolist() == pytest.approx([0.9, 0.0, 0.0])


def test_output_is_upsampled_to_the_input_size() -> None:
    task = RefinerTask(tiny_net())
    assert task(torch.zeros(2, 3, 30, 22)).shape == (2, NUM_CLASSES, 30, 22)


def test_refiner_overfits_toy_maps(tmp_path: Path) -> None:
    data = ToyMaps()
    task = RefinerTask(tiny_net(), optimizer={**PAPER_ADAM, "lr": 1e-2}, lr_steps=[100])
    before = _loss(task, data)
    _fit(task, data, epochs=40, root=tmp_path)
    after = _loss(task, data)
    assert after < 0.25 * before, (before, after)


def test_release_target_keeps_only_the_top_class(tmp_path: Path) -> None:
    sample = ToyMaps(1)[0]
    task = RefinerTask(tiny_net(), top_class_only=True)
    target = task.target(sample["maps"][None])
    assert target[0, 10].max() == 0  # the 0.5 class loses to the 1.0 class on the square
    assert target[0, 0].max() == 1
    assert RefinerTask(tiny_net()).target(sample["maps"][None])[0, 10].max() == 0.5


def test_lr_steps_per_epoch_and_checkpoint_keys_load_into_the_net(tmp_path: Path) -> None:
    task = RefinerTask(tiny_net(), optimizer={**PAPER_ADAM, "lr": 1e-3}, lr_steps=[1], lr_gamma=0.1)
    trainer = _fit(task, ToyMaps(2), epochs=2, root=tmp_path)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4)
    trainer.save_checkpoint(tmp_path / "best.ckpt")
    state = network_state(read_checkpoint(tmp_path / "best.ckpt"))  # weights_only=True: plain hyperparameters
    net = tiny_net()
    net.load_state_dict(state)
    assert torch.equal(net[0].weight, task.model[0].weight)


def test_maps_of_another_size_are_rejected() -> None:
    task = RefinerTask(tiny_net())
    batch = {"image": torch.zeros(1, 3, 16, 16), "maps": torch.zeros(1, NUM_CLASSES, 8, 8)}
    with pytest.raises(ValueError, match="differ in size"):
        task.training_step(batch, 0)


def test_maps_refine_maps_on_toy_data(tmp_path: Path) -> None:
    """cls checkpoint (untrained tiny classifier) -> stage maps -> stage refine -> stage maps (refine)."""
    import json

    from conftest import compose_config, finish_as_made, run_stage
    from wsss.data.maps_io import load_maps
    from wsss.models.networks import build, classifier_spec
    from wsss.pipeline.artifacts import Experiment

    cfg = compose_config(
        [
            "exp=toy",
            "data=toy",
            "backbone=tiny",
            "drs=learnable",
            "logger=csv",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            "data.toy.num_train=8",
            "data.toy.num_val=2",
            "data.toy.num_test=1",
            "refine.epochs=2",
            "maps.figure_images=2",
        ],
        runs=tmp_path / "runs",
    )
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    torch.manual_seed(0)
    spec = classifier_spec(cfg)
    classifier = build(spec)
    ckpt_dir = exp.stage_dir("cls") / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    state = {f"model.{k}": v for k, v in classifier.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"network": spec}}, ckpt_dir / "best.ckpt")
    finish_as_made(cfg, "cls")

    cfg.stage, cfg.maps.source = "maps", "cls"
    seeds = run_stage(cfg)
    assert seeds["images"] == 8 and seeds["seed_images"] == 8
    classes, maps = load_maps(
        exp.stage_dir("maps_cls")
        / f"{sorted(p.stem for p in exp.stage_dir('maps_cls').glob('*.npz'))[0]}.npz"
    )
    side = cfg.data.toy.size
    assert maps.shape[1:] == (side, side) and maps.shape[0] == len(classes) >= 1  # paper: original size

    cfg.stage = "refine"
    metrics = run_stage(cfg)
    assert metrics["epochs"] == 2 and metrics["top_class_only"] is False and np.isfinite(metrics["loss"])
    assert (exp.stage_dir("refine") / "checkpoints" / "best.ckpt").is_file() and exp.is_complete("refine")

    cfg.stage, cfg.maps.source = "maps", "refine"
    refined = run_stage(cfg)
    assert refined["images"] == 8 and exp.is_complete("maps_refine")
    assert json.loads((exp.stage_dir("maps_refine") / "metrics.json").read_text()) == refined
    assert (exp.root / "figures" / "figure1.png").is_file()
