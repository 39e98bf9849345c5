"""Localization-map throughput: batched under inference_mode vs one image at a time with autograd on.

The release computes maps image by image without inference mode; wsss batches images under
``torch.inference_mode``. Both run here in one process on the same model, input size and scales
(release: squash to 320, scales 256/320/384, fused by max). Rows: one at a time with autograd (all 20
classes upsampled, as the release); batched under inference mode, all 20 classes; batched, only the
present classes (what the stage runs); the whole stage path (``write_maps``: Lightning predict,
uint8 .npz writes). Each image has one class, as most VOC images. Results: bench/results/maps.json.

    python bench/bench_maps.py [--backbone tiny|vgg16] [--images 24] [--batch-size 8] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from timing import interleaved_rates
from torch import nn

from wsss.maps import multiscale_maps, present_class_maps, write_maps

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 20


def stand_in() -> nn.Module:
    """A small output-stride-8 network, used when wsss.models.classifier is unavailable."""
    layers: list[nn.Module] = []
    ch = 3
    for out, stride in ((32, 2), (64, 2), (64, 2), (128, 1)):
        layers += [nn.Conv2d(ch, out, 3, stride=stride, padding=1), nn.ReLU()]
        ch = out
    return nn.Sequential(*layers, nn.Conv2d(ch, NUM_CLASSES, 1))


def build_model(backbone: str) -> tuple[nn.Module, str]:
    from omegaconf import OmegaConf

    try:
        from wsss.models.classifier import build_classifier
    except ImportError:
        return stand_in(), "stand-in stride-8 convnet (wsss.models.classifier not available)"
    backbone_cfg = OmegaConf.create({"name": backbone, "weights": None})
    drs_cfg = OmegaConf.create(
        {"mode": "learnable", "delta": 0.55, "placement": [f"layer{i}" for i in range(1, 7)]}
    )
    return build_classifier(backbone_cfg, drs_cfg, NUM_CLASSES), f"{backbone} classifier, learnable DRS"


class Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.ids = [f"b{i:05d}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "id": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--scales", type=float, nargs="+", default=[256, 320, 384])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the fastest counts")
    parser.add_argument("--out", type=Path, default=RESULTS / "maps.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model, model_desc = build_model(args.backbone)
    model = model.to(device).eval()
    images = torch.randn(args.images, 3, args.size, args.size)
    labels = torch.zeros(args.images, NUM_CLASSES)
    labels[torch.arange(args.images), torch.arange(args.images) % NUM_CLASSES] = 1

    def one_at_a_time() -> None:  # the release's way: batch 1, autograd on, all 20 classes
        for i in range(args.images):
            x = images[i : i + 1].to(device)
            multiscale_maps(model, x, args.scales, labels=labels[i : i + 1].to(device)).detach().cpu().numpy()

    def batched_dense() -> None:  # batching and inference mode alone: all 20 classes upsampled
        with torch.inference_mode():
            for start in range(0, args.images, args.batch_size):
                x = images[start : start + args.batch_size].to(device)
                y = labels[start : start + args.batch_size].to(device)
                multiscale_maps(model, x, args.scales, labels=y).cpu().numpy()

    def batched() -> None:  # what the stage runs: only present classes upsampled and normalised
        with torch.inference_mode():
            for start in range(0, args.images, args.batch_size):
                x = images[start : start + args.batch_size].to(device)
                y = labels[start : start + args.batch_size].to(device)
                for _, maps in present_class_maps(model, x, y, args.scales):
                    maps.cpu().numpy()

    def stage_path() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = pl.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu",
                devices=1,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            write_maps(trainer, model, Images(images, labels), tmp, args.scales, batch_size=args.batch_size)

    with torch.inference_mode():  # warm-up (allocator, cuDNN autotuning)
        multiscale_maps(model, images[: args.batch_size].to(device), args.scales)
    variants = {
        "one_at_a_time_autograd": one_at_a_time,
        "batched_inference_mode_dense": batched_dense,
        "batched_inference_mode": batched,
        "write_maps_stage_path": stage_path,
    }
    rows = interleaved_rates(variants, args.repeat, args.images, device)
    speedup = rows["batched_inference_mode"]["images_per_s"] / rows["one_at_a_time_autograd"]["images_per_s"]
    result = {
        "model": model_desc,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "images": args.images,
        "input": f"{args.size}x{args.size}",
        "scales": args.scales,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "results": rows,
        "speedup_batched_vs_one_at_a_time": round(speedup, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
