"""The install: ``make install`` installs the locks (torch's CPU build from PyTorch's index), whose pins
satisfy pyproject.toml's ranges; the wheel ships the configs and the ``wsss`` command and works outside the
checkout."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO, copy_source, run_ok
from wsss.pipeline.config import CONF_DIR

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _lock(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements" / f"{name}.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")
            assert canonicalize_name(package) not in pins, f"{package} pinned twice in {name}.lock"
            pins[canonicalize_name(package)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [
        Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["crf"], *extras["sweep"]]
    ]


@pytest.mark.parametrize("lock", ["cpu", "gpu"])
def test_every_declared_dependency_is_pinned_within_its_range(lock: str) -> None:
    """Finding 1: a fresh machine resolved other versions than the ones the suite was proven on."""
    pins = _lock(lock)
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in {lock}.lock (run make lock)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_torch_is_the_constrained_version_cpu_build_on_cpu_cuda_build_on_gpu() -> None:
    constrained = Version((REPO / "constraints-cpu.txt").read_text().split("torch==")[1].split()[0])
    cpu, gpu = _lock("cpu")["torch"], _lock("gpu")["torch"]
    assert cpu.public == gpu.public == str(constrained)
    assert cpu.local == "cpu" and gpu.local is None
    assert {n for n in _lock("gpu") if n.startswith("nvidia-")} and not {
        n for n in _lock("cpu") if n.startswith("nvidia-")
    }


def test_make_install_installs_the_lock_with_the_cpu_pin_and_checks_it() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("$(STAMP):") : makefile.index("\nlock:")]
    assert "LOCK := requirements/$(if $(HAS_GPU),gpu,cpu).lock" in makefile
    assert "$(STAMP): pyproject.toml constraints-cpu.txt $(LOCK)" in recipe
    assert "pip install -q $(PIP_PIN) -r $(LOCK)" in recipe  # PIP_PIN = -c constraints-cpu.txt without a GPU
    assert "pip install -q --no-deps -e ." in recipe and "pip check" in recipe
    assert re.search(r"^lock: .*##", makefile, re.M) and (REPO / "requirements" / "lock.sh").is_file()
    assert "make install" in (REPO / ".ci" / "run").read_text()


def test_make_install_takes_torch_alone_from_the_pytorch_cpu_index_then_the_lock_without_it() -> None:
    """torch==X+cpu is served only by PyTorch's CPU index; naming it for the whole lock would make pip ask
    an unreachable index once per pin (seconds each), so torch comes first, alone, from its own file."""
    lines = [
        s for s in (REPO / "requirements" / "torch-cpu.txt").read_text().splitlines() if not s.startswith("#")
    ]
    assert lines == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        f"torch=={_lock('cpu')['torch']}",
    ]
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("$(STAMP):") : makefile.index("\nlock:")]
    torch_step = recipe.index("--no-deps $(PIP_PIN) -r $(TORCH_CPU)")
    assert "TORCH_CPU := requirements/torch-cpu.txt" in makefile and "$(TORCH_CPU)" in recipe.splitlines()[0]
    assert "$(if $(HAS_GPU),," in recipe.splitlines()[3]  # the CUDA build of gpu.lock comes from PyPI
    assert torch_step < recipe.index("-r $(LOCK)") and "download.pytorch.org" not in makefile
    for name in ("cpu", "gpu"):
        assert "index-url" not in (REPO / "requirements" / f"{name}.lock").read_text()
    lock_sh = (REPO / "requirements" / "lock.sh").read_text()
    assert '--extra-index-url "$TORCH_CPU_INDEX"' in lock_sh and "> requirements/torch-cpu.txt.tmp" in lock_sh
    assert "PIP_CONSTRAINT" not in makefile  # constraints on the command line (-c), never the environment


def test_python_requirement_matches_the_lock() -> None:
    """numpy 2.4 and scipy 1.17 (the lock's) need Python >= 3.11: pyproject, ruff and the README agree."""
    text = (REPO / "pyproject.toml").read_text()
    project = tomllib.loads(text)
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    pins = _lock("cpu")
    assert pins["numpy"] >= Version("2.3") and pins["scipy"] >= Version("1.16")  # both dropped Python 3.10
    assert "Python >= 3.11" in (REPO / "README.md").read_text()
    assert project["project"]["license"] == "MIT"
    assert (
        "MIT License" in (REPO / "LICENSE").read_text()
        and "the wsss authors" in (REPO / "LICENSE").read_text()
    )


# --- the wheel: configs inside, the wsss command, outside the checkout ------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wsss's wheel, built (no network, no build isolation) from a copy of what a source checkout holds."""
    src = copy_source(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    run_ok(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ]
    )
    (found,) = out.glob("wsss-*.whl")
    return found


def test_the_wheel_ships_every_config_the_license_and_the_wsss_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"wsss/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    configs -= {c for c in configs if c.startswith("wsss/conf/local/")}  # per machine, git-ignored
    assert len(configs) > 60 and configs <= names, sorted(configs - names)
    assert "wsss/conf/hydra/help/wsss.yaml" in names and "hydra_plugins/wsss_sweeper/wsss_sweeper.py" in names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "[console_scripts]\nwsss = wsss.cli:entry" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "Requires-Python: >=3.11" in metadata and "License-Expression: MIT" in metadata


def test_the_installed_wheel_composes_and_answers_help_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    """A fresh venv that sees the project's dependencies (not its editable wsss) + the wheel, run elsewhere."""
    venv = tmp_path / "venv"
    run_ok([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        run_ok([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    deps = Path(
        sysconfig.get_path("purelib")
    )  # read as a plain folder: its editable-wsss .pth is not processed
    (site / "project_deps.pth").write_text(f"{deps}\n")
    run_ok([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WSSS_RUN_ID")}
    composed = run_ok(
        [str(python), "-c", COMPOSE, "stage=pipeline", "experiment=toy", "drs=fixed"], cwd=elsewhere, env=env
    ).stdout.split()
    assert composed[0] == str(site / "wsss" / "conf") and composed[1:4] == ["pipeline", "tiny", "fixed"]
    assert composed[4] == str(elsewhere / "runs")  # outputs go under the folder it runs in
    help_text = run_ok([str(venv / "bin" / "wsss"), "--help"], cwd=elsewhere, env=env).stdout
    assert "Recipes (experiment=...):" in help_text and "toy_pretrain" in help_text
    job = run_ok(
        [str(venv / "bin" / "wsss"), "stage=cls", "experiment=toy", "--cfg", "job"], cwd=elsewhere, env=env
    )
    assert "name: tiny" in job.stdout and not list(elsewhere.iterdir())  # --cfg job writes nothing
    demo = run_ok([str(venv / "bin" / "wsss"), "demo", "--help"], cwd=elsewhere, env=env).stdout
    assert "make demo" in demo and "--runs" in demo


COMPOSE = """
import sys
import wsss.pipeline.config as c
cfg = c.compose(sys.argv[1:])
print(c.CONF_DIR, cfg.stage, cfg.backbone.name, cfg.drs.mode, cfg.paths.runs)
"""
