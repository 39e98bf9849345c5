"""Classifier training step: contiguous (NCHW) vs channels_last (NHWC) memory format (``cls.channels_last``).

One step = forward, multi-label soft margin on GAP(F), backward, SGD step, on the classifier with
learnable DRS on layer1..layer6; seconds per step after warm-up, both formats interleaved. The ratio is
channels_last's speed over contiguous's (> 1: channels_last faster). torch.compile and bf16 variants
are GPU questions: bench/gpu.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from common import batch_loader, classifier, quiet
from results import Section, ratio
from timing import interleave, now, speedup, summarize

from wsss.bench.measure import loop_seconds_per_step


def step_fn(backbone: str, channels_last: bool):
    torch.manual_seed(0)
    model = classifier(backbone).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(b: dict) -> None:
        loss = F.multilabel_soft_margin_loss(
            model(b["image"].contiguous(memory_format=fmt)).mean(dim=(2, 3)), b["label"]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def compare(backbone: str, batch: int, size: int, steps: int, warmup: int, rounds: int):
    def make(g: torch.Generator) -> dict:
        return {
            "image": torch.randn(batch, 3, size, size, generator=g),
            "label": (torch.rand(batch, 20, generator=g) < 0.15).float(),
        }

    loader = batch_loader(make, warmup + steps)
    steps_of = {fmt: step_fn(backbone, fmt == "channels_last") for fmt in ("contiguous", "channels_last")}
    times = interleave(
        {
            k: (lambda s=s: loop_seconds_per_step(s, loader, steps, warmup, clock=now))
            for k, s in steps_of.items()
        },
        rounds,
        warmup=0,
    )
    name = f"cls_speed/channels_last/{backbone}"
    fig = ratio(
        name,
        speedup(times["contiguous"], times["channels_last"]),
        "contiguous",
        note=f"batch {batch} at {size} px",
    )
    return fig, {name: summarize(times, 1, "steps")}


def run(opts: Any) -> Section:
    quiet()
    cases = [("tiny", 8, 96, 20, 3)] + ([] if opts.quick else [("vgg16", 2, 160, 2, 1)])
    figs, details = [], {}
    for case in cases:
        fig, d = compare(*case, rounds=opts.rounds)
        figs.append(fig)
        details |= d
    sizes = "tiny batch 8 at 96 px" + ("" if opts.quick else "; VGG-16 batch 2 at 160 px")
    return Section(sizes=sizes, figures=figs, details=details)
