"""Every recipe and sweep composes; bad values are rejected with the allowed choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from wsss.pipeline.config import CONF_DIR, ConfigError, validate
from wsss.pipeline.runner import auto_pipeline, pipeline_names

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def test_recipes_and_sweeps_exist() -> None:
    assert {"toy", "paper_vgg16", "paper_r101_aspp", "release"} <= set(EXPERIMENTS)
    assert {"table1_delta", "table2_layers", "table3_refine", "table4_seg"} <= set(SWEEPS)


def resolve_all(cfg) -> dict:
    """Every value of the job config resolved (the hydra node only resolves inside a real run)."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return OmegaConf.to_container(job, resolve=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_resolves(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={name}"], runs=tmp_path / "runs")
    validate(cfg)
    resolved = resolve_all(cfg)
    assert resolved["paths"]["exp_dir"].startswith(str(tmp_path / "runs"))
    assert pipeline_names(cfg)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes_and_resolves(name: str, tmp_path: Path) -> None:
    cfg = compose_config([f"sweep={name}", "experiment=toy"], runs=tmp_path / "runs")
    validate(cfg)
    resolve_all(cfg)
    assert cfg.stage == "pipeline"
    assert cfg.optimized_metric == ("pseudo/miou" if name == "search_pseudo" else "eval/miou")
    assert cfg.hydra.sweeper.params, "a sweep must sweep something"
    for key in cfg.hydra.sweeper.params:
        OmegaConf.select(cfg, key, throw_on_missing=True) if "/" not in key else None


def test_auto_pipeline_follows_pseudo_source() -> None:
    refine = compose_config(["pseudo.source=refine"])
    assert auto_pipeline(refine) == ["cls", "maps_cls", "refine", "maps_refine", "pseudo", "seg", "eval"]
    assert auto_pipeline(compose_config(["pseudo.source=cls"])) == [
        "cls",
        "maps_cls",
        "pseudo",
        "seg",
        "eval",
    ]


def test_maps_stage_name_follows_source(tmp_path: Path) -> None:
    cfg = compose_config(["stage=maps", "maps.source=refine"], runs=tmp_path)
    assert pipeline_names(cfg) == ["maps_refine"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "drs.placement=layer1",
            "drs.placement='layer1' must be a list of blocks, e.g. drs.placement=[layer1]",
        ),
        ("drs.delta=abc", "drs.delta='abc' is not a number"),
        ("exp=..", "exp='..' must be a folder name under paths.runs"),
        ("drs.placement=[layer7]", "drs.placement has unknown layers ['layer7']"),
        ("drs.delta=1.5", "drs.delta=1.5 must be in (0, 1]"),
        ("maps.source=seg", "maps.source='seg' is not supported; choose one of: cls, refine"),
        ("cls.optimizer=adamw", "cls.optimizer='adamw' is not supported; choose one of: sgd, adam"),
        ("data.num_classes=0", "data.num_classes=0: give the number of foreground classes, 1..254"),
    ],
)
def test_bad_values_are_rejected(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_config([override], runs=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)


def test_an_unknown_protocol_names_the_choices(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"(?s)protocol/papr.*paper.*release"):
        compose_config(["protocol=papr"], runs=tmp_path)


def test_protocol_files_set_the_same_keys() -> None:
    """Every value the release protocol changes is set by the paper protocol too (and vice versa)."""

    def keys(node, prefix=""):
        out = set()
        for k in node:
            v = node._get_node(k)
            out |= keys(v, f"{prefix}{k}.") if OmegaConf.is_dict(v) else {f"{prefix}{k}"}
        return out

    paper = keys(OmegaConf.load(CONF_DIR / "protocol" / "paper.yaml"))
    release = keys(OmegaConf.load(CONF_DIR / "protocol" / "release.yaml"))
    assert paper == release
    assert {
        "cls.lr_groups",
        "maps.cls.relu",
        "maps.refine.size",
        "pseudo.rule",
        "refine.top_class_only",
    } <= paper


def test_protocol_release_switches_every_protocol_value(tmp_path: Path) -> None:
    paper = compose_config(["experiment=toy"], runs=tmp_path)
    release = compose_config(["experiment=toy", "protocol=release"], runs=tmp_path)
    assert (paper.protocol, release.protocol) == ("paper", "release")
    assert (paper.cls.lr_groups, release.cls.lr_groups) == ("single", "release")
    assert (paper.cls.squash_size, release.cls.squash_size) == (None, 112)  # toy data's release squash
    assert (paper.maps.cls.quantize, release.maps.cls.quantize) == ("round", "truncate")
    assert (paper.pseudo.rule, release.pseudo.rule) == ("paper", "release")
    assert release.refine.epochs == 80  # the recipe (experiment=toy) still sets what it sets


def _added(tmp_path: Path, *overrides: str) -> None:
    from hydra.core.hydra_config import HydraConfig

    from wsss.pipeline.config import check_added_keys

    cfg = compose_config(list(overrides), runs=tmp_path)
    check_added_keys(cfg, list(HydraConfig.get().overrides.task), [str(CONF_DIR)])


def test_a_plus_override_of_a_key_wsss_does_not_have_is_refused(tmp_path: Path) -> None:
    """Finding 5: ``+cls.epoch=3`` (a typo) and ``+ckpt_path=last`` were silently ignored."""
    from wsss.errors import UnknownKeyError

    with pytest.raises(
        UnknownKeyError,
        match=r"\+cls\.epoch=3: the config has no key 'cls\.epoch'; did you mean cls\.epochs\?",
    ):
        _added(tmp_path, "+cls.epoch=3")
    with pytest.raises(UnknownKeyError, match=r"\+ckpt_path=last: .*wsss resumes by itself.*resume=false"):
        _added(tmp_path, "+ckpt_path=last")
    # on purpose: ++ adds a key; Trainer arguments and constructor arguments are checked by their receiver
    _added(tmp_path, "++cls.epoch=3")
    _added(tmp_path, "+trainer.detect_anomaly=true")
    _added(tmp_path, "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping")
    _added(tmp_path, "+backbone.extra_arg=1")


def test_trainer_arguments_are_checked_against_the_trainer(tmp_path: Path) -> None:
    from wsss.errors import UnknownKeyError
    from wsss.tasks.trainer import check_trainer_arguments

    check_trainer_arguments(["max_epochs", "detect_anomaly", "accelerator"])
    with pytest.raises(UnknownKeyError, match=r"trainer\.max_epoch \(did you mean trainer\.max_epochs"):
        check_trainer_arguments(["max_epochs", "max_epoch"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cls.epochs=-1", "cls.epochs=-1 must be >= 1"),
        ("cls.epochs=2.5", "cls.epochs=2.5 must be a whole number"),
        ("refine.epochs=0", "refine.epochs=0 must be >= 1"),
        ("seg.max_steps=0", "seg.max_steps=0 must be >= 1"),
        ("+trainer.max_epochs=0", "trainer.max_epochs=0 must be >= 1"),
        ("paths.exp_dir=/somewhere/else", "is not inside paths.runs"),
    ],
)
def test_training_lengths_must_be_positive_and_outputs_stay_under_runs(
    override: str, message: str, tmp_path: Path
) -> None:
    """Finding 3: cls.epochs=0 completed without a checkpoint, cls.epochs=-1 trained without end."""
    cfg = compose_config([override], runs=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
    validate(compose_config(["+trainer.max_steps=-1"], runs=tmp_path))  # Lightning's "no step limit"
