"""wsss's Lightning training stages against a plain PyTorch loop on the same model, batches and threads.

Per stage, seconds per optimizer step after warm-up (``wsss.bench.measure``): the stage's
LightningModule (``ClassifierTask``, ``RefinerTask``, ``SegmenterTask``, built by the stage's own
``build_task`` from the composed config, protocol=paper) under the stages' Trainer
(``wsss.tasks.trainer.build_trainer``; no logger, checkpoint or progress bar: those are the user's choice) vs
the loop a user would write on a copy of the same network: the same loss, optimizer and schedule,
nothing else. Both run with the CPU allocator setting every stage gets (``wsss.tasks.memory``). The tiny networks make Lightning's per-step cost most
visible (a step is tens of ms); VGG-16 shows it at the paper's network (the classifier's VGG-16 case is
release/training: the release's step is such a plain loop).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import batch_loader, cls_task, quiet, refine_task, seg_task
from results import Figure, Section, ratio
from timing import interleave, now, speedup, summarize

from wsss.bench.measure import fit_seconds_per_step, loop_seconds_per_step
from wsss.tasks.memory import retain_freed_memory


def images_and(extra: Callable[[torch.Generator, int, int], dict], batch: int, size: int) -> Callable:
    def make(g: torch.Generator) -> dict:
        return {"image": torch.randn(batch, 3, size, size, generator=g), **extra(g, batch, size)}

    return make


def cls_case(backbone: str) -> tuple[Any, Callable[[dict], None], Callable]:
    task = cls_task(backbone)  # paper protocol: one SGD group
    mine = copy.deepcopy(task.model)
    opt = torch.optim.SGD(
        mine.parameters(), lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay
    )

    def step(b: dict) -> None:
        loss = F.multilabel_soft_margin_loss(mine(b["image"]).mean(dim=(2, 3)), b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    labels = lambda g, n, s: {"label": (torch.rand(n, 20, generator=g) < 0.15).float()}  # noqa: E731
    return task, step, labels


def refine_case(backbone: str) -> tuple[Any, Callable[[dict], None], Callable]:
    task = refine_task(backbone)  # paper protocol: MSE against the whole maps
    mine = copy.deepcopy(task.model)
    opt = torch.optim.Adam(mine.parameters(), lr=task.lr)

    def step(b: dict) -> None:
        x = b["image"]
        pred = F.interpolate(mine(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.mse_loss(pred, b["maps"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    maps = lambda g, n, s: {"maps": torch.rand(n, 20, s, s, generator=g)}  # noqa: E731
    return task, step, maps


def seg_case(backbone: str) -> tuple[Any, Callable[[dict], None], Callable]:
    from wsss.tasks.segmentation import poly_factor

    task = seg_task(f"largefov_{backbone}")  # paper protocol: cross-entropy, poly every step
    mine = copy.deepcopy(task.model)
    opt = torch.optim.SGD(mine.param_groups(task.lr, task.weight_decay), lr=task.lr, momentum=task.momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_factor(task.max_steps, task.poly_power))

    def step(b: dict) -> None:
        x, mask = b["image"], b["mask"]
        logits = F.interpolate(mine(x), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, mask, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def masks(g: torch.Generator, n: int, s: int) -> dict:
        mask = torch.randint(0, 21, (n, s, s), generator=g)
        mask[:, : s // 8] = 255
        return {"mask": mask}

    return task, step, masks


CASES = {"cls": cls_case, "refine": refine_case, "seg": seg_case}


def compare(
    stage: str, backbone: str, batch: int, size: int, steps: int, warmup: int, rounds: int
) -> tuple[Figure, dict]:
    torch.manual_seed(0)
    task, step, extra = CASES[stage](backbone)
    loader = batch_loader(images_and(extra, batch, size), warmup + steps)
    times = interleave(
        {
            "plain_loop": lambda: loop_seconds_per_step(step, loader, steps, warmup, clock=now),
            "lightning": lambda: fit_seconds_per_step(task, loader, steps, warmup, clock=now),
        },
        rounds,
        warmup=0,
    )
    name = f"torch/{stage}/{backbone}"
    fig = ratio(
        name,
        speedup(times["plain_loop"], times["lightning"]),
        "plain PyTorch loop",
        0.95,
        f"batch {batch} at {size} px, {steps} steps per round",
    )
    return fig, {name: summarize(times, 1, "steps")}


def run(opts: Any) -> Section:
    quiet()
    retain_freed_memory()  # what every stage's Trainer sets on the CPU: both variants run with it
    cases = [(stage, "tiny", 8, 96, 20, 3) for stage in CASES]
    sizes = "tiny: batch 8 at 96 px (the toy recipe), 20 steps per round after 3 warm-up"
    if not opts.quick:
        cases += [("refine", "vgg16", 2, 160, 2, 1), ("seg", "vgg16", 2, 160, 2, 1)]
        sizes += (
            "; VGG-16 refiner and LargeFOV segmenter: batch 2 at 160 px (paper: 5 at 321), 2 steps after 1"
        )
    figs, details = [], {}
    for stage, backbone, batch, size, steps, warmup in cases:
        fig, d = compare(stage, backbone, batch, size, steps, warmup, opts.rounds)
        figs.append(fig)
        details |= d
    return Section(sizes=sizes, figures=figs, details=details)
