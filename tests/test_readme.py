"""Every command of the README's code blocks works: run verbatim where that is cheap, composed (the
config ``--cfg job`` would print, validated) or dry-run where running it is a pipeline. A README command
that no rule here knows fails the suite, so a new command gets its check. Also: the README is a guide of
at most 250 lines, and no tracked file points outside the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, copy_source, run_ok

README = (REPO / "README.md").read_text()
MAX_LINES = 250
OUTSIDE = ("SPEC" + ".md", ".." + "/shared")
"""Names of files outside the repository (spelled in two parts so this file does not hold them)."""


def commands(text: str = README) -> list[str]:
    """The shell commands of the ```bash blocks: continuation lines joined, comments dropped."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if line:
                out.append(line)
    return out


COMMANDS = commands()


def _compose(overrides: list[str]) -> None:
    """What ``wsss <overrides>`` would run: composed and validated (``-m`` composes the job's config)."""
    from wsss.pipeline.config import compose, validate

    cfg = compose([o for o in overrides if o != "-m"])
    validate(cfg)


def _help_lists_flags(module: list[str], args: list[str]) -> None:
    """A module CLI whose run needs real data: its ``--help`` works and knows every flag the README uses."""
    text = run_ok([sys.executable, *module, "--help"]).stdout
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in text, f"{shlex.join(module)} has no option {flag}"


def _make(args: list[str]) -> str:
    """``make -n``: the recipe exists and expands (nothing runs; the recursive install is printed only)."""
    return run_ok(["make", "-n", "--no-print-directory", *args]).stdout


def check(command: str, variables: dict[str, str], tmp_path: Path) -> None:
    """Run or compose one README command (``variables``: shell assignments of earlier lines)."""
    for name, value in variables.items():
        command = command.replace(f"${name}", value)
    argv = shlex.split(command)
    head, args = argv[0], argv[1:]
    if head in ("wsss", ".venv/bin/wsss"):
        if args == ["--help"]:
            wsss = Path(sys.executable).parent / "wsss"
            assert wsss.is_file(), f"{wsss} is missing: run make install (pyproject.toml's [project.scripts])"
            assert "Recipes (experiment=...):" in run_ok([str(wsss), "--help"], cwd=tmp_path).stdout
        else:
            _compose(args)
    elif head == "make":
        printed = _make(args)
        if any(a.startswith("stage=") for a in args):
            line = next(s for s in printed.splitlines() if " train.py " in s)
            _compose(shlex.split(line.split(" train.py ", 1)[1]))
    elif head in ("python", ".venv/bin/python") and args[:2] == ["-m", "pip"]:
        source = copy_source(tmp_path / "source")  # the build leaves build/ and dist/ behind
        run_ok([sys.executable, *args], cwd=source)
        assert list((source / "dist").glob("wsss-*.whl"))
    elif head == "python" and args[:2] == ["-m", "wsss.bench.estimate"] and "-m" in args[2:]:
        _compose([a for a in args[2:] if not a.startswith("--")])  # a sweep's plan composes every job: slow
    elif head == "python" and args[:2] == ["-m", "wsss.bench.estimate"]:
        run_ok([sys.executable, *args, *([] if "--dry-run" in args else ["--dry-run"])], cwd=tmp_path)
    elif head == "python" and args[:2] == ["-m", "wsss.pipeline.store"]:
        run_ok([sys.executable, *args, *(["--dry-run"] if "gc" in args else [])], cwd=tmp_path)
    elif head == "python" and args[:1] == ["-m"]:
        _help_lists_flags(args[:2], args[2:])
    elif head == "python" and args[0].startswith("bench/"):
        _help_lists_flags([args[0]], args[1:])
    else:
        pytest.fail(f"no rule checks this README command yet: {command!r} (add one to tests/test_readme.py)")


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[c[:60] for c in COMMANDS])
def test_readme_command_works(index: int, tmp_path: Path) -> None:
    variables: dict[str, str] = {}
    for earlier in COMMANDS[:index]:
        if re.fullmatch(r"[A-Z_]+=\S+", earlier):
            name, value = earlier.split("=", 1)
            variables[name] = value
    command = COMMANDS[index]
    if re.fullmatch(r"[A-Z_]+=\S+", command):
        return  # a shell assignment: used by the commands after it
    check(command, variables, tmp_path)


def test_the_commands_cover_the_guide() -> None:
    """The blocks hold the commands a user adapts: the two commands, stages, data, sweeps, the store."""
    assert len(COMMANDS) >= 25
    for expected in ("make demo", "make test", "wsss --help", "wsss stage=pipeline experiment=paper_vgg16"):
        assert any(expected in c for c in COMMANDS), expected
    stages = {a.split("=")[1] for c in COMMANDS for a in c.split() if a.startswith("stage=")}
    assert {"cls", "maps", "refine", "pseudo", "seg", "eval", "predict", "pipeline"} <= stages


def test_a_broken_command_fails_its_check(tmp_path: Path) -> None:
    """The rules catch what breaks: a key that does not exist, a flag a module lost, an unknown kind."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="cls.epoch"):
        check("wsss stage=cls experiment=toy cls.epoch=3", {}, tmp_path)
    with pytest.raises(AssertionError, match="has no option --no-such-flag"):
        check("python -m wsss.data.verify --root /data --no-such-flag", {}, tmp_path)
    with pytest.raises(pytest.fail.Exception, match="no rule checks"):
        check("curl https://example.org", {}, tmp_path)
    assert commands("```bash\nwsss a=1 \\\n  b=2   # note\n\nW=x\n```\n") == ["wsss a=1 b=2", "W=x"]


def test_readme_is_a_guide_of_at_most_250_lines() -> None:
    assert len(README.splitlines()) <= MAX_LINES
    for section in (
        "## Two commands",
        "## What `make demo` shows",
        "## Stages",
        "## Your own data and weights",
        "## Sweeps and launchers",
        "## Where outputs go",
        "## Troubleshooting",
        "## Design notes",
    ):
        assert section in README, section
    assert README.count("![") == 1  # one picture
    for doc in re.findall(r"\]\((docs/[^)]+|LICENSE)\)", README):
        assert (REPO / doc).is_file(), doc
    for history in ("issue 15", "first machine"):
        assert history not in README and history not in (REPO / "docs" / "toy.md").read_text()


def test_no_tracked_file_points_outside_the_repository() -> None:
    """The repository names no file outside itself: not the method's fact sheet, not the folder beside the
    checkout (docs/protocol.md holds the facts)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = []
    for name in tracked.stdout.split("\0"):
        path = REPO / name
        if not name or not path.is_file() or path.suffix in (".png", ".npz", ".ckpt"):
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert not offenders, offenders
