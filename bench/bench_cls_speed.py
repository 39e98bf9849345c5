"""Classifier training-step speed: contiguous (NCHW) vs channels_last (NHWC) memory format.

One training step = forward, multi-label soft-margin loss on GAP(F), backward, SGD step, as the
``cls`` stage runs it. Models: the VGG-16 classifier with learnable DRS on all six layers (batch 2 at
321 px by default) and the tiny one (batch 8 at 96 px). Rounds are interleaved so load changes on a
shared machine hit every variant; the fastest round counts. ``--compile`` adds torch.compile variants.
Results: bench/results/cls_speed.json; the faster format is the default of ``cls.channels_last``.

    python bench/bench_cls_speed.py [--device cpu|cuda] [--repeat 3] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timing import timed

from wsss.drs import LAYERS
from wsss.models.classifier import build_classifier

RESULTS = Path(__file__).resolve().parent / "results"


def make_step(
    backbone: dict, batch: int, size: int, channels_last: bool, compile_: bool, device: torch.device
):
    """A closure running one training step of a freshly built classifier."""
    torch.manual_seed(0)
    drs = OmegaConf.create({"mode": "learnable", "delta": 0.55, "placement": list(LAYERS)})
    model = build_classifier(OmegaConf.create(backbone), drs, 20).to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = (torch.rand(batch, 20, device=device) < 0.1).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.multilabel_soft_margin_loss(net(images).mean(dim=(2, 3)), labels)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds; the fastest counts")
    parser.add_argument("--vgg-size", type=int, default=321)
    parser.add_argument("--vgg-batch", type=int, default=2)
    parser.add_argument("--tiny-size", type=int, default=96)
    parser.add_argument("--tiny-batch", type=int, default=8)
    parser.add_argument("--tiny-steps", type=int, default=10, help="tiny steps per timed round (short steps)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    parser.add_argument("--out", type=Path, default=RESULTS / "cls_speed.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    models = {
        "vgg16": ({"name": "vgg16", "weights": None}, args.vgg_batch, args.vgg_size),
        "tiny": ({"name": "tiny", "width": 8, "weights": None}, args.tiny_batch, args.tiny_size),
    }
    steps = {"vgg16": 1, "tiny": args.tiny_steps}
    variants: dict[str, Callable[[], None]] = {}
    n_steps: dict[str, int] = {}
    for name, (backbone, batch, size) in models.items():
        for compile_ in (False, True) if args.compile else (False,):
            for channels_last in (False, True):
                key = f"{name}/{'channels_last' if channels_last else 'contiguous'}" + (
                    "/compiled" if compile_ else ""
                )
                variants[key] = make_step(backbone, batch, size, channels_last, compile_, device)
                n_steps[key] = steps[name]
    for fn in variants.values():  # warm-up: allocator, oneDNN/cuDNN kernel choice, compilation
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for key, fn in variants.items():
            n = n_steps[key]
            times[key].append(timed(lambda fn=fn, n=n: [fn() for _ in range(n)], device) / n)
    rows = {
        k: {
            "seconds_per_step": round(min(t), 4),
            "rounds": [round(x, 4) for x in t],
            "steps_per_round": n_steps[k],
        }
        for k, t in times.items()
    }
    faster = {}
    for name in models:
        plain, nhwc = rows[f"{name}/contiguous"], rows[f"{name}/channels_last"]
        speedup = plain["seconds_per_step"] / nhwc["seconds_per_step"]
        faster[name] = {
            "channels_last_speedup": round(speedup, 3),
            "winner": "channels_last" if speedup > 1 else "contiguous",
        }
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "vgg16": f"batch {args.vgg_batch} at {args.vgg_size}px, learnable DRS on layer1..layer6",
        "tiny": f"batch {args.tiny_batch} at {args.tiny_size}px, width 8, learnable DRS on layer1..layer6",
        "repeat": args.repeat,
        "note": "fastest interleaved round per variant; a shared 2-core CPU is noisy, compare the ratios",
        "results": rows,
        "summary": faster,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
