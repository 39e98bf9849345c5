"""The stages of wsss: declarations (``registry``), the runner, and one module per stage.

Each stage module exposes ``run(ctx: StageContext) -> dict`` of flat metrics; stages hand over only
through files in the experiment folder (``wsss.pipeline.artifacts``), checked by their records (``wsss.pipeline.provenance``).
"""

from wsss.pipeline.registry import STAGES, Stage

__all__ = ["STAGES", "Stage"]
