"""A stage declared outside wsss (``plugins=[plugin_stage]``): image-level label counts per class.

It exists to prove that one declaration + one module is all a new stage needs (tests/test_stage_plugin.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsss.data.toy import ensure_toy
from wsss.data.voc import VOCDataset
from wsss.pipeline.artifacts import write_json
from wsss.pipeline.registry import DATA, Cost, SplitRead, Stage, register
from wsss.pipeline.runner import StageContext

LABEL_COUNTS = register(
    Stage(
        name="label_counts",
        folder="label_counts",
        module="plugin_stage",
        writes="counts.json: images per class on data.train_split",
        identity=(*DATA, "data.train_split"),
        splits=(SplitRead("data.train_split", labels=True),),
        cost=Cost(infer="data.train_split"),
        speed=("data.train_split",),
    )
)


def run(ctx: StageContext) -> dict[str, Any]:
    ensure_toy(ctx.cfg.data)
    data = VOCDataset(ctx.cfg.data.root, str(ctx.cfg.data.train_split))
    counts = np.sum([data.label(i) for i in range(len(data))], axis=0).astype(int)
    write_json(ctx.out / "counts.json", {"images": len(data), "per_class": counts.tolist()})
    return {"images": len(data), "labels": int(counts.sum())}
