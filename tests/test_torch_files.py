"""The one reader of torch files: a damaged file raises the caller's error with the reason and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.errors import CorruptArtifactError, WeightsError
from wsss.models.torch_files import load_torch_file, non_finite_tensors


def test_a_truncated_file_raises_the_callers_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(3)}, path)
    assert torch.equal(load_torch_file(path, error=WeightsError, what="x", fix="y")["a"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptArtifactError, match=r"w\.pt: not readable \(\w+Error: .*\); remake it$"):
        load_torch_file(path, error=CorruptArtifactError, what="not readable", fix="remake it")
    with pytest.raises(WeightsError, match=r"^backbone\.weights=\S+w\.pt: bad \("):
        load_torch_file(path, error=WeightsError, what="bad", fix="f", name=f"backbone.weights={path}")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pt"
    torch.save({"f": Path("x")}, path)  # an object that is not a tensor or a plain container
    with pytest.raises(WeightsError, match=r"code\.pt: x \(UnpicklingError"):
        load_torch_file(path, error=WeightsError, what="x", fix="y")


def test_non_finite_tensors_names_float_tensors_with_nan_or_inf_only() -> None:
    state = {
        "ok": torch.zeros(2),
        "nan": torch.tensor([0.0, float("nan")]),
        "inf": torch.tensor([float("-inf")]),
        "int": torch.tensor([1]),
        "meta": 3,
    }
    assert non_finite_tensors(state) == ["nan", "inf"]
