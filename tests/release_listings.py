"""Test helper: random-weight state dicts in the release's file formats, from the listings in
tests/data/release_formats/ (the release's formats, docs/protocol.md)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

LISTINGS = Path(__file__).parent / "data" / "release_formats"
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def read_listing(name: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(key, shape, dtype) of every tensor of a release format, in the listing's order."""
    rows = []
    for line in (LISTINGS / f"{name}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), DTYPES[dtype]))
    return rows


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the listing's keys, shapes and dtypes with random values that keep a deep
    network's activations tame: convs ~ N(0, 1 / fan_in), BN weight ~ U(0.5, 1), BN variance ~ U(0.5, 1.5),
    biases and means ~ N(0, 0.1), ``num_batches_tracked`` random counts."""
    g = torch.Generator().manual_seed(seed)
    rows = read_listing(name)
    bn = {key.removesuffix("running_var") for key, _, _ in rows if key.endswith("running_var")}
    state = {}
    for key, shape, dtype in rows:
        if dtype == torch.int64:
            value = torch.randint(0, 1000, shape, generator=g)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith(".weight") and key.removesuffix("weight") in bn:
            value = 0.5 + 0.5 * torch.rand(shape, generator=g)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        state[key] = value
    return state


def save(state: dict[str, torch.Tensor], path: Path, wrapper: str | None = None) -> Path:
    """Write ``state`` as the release does (bare, or inside ``{wrapper: state, ...}``)."""
    torch.save(state if wrapper is None else {wrapper: state, "cur_itrs": 7, "best_score": 0.5}, path)
    return path
