"""Every stage of wsss, declared once.

A ``Stage`` says what a stage is called, where its artifact lives in the experiment folder, which
artifacts it reads, what it writes, whether only rank 0 runs it, which config keys define its artifact,
and what it needs from the DataModule. The runner (``wsss.pipeline.runner``), the folder layout
(``wsss.pipeline.artifacts``), the identities (``wsss.pipeline.provenance``), the "produce it first" hints
(``wsss.pipeline.hints``) and the DataModule's per-stage data all read these declarations.

Adding a stage: one ``Stage`` here, its module (``wsss.stages.<name>``) with ``run(ctx) -> metrics``,
and its settings in ``wsss/conf/settings/<name>.yaml``. A stage outside wsss is a module that calls
``register(Stage(...))`` on import, named in ``plugins=[<module>]``.

This module imports nothing heavy: the plan of a pipeline is checked before torch is loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from wsss.errors import ConfigError

DATA = ("data.name", "data.num_classes", "data.toy", "data.mean", "data.std")
"""What identifies the dataset every stage reads, besides the content of the splits it reads
(``Stage.content_keys``: ``data.content.<split>``, set by ``wsss.data.content.attach_content``). The data's
folder is not part of any identity: moved or copied data is the same data."""
GT_SOURCE = "gt"
"""``pseudo.source`` of the oracle: the pseudo stage writes the ground-truth masks as its labels."""
SALIENCY = "+saliency"
"""Suffix of a split's ``data.content`` key when its fingerprint covers the saliency maps too."""


def uses_saliency(cfg: DictConfig) -> bool:
    """Whether saliency maps are read (``data.saliency_dir`` set and ``pseudo.background=saliency``)."""
    return bool(OmegaConf.select(cfg, "data.saliency_dir", default=None)) and (
        str(OmegaConf.select(cfg, "pseudo.background", default="")) == "saliency"
    )


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
class SplitRead:
    """One split of ``data`` a stage reads (``split``: the config key naming it), and what it needs.

    ``labels``: image-level labels (a mask or a labels-file entry) for every image; ``masks``: every image
    must have a ground-truth mask; ``saliency``: saliency maps, when the config uses them
    (``data.saliency_dir`` set and ``pseudo.background=saliency``)."""

    split: str
    labels: bool = False
    masks: bool = False
    saliency: bool = False


@dataclass(frozen=True)
class Cost:
    """What the cost model (``wsss.bench.plan``) counts for a stage; every field names a config key.

    Training by epochs (``epochs``) or by optimizer steps (``steps``, with ``accumulate`` batches each,
    ``batch`` per batch, a validation every ``val_every`` steps) over the images of ``train``, with a pass
    over ``validate`` per validation; inference over the images of ``infer``; ``scored``: images scored
    against ground truth."""

    train: str | None = None
    epochs: str | None = None
    steps: str | None = None
    accumulate: str | None = None
    batch: str | None = None
    val_every: str | None = None
    validate: str | None = None
    infer: str | None = None
    scored: str | None = None


@dataclass(frozen=True)
class Stage:
    """The declaration of one pipeline stage.

    Attributes:
        name: the pipeline name (``pipeline.stages=[...]``).
        folder: its artifact's folder inside the experiment folder.
        module: the import path of the module that runs it (``run(ctx) -> metrics``).
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
        splits: the splits of ``data`` it reads (checked by ``wsss.data.verify`` before any work).
        cost: what it does, for the cost model.
        speed: config keys its cost depends on (network, sizes, workers; not seeds or rates).
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
    splits: tuple[SplitRead, ...] = ()
    cost: Cost = Cost()
    speed: tuple[str, ...] = ()

    @property
    def cli(self) -> str:
        """``stage=...`` plus the selecting overrides: what runs this stage alone."""
        extra = "".join(f" {k}={v}" for k, v in self.select.items())
        return f"stage={self.command or self.name}{extra}"

    def content_keys(self, cfg: DictConfig) -> list[str]:
        """The ``data.content`` keys of the splits it reads under ``cfg`` (``<split>[+saliency]``)."""
        saliency = uses_saliency(cfg)
        keys = [
            str(OmegaConf.select(cfg, read.split)) + (SALIENCY if read.saliency and saliency else "")
            for read in self.splits
        ]
        return list(dict.fromkeys(keys))

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
        module="wsss.stages.maps",
        reads=(source,),
        writes="<id>.npz localization maps of the present classes, seed mIoU sweep (metrics.json, seed_sweep.csv)",
        identity=(*DATA, "maps.split", "maps.infer_size", "maps.scales", "maps.flip", f"maps.{source}"),
        select={"maps.source": source},
        command="maps",
        data="infer",
        splits=(SplitRead("maps.split", labels=True), SplitRead("data.eval_split")),
        cost=Cost(infer="maps.split", scored="data.eval_split"),
        speed=(
            "backbone",
            "model",
            "maps.infer_size",
            "maps.scales",
            "maps.flip",
            "maps.batch_size",
            "maps.split",
            "maps.source",
            "data.num_workers",
        ),
    )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            name="cls",
            folder="cls",
            module="wsss.stages.cls",
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
            ignore=(
                "cls.log_images",
                "cls.compile",
                "cls.channels_last",
                "cls.optimizers",  # the one cls.optimizer picks is in cls.task.optimizer
                "cls.task.log_images",
                "cls.task.channels_last",
            ),
            data="cls",
            splits=(SplitRead("data.train_split", labels=True), SplitRead("data.val_split", labels=True)),
            cost=Cost(train="data.train_split", epochs="cls.epochs", validate="data.val_split"),
            speed=(
                "backbone",
                "drs",
                "model",
                "cls.crop_size",
                "cls.squash_size",
                "cls.map_miou",
                "cls.select_on_map_miou",
                "cls.channels_last",
                "cls.compile",
                "data.batch_size",
                "data.num_workers",
            ),
        ),
        _maps("cls"),
        Stage(
            name="refine",
            folder="refine",
            module="wsss.stages.refine",
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
            ignore=("refine.compile", "refine.channels_last", "refine.task.channels_last"),
            data="refine",
            splits=(SplitRead("data.maps_split", labels=True),),
            cost=Cost(train="data.maps_split", epochs="refine.epochs"),
            speed=(
                "backbone",
                "model",
                "refine.crop_size",
                "refine.squash_size",
                "refine.top_class_only",
                "refine.channels_last",
                "refine.compile",
                "data.batch_size",
                "data.num_workers",
            ),
        ),
        _maps("refine"),
        Stage(
            name="pseudo",
            folder="pseudo",
            module="wsss.stages.pseudo",
            reads=("maps_{pseudo.source}",),
            reads_nothing_when=(("pseudo.source", GT_SOURCE),),
            writes="<id>.png pseudo labels (VOC palette, 255 = ignore) and their quality on data.eval_split",
            identity=(*DATA, "data.maps_split", "pseudo", "crf if pseudo.crf"),
            ignore=("pseudo.workers", "pseudo.overwrite", "pseudo.figure_images", "crf.workers"),
            rank_zero_only=True,
            splits=(SplitRead("data.maps_split", saliency=True), SplitRead("data.eval_split")),
            cost=Cost(infer="data.maps_split", scored="data.eval_split"),
            speed=("pseudo.rule", "pseudo.background", "pseudo.crf", "pseudo.workers", "crf"),
        ),
        Stage(
            name="seg",
            folder="seg",
            module="wsss.stages.seg",
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
            ignore=("seg.compile", "seg.channels_last", "seg.task.channels_last"),
            data="seg",
            splits=(SplitRead("data.maps_split"), SplitRead("data.val_split", masks=True)),
            cost=Cost(
                train="data.maps_split",
                steps="seg.max_steps",
                accumulate="seg.accumulate",
                batch="seg.batch_size",
                val_every="seg.val_every_n_steps",
                validate="data.val_split",
            ),
            speed=(
                "segmenter",
                "seg.crop_size",
                "seg.batch_size",
                "seg.loss",
                "seg.multi_scale_inputs",
                "seg.input_scales",
                "seg.precision",
                "seg.channels_last",
                "seg.compile",
                "data.num_workers",
            ),
        ),
        Stage(
            name="eval",
            folder="eval",
            module="wsss.stages.eval",
            reads=("seg",),
            writes="metrics.json, per_class_iou.csv and predictions/<id>.png on eval.split",
            identity=(*DATA, "eval", "crf if eval.crf"),
            ignore=("eval.save_predictions", "eval.figure_images", "crf.workers"),
            rank_zero_only=True,
            splits=(SplitRead("eval.split", masks=True),),
            cost=Cost(infer="eval.split"),
            speed=(
                "segmenter",
                "seg.multi_scale_inputs",
                "seg.input_scales",
                "eval.scales",
                "eval.flip",
                "eval.tile",
                "eval.crf",
                "crf",
            ),
        ),
        Stage(
            name="predict",
            folder="predict",
            module="wsss.stages.predict",
            reads=("seg",),
            writes="results/VOC2012/Segmentation/comp6_test_cls/<id>.png and results.tar.gz for the VOC server",
            identity=(*DATA, "predict", "crf if predict.crf"),
            ignore=("predict.overwrite", "crf.workers"),
            rank_zero_only=True,
            splits=(SplitRead("predict.split"),),
            cost=Cost(infer="predict.split"),
            speed=(
                "segmenter",
                "seg.multi_scale_inputs",
                "seg.input_scales",
                "predict.scales",
                "predict.flip",
                "predict.tile",
                "predict.crf",
                "crf",
            ),
        ),
        Stage(
            name="probe",
            folder="probe",
            module="wsss.stages.probe",
            writes="metrics.json: which ranks ran and what each saw (a DDP/logging check)",
            artifact=False,
        ),
    )
}
"""Pipeline stage name -> declaration, in pipeline order."""


def stage(name: str) -> Stage:
    """The declaration of ``name``; unknown names are an error listing the known ones."""
    if name not in STAGES:
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


def upstream_closure(name: str, cfg: DictConfig) -> list[str]:
    """``name`` and every stage it reads directly or through others under ``cfg``, in pipeline order."""
    found = {name}
    frontier = [name]
    while frontier:
        for up in stage(frontier.pop()).upstream(cfg):
            if up not in found:
                found.add(up)
                frontier.append(up)
    return [s for s in STAGES if s in found]


def register(declaration: Stage, before: str | None = None) -> Stage:
    """Add a stage to ``STAGES`` (at the end, or just before ``before``): a plug-in stage.

    Its ``module`` is a dotted module path with ``run(ctx) -> metrics``; the runner, the plan check, the
    data verification and the cost model read it like a built-in stage."""
    if STAGES.get(declaration.name) == declaration:
        return declaration
    if declaration.name in STAGES:
        raise ConfigError(
            f"stage {declaration.name!r} is declared already; give the plug-in stage another name"
        )
    items = list(STAGES.items())
    at = next((i for i, (n, _) in enumerate(items) if n == before), len(items)) if before else len(items)
    items.insert(at, (declaration.name, declaration))
    STAGES.clear()
    STAGES.update(items)
    return declaration


def unregister(name: str) -> None:
    """Remove a stage added with ``register`` (tests)."""
    STAGES.pop(name, None)


def load_plugins(cfg: DictConfig) -> None:
    """Import the modules of ``plugins`` (each registers its stages); a module that is missing is named."""
    for name in cfg.get("plugins") or ():
        try:
            importlib.import_module(str(name))
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"plugins: cannot import {name!r} ({err}); put the folder holding it on PYTHONPATH"
            ) from err
