"""Every stage of wsss, declared once.

A ``Stage`` says what a stage is called, where its artifact lives in the experiment folder, which
artifacts it reads, what it writes, whether only rank 0 runs it, which config keys define its artifact,
and what it needs from the DataModule. The runner (``wsss.stages.runner``), the folder layout
(``wsss.artifacts``), the identities (``wsss.provenance``), the "produce it first" hints
(``wsss.hints``) and the DataModule's per-stage data all read these declarations.

Adding a stage: one ``Stage`` here, its module ``wsss.stages.<module>`` with ``run(ctx) -> metrics``,
and its settings in ``conf/settings/<name>.yaml`` (plus ``conf/stage/<name>.yaml`` to run it alone).

This module imports nothing heavy: the plan of a pipeline is checked before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

DATA = ("data.name", "data.root", "data.num_classes", "data.labels_file", "data.toy", "data.mean", "data.std")
"""What identifies the dataset every stage reads."""
GT_SOURCE = "gt"
"""``pseudo.source`` of the oracle: the pseudo stage writes the ground-truth masks as its labels."""
TRAINING = (
    "seed",
    "trainer.precision",
    "trainer.accumulate_grad_batches",
    "trainer.gradient_clip_val",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.fast_dev_run",
    "trainer.overfit_batches",
    "trainer.deterministic",
)
"""Trainer settings that change what a training stage produces (not where or how fast it runs)."""


@dataclass(frozen=True)
class Stage:
    """The declaration of one pipeline stage.

    Attributes:
        name: the pipeline name (``pipeline.stages=[...]``).
        folder: its artifact's folder inside the experiment folder.
        module: ``wsss.stages.<module>`` runs it (``run(ctx) -> metrics``).
        reads: upstream stage names; ``{key}`` is filled from the config (``maps_{pseudo.source}``).
        reads_nothing_when: ``(key, value)`` pairs: when the config's ``key`` is ``value`` the stage reads
            no upstream artifact (``pseudo.source=gt``: the labels are the ground-truth masks).
        writes: what the folder holds, for docs and messages.
        identity: config keys that define the artifact (a node name takes the whole node);
            ``"key if flag"`` takes ``key`` only when the config value ``flag`` is true.
        ignore: keys inside those nodes that do not change the artifact (speed, figures, resuming).
        rank_zero_only: no Trainer: under DDP only rank 0 works, the others wait for ``.complete``.
        select: the config values this pipeline name implies (``maps.source=cls``).
        command: the ``stage=`` value that runs it alone.
        data: what it needs from the DataModule (``wsss.data.datamodule.KINDS``), if anything.
        artifact: False for stages that make nothing later stages read (``probe``).
    """

    name: str
    folder: str
    module: str
    reads: tuple[str, ...] = ()
    reads_nothing_when: tuple[tuple[str, str], ...] = ()
    writes: str = ""
    identity: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    rank_zero_only: bool = False
    select: dict[str, str] = field(default_factory=dict)
    command: str = ""
    data: str | None = None
    artifact: bool = True

    @property
    def cli(self) -> str:
        """``stage=...`` plus the selecting overrides: what runs this stage alone."""
        extra = "".join(f" {k}={v}" for k, v in self.select.items())
        return f"stage={self.command or self.name}{extra}"

    def upstream(self, cfg: DictConfig) -> tuple[str, ...]:
        """The stage names this stage reads under ``cfg``."""
        if any(str(OmegaConf.select(cfg, key)) == value for key, value in self.reads_nothing_when):
            return ()
        names = []
        for template in self.reads:
            name = template
            while "{" in name:
                start, end = name.index("{"), name.index("}")
                value = OmegaConf.select(cfg, name[start + 1 : end])
                name = name[:start] + str(value) + name[end + 1 :]
            names.append(name)
        return tuple(names)


def _maps(source: str) -> Stage:
    return Stage(
        name=f"maps_{source}",
        folder=f"maps/{source}",
        module="maps",
        reads=(source,),
        writes="<id>.npz localization maps of the present classes, seed mIoU sweep (metrics.json, seed_sweep.csv)",
        identity=(*DATA, "maps.split", "maps.infer_size", "maps.scales", "maps.flip", f"maps.{source}"),
        select={"maps.source": source},
        command="maps",
        data="infer",
    )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            name="cls",
            folder="cls",
            module="cls",
            writes="checkpoints/{best,last}.ckpt of the DRS classifier",
            identity=(
                *DATA,
                "data.train_split",
                "data.val_split",
                "data.batch_size",
                "data.color_jitter",
                "protocol",
                "backbone",
                "drs",
                "model",
                "cls",
                *TRAINING,
            ),
            ignore=("cls.log_images", "cls.compile", "cls.channels_last"),
            data="cls",
        ),
        _maps("cls"),
        Stage(
            name="refine",
            folder="refine",
            module="refine",
            reads=("maps_cls",),
            writes="checkpoints/{best,last}.ckpt of the refinement network (DRS-dagger)",
            identity=(
                *DATA,
                "data.maps_split",
                "data.batch_size",
                "data.color_jitter",
                "protocol",
                "backbone",
                "model",
                "refine",
                *TRAINING,
            ),
            ignore=("refine.compile", "refine.channels_last"),
            data="refine",
        ),
        _maps("refine"),
        Stage(
            name="pseudo",
            folder="pseudo",
            module="pseudo",
            reads=("maps_{pseudo.source}",),
            reads_nothing_when=(("pseudo.source", GT_SOURCE),),
            writes="<id>.png pseudo labels (VOC palette, 255 = ignore) and their quality on data.eval_split",
            identity=(*DATA, "data.maps_split", "data.saliency_dir", "pseudo", "crf if pseudo.crf"),
            ignore=("pseudo.workers", "pseudo.overwrite", "pseudo.figure_images", "crf.workers"),
            rank_zero_only=True,
        ),
        Stage(
            name="seg",
            folder="seg",
            module="seg",
            reads=("pseudo",),
            writes="checkpoints/{best,last}.ckpt of the DeepLab segmenter",
            identity=(
                *DATA,
                "data.maps_split",
                "data.val_split",
                "data.batch_size",
                "data.crop_size",
                "segmenter",
                "seg",
                *TRAINING,
            ),
            ignore=("seg.compile", "seg.channels_last"),
            data="seg",
        ),
        Stage(
            name="eval",
            folder="eval",
            module="eval",
            reads=("seg",),
            writes="metrics.json, per_class_iou.csv and predictions/<id>.png on eval.split",
            identity=(*DATA, "eval", "crf if eval.crf"),
            ignore=("eval.save_predictions", "eval.figure_images", "crf.workers"),
            rank_zero_only=True,
        ),
        Stage(
            name="predict",
            folder="predict",
            module="predict",
            reads=("seg",),
            writes="results/VOC2012/Segmentation/comp6_test_cls/<id>.png and results.tar.gz for the VOC server",
            identity=(*DATA, "predict", "crf if predict.crf"),
            ignore=("predict.overwrite", "crf.workers"),
            rank_zero_only=True,
        ),
        Stage(
            name="probe",
            folder="probe",
            module="probe",
            writes="metrics.json: which ranks ran and what each saw (a DDP/logging check)",
            artifact=False,
        ),
    )
}
"""Pipeline stage name -> declaration, in pipeline order."""


def stage(name: str) -> Stage:
    """The declaration of ``name``; unknown names are an error listing the known ones."""
    if name not in STAGES:
        from wsss.errors import ConfigError

        raise ConfigError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    return STAGES[name]


def downstream(name: str, cfg: DictConfig) -> list[str]:
    """Every stage that reads ``name`` directly or through others, under ``cfg``."""
    found: list[str] = []
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for s in STAGES.values():
            if current in s.upstream(cfg) and s.name not in found:
                found.append(s.name)
                frontier.append(s.name)
    return [s for s in STAGES if s in found]
