"""The ``wsss`` command and ``train.py``: one entry point; ``--help`` lists every stage and recipe and
five example commands that compose; ``wsss demo`` runs the demo."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from wsss.pipeline.config import CONF_DIR


@pytest.fixture(scope="module")
def help_text() -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _section(text: str, title: str) -> list[str]:
    """The indented lines under ``title`` up to the next blank line."""
    lines = text[text.index(title) :].splitlines()[1:]
    return [s.strip() for s in lines[: lines.index("")]]


def test_help_lists_every_stage_and_recipe_with_a_description(help_text: str) -> None:
    from wsss.pipeline.registry import STAGES

    stages = {s.command or s.name for s in STAGES.values()} | {"pipeline", "adopt"}
    recipes = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
    for title, names in (("Stages (stage=...)", stages), ("Recipes (experiment=...):", recipes)):
        listed = {s.split()[0] for s in _section(help_text, title)}
        assert listed == names, (title, listed ^ names)
        assert all(len(s.split()) > 3 for s in _section(help_text, title))  # name + what it does
    assert "experiment: paper_r101_aspp, paper_vgg16, release, release_v3plus, toy, toy_pretrain" in help_text


def test_help_gives_five_example_commands_that_compose(help_text: str) -> None:
    from wsss.pipeline.config import compose, validate

    examples = _section(help_text, "Examples:")
    assert len(examples) == 5 and all(e.startswith("wsss ") for e in examples)
    for example in examples:
        cfg = compose([a for a in shlex.split(example)[1:] if a != "-m"])
        validate(cfg)
    assert any(" -m sweep=" in e for e in examples) and any("data=voc" in e for e in examples)


def test_help_is_short_and_holds_no_config_dump(help_text: str) -> None:
    """Stock Hydra --help prints the whole composed config (300 lines); --cfg job is the way to see it."""
    assert len(help_text.splitlines()) < 70
    assert "print_config" not in help_text and "_target_" not in help_text and "== Config ==" not in help_text
    assert "--cfg job" in help_text and "wsss demo" in help_text


def test_train_py_is_the_wsss_entry_point() -> None:
    text = (REPO / "train.py").read_text()
    assert "from wsss.cli import cli" in text and len(re.findall(r"^def ", text, re.M)) == 0


def test_wsss_demo_runs_the_demo_and_anything_else_is_train_py(monkeypatch) -> None:
    from wsss import cli
    from wsss.experiments import demo

    calls: list[tuple[str, list[str] | None]] = []
    monkeypatch.setattr(demo, "main", lambda argv=None: calls.append(("demo", argv)))
    monkeypatch.setattr(cli, "cli", lambda argv=None: calls.append(("train", argv)) or 0)
    monkeypatch.setattr(sys, "argv", ["wsss", "demo", "--resume", "seed=1"])
    assert cli.entry() == 0
    monkeypatch.setattr(sys, "argv", ["wsss", "stage=cls", "experiment=toy"])
    assert cli.entry() == 0
    assert calls == [("demo", ["--resume", "seed=1"]), ("train", None)]


def test_hints_name_the_command_the_user_ran(monkeypatch) -> None:
    """A "produce it first with:" hint pastes as typed: ``wsss ...`` from the console script."""
    from conftest import compose_config
    from wsss.pipeline.hints import command

    cfg = compose_config(["stage=maps", "experiment=toy", "exp=e1"])
    monkeypatch.setattr(sys, "argv", ["/venv/bin/wsss", "stage=maps"])
    assert command(cfg, ["cls"]).startswith("wsss stage=cls ")
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), "stage=maps"])
    assert command(cfg, ["cls"]).startswith("python train.py stage=cls ")
