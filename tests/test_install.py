"""The install: ``make install`` installs the locks, whose pins satisfy pyproject.toml's ranges."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

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
