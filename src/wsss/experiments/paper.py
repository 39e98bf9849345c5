"""The paper's tables (and the authors' release's numbers) as data, and the row a job's config belongs to.

Every number is VOC 2012 val segmentation mIoU in % (docs/protocol.md "Published numbers"). A job is
matched to a row by its resolved config (``JobSettings``: controller, delta, placement, map source,
segmenter), never by its override strings, so ``drs=fixed drs.delta=0.55`` and a recipe that sets the
same values land on the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsss.constants import DRS_LAYERS
from wsss.pipeline.registry import GT_SOURCE

TABLES = {
    "table1_delta": "Table 1: the controller (learnable vs fixed delta), no refinement",
    "table2_layers": "Table 2: where DRS goes (learnable controller), no refinement",
    "table3_refine": "Table 3: refinement (DRS†) on and off",
    "table4_seg": "Table 4: segmentation networks on refined pseudo labels",
    "search_pseudo": "Search: pseudo-label thresholds and CRF, selected on pseudo-label mIoU (VOC train ground truth)",
}
DELTAS = (0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4)
PAPER_T1 = {
    "learnable": 62.9,
    **{f"delta {d:g}": v for d, v in zip(DELTAS, (51.9, 56.0, 58.7, 62.3, 62.8, 62.3, 59.6), strict=True)},
}
PLACEMENTS = (
    "none",
    "layer 6",
    "layer 5-6",
    "layer 4-6",
    "layer 3-6",
    "layer 2-6",
    "layer 1-6",
    "layer 1-5",
    "layer 1-4",
)
PAPER_T2 = dict(zip(PLACEMENTS, (50.1, 60.8, 62.2, 62.8, 62.9, 62.7, 62.9, 58.2, 53.6), strict=True))
PAPER_T3 = {"learnable": 62.9, "learnable + DRS†": 63.5, "delta 0.55": 62.8, "delta 0.55 + DRS†": 63.6}
SEGMENTERS = {
    "largefov_vgg16": "LargeFOV-VGG16",
    "largefov_r101": "LargeFOV-R101",
    "aspp_r101": "ASPP-R101",
    "deeplabv3plus_r101": "DeepLab-V3+ R101",
}
PAPER_T4 = {
    "DRS† LargeFOV-VGG16": 63.5,
    "DRS† (delta 0.55) LargeFOV-VGG16": 63.6,
    "DRS† LargeFOV-R101": 66.5,
    "DRS† (delta 0.55) LargeFOV-R101": 66.8,
    "DRS† ASPP-R101": 70.4,
    "DRS† (delta 0.55) ASPP-R101": 71.2,
}
RELEASE = {"DRS† ASPP-R101": "69.4 (70.4 CRF)", "DRS† DeepLab-V3+ R101": "70.4 (71.0 CRF)"}
"""What the authors' released code reports (DeepLab-V2 ASPP-R101, DeepLab-V3+) on its DRS† pseudo labels."""
PAPER = {
    "table1_delta": PAPER_T1,
    "table2_layers": PAPER_T2,
    "table3_refine": PAPER_T3,
    "table4_seg": PAPER_T4,
}


ORACLE_LABEL = "oracle (ground-truth labels)"
"""Its row label: the fully-supervised upper bound of the segmentation column."""


@dataclass(frozen=True)
class JobSettings:
    """What a job's row depends on, read from its resolved config."""

    mode: str
    delta: float
    placement: tuple[str, ...]
    source: str
    segmenter: str
    seed: int
    protocol: str = "paper"

    @classmethod
    def from_config(cls, cfg: Any) -> JobSettings:
        return cls(
            mode=str(cfg.drs.mode),
            delta=float(cfg.drs.delta),
            placement=tuple(str(p) for p in cfg.drs.placement),
            source=str(cfg.pseudo.source),
            segmenter=str(cfg.segmenter.get("name") or cfg.segmenter.get("_target_", "")),
            seed=int(cfg.seed),
            protocol=str(cfg.protocol),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSettings:
        return cls(**{**data, "placement": tuple(data["placement"])})

    @property
    def drs_off(self) -> bool:
        return self.mode == "off" or not self.placement

    def controller(self) -> str:
        if self.drs_off:
            return "no DRS (CAM)"
        return "learnable" if self.mode == "learnable" else f"delta {self.delta:g}"

    def placement_label(self) -> str:
        if self.drs_off:
            return "none"
        blocks = sorted(DRS_LAYERS.index(p) + 1 for p in self.placement)
        if blocks == list(range(blocks[0], blocks[-1] + 1)):
            return f"layer {blocks[0]}" if len(blocks) == 1 else f"layer {blocks[0]}-{blocks[-1]}"
        return "layers " + ",".join(map(str, blocks))

    def label(self, table: str) -> str:
        """The paper's label of this job's row in ``table``."""
        if self.source == GT_SOURCE:  # ground-truth labels: the controller does not matter
            seg = SEGMENTERS.get(self.segmenter, self.segmenter)
            return f"{ORACLE_LABEL} {seg}" if table == "table4_seg" else ORACLE_LABEL
        if table == "table2_layers":
            return self.placement_label()
        if table == "table3_refine":
            return self.controller() + (" + DRS†" if self.source == "refine" else "")
        if table == "table4_seg":
            seg = SEGMENTERS.get(self.segmenter, self.segmenter)
            dagger = "DRS†" if self.mode == "learnable" else f"DRS† ({self.controller()})"
            return f"{dagger} {seg}" if self.source == "refine" else f"{self.controller()} {seg}"
        label = self.controller() + (" + DRS†" if self.source == "refine" else "")
        return (
            label
            if table == "table1_delta" or self.placement == DRS_LAYERS
            else f"{label}, {self.placement_label()}"
        )


def order(table: str, label: str) -> tuple[int, str]:
    """Sort key: the paper's row order, then rows the paper does not have."""
    rows = list(PAPER.get(table, {}))
    return (rows.index(label), "") if label in rows else (len(rows), label)


def paper_value(table: str, label: str) -> float | None:
    return PAPER.get(table, {}).get(label)


def release_value(label: str) -> str | None:
    return RELEASE.get(label)
