"""The layer contract of src/wsss: imports only go down (or sideways within a package), never in a cycle.

Layers, bottom first (``LAYERS``): a module may import wsss modules of its own layer or of a lower one.
Every import counts, also one inside a function; a function-level import of wsss must carry a comment
saying why it is not at the top (it keeps torch, or another heavy import, out of a light path).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "wsss"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("wsss", "wsss.errors", "wsss.constants"),
    ("wsss.ddp",),
    ("wsss.pipeline",),
    ("wsss.method",),
    ("wsss.data",),
    ("wsss.models",),
    ("wsss.tasks",),
    ("wsss.stages",),
    ("wsss.experiments",),
    ("wsss.bench",),
    ("wsss.cli",),
)
"""Units of wsss from the ground floor up: the pipeline (declarations, runner, provenance, store) knows
no method, data or network; the method's maths knows no files; stages use everything below them;
experiments (sweeps, reports, the demo), the cost model and the ``wsss`` command sit on top."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of a module: ``wsss.pipeline.runner`` -> ``wsss.pipeline``."""
    every = sorted((u for units in LAYERS for u in units), key=len, reverse=True)
    for u in every:
        if module == u or (u != "wsss" and module.startswith(u + ".")):
            return u
    raise AssertionError(f"{module} belongs to no layer of LAYERS; add its package there")


def layer(module: str) -> int:
    u = unit(module)
    return next(i for i, units in enumerate(LAYERS) if u in units)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported wsss module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend(
                    (a.name, child.lineno, in_function) for a in child.names if a.name.startswith("wsss")
                )
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "wsss":
                    found.extend((f"wsss.{a.name}", child.lineno, in_function) for a in child.names)
                elif child.module.startswith("wsss."):
                    found.append((child.module, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    assert layer("wsss.pipeline.runner") == 2 and layer("wsss.bench.plan") == 9 and layer("wsss") == 0
    for name in MODULES:
        unit(name)


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{name}:{line} imports {target} (layer {layer(target)} > {layer(name)})"
        for name, path in MODULES.items()
        for target, line, _ in imports(path)
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in imports(path):
            while target not in MODULES and "." in target:  # `from wsss.x import y` where y is a name
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_say_why() -> None:
    """A wsss import inside a function carries a comment (on its line or the line above) saying why."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for _, line, in_function in imports(path):
            if not in_function:
                continue
            here, above = lines[line - 1], lines[line - 2] if line >= 2 else ""
            block = [here]
            i = line
            while "(" in here and ")" not in "".join(block) and i < len(lines):  # a parenthesised import
                block.append(lines[i])
                i += 1
            if "#" not in "".join(block) and not above.strip().startswith("#"):
                silent.append(f"{name}:{line}: {here.strip()}")
    assert not silent, "function-level imports without a reason:\n" + "\n".join(silent)


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("wsss.pipeline.runner", "torch"),
        ("wsss.pipeline.config", "torch"),
        ("wsss.data.verify", "torch"),
        ("wsss.experiments.sweeps", "torch"),
        ("wsss.cli", "torch"),
        ("wsss.ddp.jobs", "torch"),
    ],
)
def test_torch_free_paths_stay_torch_free(module: str, heavy: str) -> None:
    """The plan check runs before torch is imported (a refused plan costs about a second)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def calls(path: Path) -> set[str]:
    """The dotted names called in ``path`` (``torch.load``, ``csv.writer``, ``ProcessPoolExecutor``)."""
    return {
        ast.unparse(node.func) for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
    }


@pytest.mark.parametrize(
    ("call", "home"),
    [
        ("torch.load", "models/torch_files.py"),  # the one reader of torch files (with its NaN check)
        ("ProcessPoolExecutor", "method/crf.py"),  # the one CRF process pool
        ("csv.writer", "pipeline/artifacts.py"),  # the one CSV writer
    ],
)
def test_one_home_per_mechanism(call: str, home: str) -> None:
    """Each of these calls is written in one module only; every other module goes through it."""
    found = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if call in calls(path))
    assert found == [home], f"{call} is called in {found}; it belongs in {home} only"
