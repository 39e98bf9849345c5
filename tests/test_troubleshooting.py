"""The Troubleshooting table (docs/troubleshooting.md): every user error a row names is triggered here.

A row composes the config with the row's overrides and runs what ``train.py`` runs before any work
(``train.preflight``: values, ``+key`` typos, the accelerator, the plan, the data check), then checks
the error kind, the message, and that the block ``train.py`` prints for it has no traceback. Some rows
also run ``train.py`` itself in a subprocess without HYDRA_FULL_ERROR: exit code 2, the block, no
traceback. Errors met during training are triggered in tests/test_training_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compose_config, copy_voc_sample, finish_as_made, run_train
from wsss.cli import format_error, preflight, user_error
from wsss.data.palette import read_index_png, save_mask


def _flat(text: str) -> str:
    return " ".join(text.split())  # blocks are indented and messages may wrap


def trigger(overrides: list[str], runs: Path) -> tuple[str, str]:
    """(kind, message) of the user error that composing and preflighting ``overrides`` raises."""
    try:
        preflight(compose_config(overrides, runs=runs))
    except Exception as err:  # noqa: BLE001 - classified below
        found = user_error(err)
        assert found is not None, f"not classified as a user error: {err!r}"
        assert "Traceback" not in format_error(*found)
        return found
    pytest.fail(f"{overrides} raised nothing")


def assert_says(found: tuple[str, str], kind: str, *says: str) -> None:
    assert found[0] == kind, found
    for phrase in says:
        assert _flat(phrase) in _flat(found[1]), (phrase, found[1])


def assert_one_block(proc, kind: str, *says: str) -> None:
    """train.py's output: exit code 2, ``Error (<kind>):`` with every phrase of ``says``, no traceback."""
    out = proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert f"Error ({kind}):" in out, out[-3000:]
    block = out[out.index(f"Error ({kind}):") :]
    for phrase in says:
        assert _flat(phrase) in _flat(block), (phrase, block)


@dataclass
class Row:
    """One Troubleshooting row: the overrides that cause it, what it prints."""

    name: str
    args: list[str]
    kind: str
    says: list[str]
    setup: Callable[..., list[str]] | None = field(default=None)


def _base(tmp_path: Path) -> list[str]:
    return [
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.data={tmp_path / 'data'}",
        "print_config=false",
        "logger=none",
    ]


# ---- config and command-line errors (no data read) ------------------------------------------------

CONFIG_ROWS = [
    Row(
        "key typo",
        ["cls.epoch=3"],
        "ConfigCompositionException",
        ["Could not override 'cls.epoch'", "check its spelling"],
    ),
    Row(
        "plus typo",
        ["+cls.epoch=3"],
        "UnknownKeyError",
        ["the config has no key 'cls.epoch'; did you mean cls.epochs?"],
    ),
    Row(
        "ckpt_path",
        ["+ckpt_path=last"],
        "UnknownKeyError",
        ["wsss resumes by itself", "resume=false starts it over"],
    ),
    Row("trainer arg", ["+trainer.max_epoch=3"], "UnknownKeyError", ["did you mean trainer.max_epochs"]),
    Row(
        "group option",
        ["protocol=papr"],
        "MissingConfigException",
        ["Could not find 'protocol/papr'", "paper", "release"],
    ),
    Row("syntax", ["drs.delta=["], "OverrideParseException", ["no viable alternative at input '['"]),
    Row("not a number", ["drs.delta=abc"], "ConfigError", ["drs.delta='abc' is not a number"]),
    Row(
        "placement string",
        ["drs.placement=layer1"],
        "ConfigError",
        ["must be a list of blocks, e.g. drs.placement=[layer1]"],
    ),
    Row("no epochs", ["cls.epochs=0"], "ConfigError", ["cls.epochs=0 must be >= 1"]),
    Row("negative epochs", ["refine.epochs=-1"], "ConfigError", ["refine.epochs=-1 must be >= 1"]),
    Row("no steps", ["seg.max_steps=0"], "ConfigError", ["seg.max_steps=0 must be >= 1"]),
    Row("exp escapes", ["exp=.."], "ConfigError", ["exp='..' must be a folder name under paths.runs"]),
    Row("exp_dir escapes", ["paths.exp_dir=/tmp/elsewhere"], "ConfigError", ["is not inside paths.runs"]),
    Row(
        "unknown stage",
        ["stage=pipeline", "pipeline.stages=[cls,mapz]"],
        "ConfigError",
        ["unknown stage 'mapz'"],
    ),
    Row("stage twice", ["stage=pipeline", "pipeline.stages=[cls,cls]"], "PlanError", ["names a stage twice"]),
]


@pytest.mark.parametrize("row", CONFIG_ROWS, ids=lambda r: r.name)
def test_config_errors(tmp_path: Path, row: Row) -> None:
    found = trigger(["experiment=toy", "print_config=false", *row.args], tmp_path / "runs")
    assert_says(found, row.kind, *row.says)
    assert not (tmp_path / "runs").exists()  # refused before any folder was made


@pytest.mark.parametrize(
    ("args", "kind", "says"),
    [
        (["cls.epoch=3"], "ConfigCompositionException", "Could not override 'cls.epoch'"),
        (["+cls.epoch=3"], "UnknownKeyError", "did you mean cls.epochs?"),
        (["protocol=papr"], "MissingConfigException", "Could not find 'protocol/papr'"),
        (["drs.delta=["], "OverrideParseException", "no viable alternative at input '['"),
        (["drs.placement=layer1"], "ConfigError", "drs.placement='layer1' must be a list"),
        (["stage=maps", "exp=e"], "MissingArtifactError", "Produce it first with:"),
    ],
    ids=["composition", "plus-typo", "group-option", "syntax", "value", "missing-upstream"],
)
def test_train_py_prints_one_block_and_exits_2(tmp_path: Path, args: list[str], kind: str, says: str) -> None:
    """Finding 7: every error was preceded by a 20-90 line traceback."""
    proc = run_train(["experiment=toy", *_base(tmp_path), *args], timeout=120, tracebacks=False)
    assert_one_block(proc, kind, says)


def test_gpu_trainer_without_a_gpu_is_one_block(tmp_path: Path) -> None:
    """Finding 6: ``-m trainer=ddp`` on a machine without a GPU ended in a raw MisconfigurationException."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    says = ("trainer.accelerator=gpu", "no usable CUDA GPU", "trainer=ddp_sim")
    proc = run_train(["experiment=toy", *_base(tmp_path), "trainer=ddp"], timeout=120, tracebacks=False)
    assert_one_block(proc, "UnsupportedLaunchError", *says)
    sweep = run_train(
        ["-m", "experiment=toy", *_base(tmp_path), "trainer=ddp"], timeout=120, tracebacks=False
    )
    assert_one_block(sweep, "UnsupportedLaunchError", *says)  # refused before the sweep's first job


def test_tracebacks_on_request(tmp_path: Path) -> None:
    """debug_errors=true (or HYDRA_FULL_ERROR=1) shows the traceback of a user error."""
    for args, tracebacks in ((["debug_errors=true"], False), ([], True)):
        proc = run_train(
            ["experiment=toy", *_base(tmp_path), "drs.delta=abc", *args], timeout=120, tracebacks=tracebacks
        )
        assert proc.returncode != 0 and "Traceback" in proc.stdout
        assert "wsss.errors.ConfigError: drs.delta='abc' is not a number" in proc.stdout


def test_a_value_a_network_refuses_is_a_config_error_before_any_work(tmp_path: Path) -> None:
    """A value the network's constructor refuses is found by wsss's network check (on the meta device)
    before any stage runs: a ConfigError naming the key, not a ValueError inside Hydra's instantiate."""
    args = [*TINY_ARGS, *_base(tmp_path), "stage=cls", "exp=e", "backbone.width=0"]
    proc = run_train(args, timeout=300, tracebacks=False)
    assert_one_block(
        proc,
        "ConfigError",
        "backbone=tiny cannot be built with these settings: backbone.width=0 must be a positive channel count",
    )
    assert "running stage cls" not in proc.stdout


TINY_ARGS = [
    "experiment=toy",
    "data.toy.num_train=8",
    "data.toy.num_val=2",
    "data.toy.num_test=1",
    "data.toy.size=48",
]


# ---- plan errors (upstream artifacts) -------------------------------------------------------------


def _made_cls(tmp_path: Path) -> list[str]:
    finish_as_made(compose_config(["experiment=toy", "exp=e"], runs=tmp_path / "runs"), "cls")
    return []


PLAN_ROWS = [
    Row(
        "missing upstream",
        ["stage=maps"],
        "MissingArtifactError",
        ["stage maps_cls reads cls", "does not exist", "Produce it first with:", "python train.py stage=cls"],
    ),
    Row(
        "mismatch",
        ["stage=maps", "seed=1"],
        "ArtifactMismatchError",
        ["cls: seed: made with 0, now 1", "add exp=<new name>", "force=true"],
        _made_cls,
    ),
    Row("complete", ["stage=cls"], "StageCompleteError", ["already complete", "force=true"], _made_cls),
]


@pytest.mark.parametrize("row", PLAN_ROWS, ids=lambda r: r.name)
def test_plan_errors(tmp_path: Path, row: Row) -> None:
    extra = row.setup(tmp_path) if row.setup else []
    found = trigger(["experiment=toy", "exp=e", "print_config=false", *row.args, *extra], tmp_path / "runs")
    assert_says(found, row.kind, *row.says)


# ---- data errors, on a tiny copy of real VOC files --------------------------------------------------


def _train_id(voc: Path, k: int = 0) -> str:
    return (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[k]


def _half_size_mask(voc: Path) -> list[str]:
    path = voc / "SegmentationClassAug" / f"{_train_id(voc)}.png"
    save_mask(path, read_index_png(path)[::2, ::2])
    return []


def _bad_mask_values(voc: Path) -> list[str]:
    path = voc / "SegmentationClassAug" / f"{_train_id(voc, 1)}.png"
    mask = read_index_png(path)
    mask[:4, :4] = 50
    save_mask(path, mask)
    return []


def _corrupt_jpeg(voc: Path) -> list[str]:
    path = voc / "JPEGImages" / f"{_train_id(voc, 1)}.jpg"
    path.write_bytes(b"\xff\xd8 not a jpeg any more")
    return []


def _no_mask(voc: Path) -> list[str]:
    (voc / "SegmentationClassAug" / f"{_train_id(voc, 2)}.png").unlink()
    return []


def _remove(relative: str) -> Callable[[Path], list[str]]:
    def setup(voc: Path) -> list[str]:
        (voc / relative.format(id=_train_id(voc))).unlink()
        return []

    return setup


def _empty_root(voc: Path) -> list[str]:
    empty = voc.parents[2] / "empty"
    empty.mkdir()
    return [f"data.root={empty}"]


DATA_ROWS = [
    Row(
        "root missing",
        ["data.root=/nonexistent/voc"],
        "MissingRootError",
        ["data.root='/nonexistent/voc' does not exist"],
    ),
    Row("no VOC2012 layout", [], "MissingFolderError", ["holds no VOC2012 layout"], _empty_root),
    Row(
        "list missing",
        [],
        "MissingListError",
        ["train_aug.txt not found", "python -m wsss.data.sbd"],
        _remove("ImageSets/Segmentation/train_aug.txt"),
    ),
    Row(
        "image missing",
        [],
        "MissingImageError",
        ["1 of 3 images listed in", "are not in"],
        _remove("JPEGImages/{id}.jpg"),
    ),
    Row(
        "mask half size",
        [],
        "MaskSizeError",
        ["mask is", "but its image is", "masks must match their JPEG pixel for pixel"],
        _half_size_mask,
    ),
    Row(
        "mask values",
        [],
        "MaskValueError",
        ["mask holds values [50] outside 0..20 and 255"],
        _bad_mask_values,
    ),
    Row(
        "corrupt image",
        [],
        "CorruptImageError",
        ["cannot be decoded as an image", "re-extract it"],
        _corrupt_jpeg,
    ),
    Row(
        "no mask, no labels",
        [],
        "MissingLabelsError",
        ["has no mask to derive its label from", "data.labels_file"],
        _no_mask,
    ),
]


@pytest.fixture
def tiny_voc(shared_data: Path, tmp_path: Path) -> Path:
    return copy_voc_sample(shared_data, tmp_path / "voc")


def _voc_args(voc: Path) -> list[str]:
    return [
        "data=voc",
        f"data.root={voc.parents[1]}",
        "backbone=tiny",
        "exp=e",
        "print_config=false",
        "logger=none",
    ]


@pytest.mark.parametrize("row", DATA_ROWS, ids=lambda r: r.name)
def test_data_errors_stop_stage_cls_before_it_starts(tmp_path: Path, tiny_voc: Path, row: Row) -> None:
    extra = row.setup(tiny_voc) if row.setup else []
    found = trigger([*_voc_args(tiny_voc), "stage=cls", *row.args, *extra], tmp_path / "runs")
    assert_says(found, row.kind, *row.says)
    assert not (tmp_path / "runs" / "e" / "cls").exists()  # found before the stage wrote anything


def test_a_half_size_mask_stops_train_py_stage_cls(tmp_path: Path, tiny_voc: Path) -> None:
    """Finding 4: stage=cls accepted a mask of half the image size (and values outside 0..20/255)."""
    _half_size_mask(tiny_voc)
    proc = run_train(
        [*_voc_args(tiny_voc), "trainer=cpu", *_base(tmp_path), "stage=cls"], timeout=120, tracebacks=False
    )
    assert_one_block(proc, "MaskSizeError", "mask is", "masks must match their JPEG pixel for pixel")
    assert not (tmp_path / "runs" / "e" / "cls").exists()


def _saliency_of(voc: Path) -> Path:
    return voc / "saliency" / f"{_train_id(voc)}.png"


def _corrupt_saliency(voc: Path) -> list[str]:
    _saliency_of(voc).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return []


def _small_saliency(voc: Path) -> list[str]:
    Image.fromarray(np.zeros((80, 100), np.uint8)).save(_saliency_of(voc))
    return []


def _no_saliency_dir(voc: Path) -> list[str]:
    return ["data.saliency_dir=null"]


SALIENCY_ROWS = [
    Row(
        "saliency corrupt",
        [],
        "CorruptImageError",
        ["saliency map cannot be decoded", "recompute it"],
        _corrupt_saliency,
    ),
    Row(
        "saliency wrong size",
        [],
        "MaskSizeError",
        ["saliency map is 100x80 (WxH) but its image is"],
        _small_saliency,
    ),
    Row(
        "saliency missing",
        [],
        "MissingSaliencyError",
        ["1 images have no saliency map in"],
        _remove("saliency/{id}.png"),
    ),
    Row(
        "saliency not set",
        [],
        "MissingSaliencyError",
        ["data.saliency_dir is not set", "pseudo.background=fallback"],
        _no_saliency_dir,
    ),
]


def _made_maps(tmp_path: Path, voc: Path) -> list[str]:
    """A finished maps_cls stage (by hand: the plan only needs its record) and stage=pseudo's overrides."""
    args = [*_voc_args(voc), f"data.saliency_dir={voc / 'saliency'}", "pseudo.source=cls"]
    finish_as_made(compose_config(args, runs=tmp_path / "runs"), "maps_cls")
    return [*args, "stage=pseudo"]


@pytest.mark.parametrize("row", SALIENCY_ROWS, ids=lambda r: r.name)
def test_saliency_errors_stop_stage_pseudo_before_any_label(tmp_path: Path, tiny_voc: Path, row: Row) -> None:
    args = _made_maps(tmp_path, tiny_voc)
    extra = row.setup(tiny_voc) if row.setup else []
    found = trigger([*args, *row.args, *extra], tmp_path / "runs")
    assert_says(found, row.kind, *row.says)
    assert not (tmp_path / "runs" / "e" / "pseudo").exists()  # no label was written


def test_a_corrupt_saliency_map_stops_train_py_stage_pseudo(tmp_path: Path, tiny_voc: Path) -> None:
    """Finding 4: a corrupt saliency PNG gave a raw PIL error from a worker after 6 labels were written."""
    args = _made_maps(tmp_path, tiny_voc)
    _corrupt_saliency(tiny_voc)
    proc = run_train([*args, "trainer=cpu", *_base(tmp_path)], timeout=120, tracebacks=False)
    assert_one_block(proc, "CorruptImageError", "saliency map cannot be decoded")
    assert not (tmp_path / "runs" / "e" / "pseudo").exists()


def test_data_is_verified_once_and_again_when_a_file_changes(tmp_path: Path, tiny_voc: Path) -> None:
    """The automatic check leaves markers outside the data folder; a changed file is checked again."""
    from wsss.data.verify import verify_for_stages
    from wsss.errors import MaskSizeError

    cfg = compose_config(["data=voc", f"data.root={tiny_voc.parents[1]}", "exp=e"], runs=tmp_path / "runs")
    before = sorted(p.relative_to(tiny_voc) for p in tiny_voc.rglob("*"))
    assert verify_for_stages(cfg, ["cls"]) == ["train_aug", "val"]
    markers = [p for p in (tmp_path / "runs" / ".verified").iterdir() if p.name != "digests.json"]
    assert sorted(p.name.split("-")[0] for p in markers) == [
        "train_aug",
        "val",
    ]
    assert verify_for_stages(cfg, ["cls", "refine"]) == []  # cached: same files
    assert sorted(p.relative_to(tiny_voc) for p in tiny_voc.rglob("*")) == before  # nothing written there
    _half_size_mask(tiny_voc)
    with pytest.raises(MaskSizeError):
        verify_for_stages(cfg, ["cls"])


def test_every_troubleshooting_row_names_a_test_that_exists() -> None:
    """docs/troubleshooting.md holds the full table; the README's rows are a subset of it."""
    import re

    from conftest import REPO

    section = (REPO / "docs" / "troubleshooting.md").read_text()
    rows = [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| warning")]
    assert len(rows) >= 30
    readme = (REPO / "README.md").read_text()
    short = readme[readme.index("## Troubleshooting") : readme.index("## Design notes")]
    shown = [line.split("|")[1].strip() for line in short.splitlines() if line.startswith("| `")]
    full = {line.split("|")[1].strip() for line in rows}
    assert len(shown) >= 5 and set(shown) <= full, set(shown) - full
    assert "docs/troubleshooting.md" in short
    defined = set(
        re.findall(
            r"^def (test_\w+)", "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py")), re.M
        )
    )
    row_names = {r.name for r in CONFIG_ROWS + PLAN_ROWS + DATA_ROWS + SALIENCY_ROWS}
    for row in rows:
        tests = re.findall(r"\b(test_\w+)(?!\w|\.py)", row.split("|")[-2])
        ids = re.findall(r"\[([^\]]+)\]", row.split("|")[-2])
        assert tests or ids, row
        assert set(tests) <= defined, (set(tests) - defined, row)
        assert set(ids) <= row_names, (set(ids) - row_names, row)
