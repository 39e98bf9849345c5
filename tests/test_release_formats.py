"""The authors' DRS classifier / refiner files: random weights in each listed format load into wsss, and
wsss -> release layout -> wsss (and back) is exact."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from release_listings import random_state, read_listing, save

from conftest import make_classifier
from wsss.errors import WeightsError
from wsss.models.release_formats import classifier_wsss_to_release
from wsss.models.weights import detect_format, load_classifier_weights, release_to_wsss

ALIAS_OF = {  # features index -> the release's name of that conv (docs/protocol.md "Weights users bring")
    0: "layer1_conv1", 2: "layer1_conv2", 5: "layer2_conv1", 7: "layer2_conv2", 10: "layer3_conv1",
    12: "layer3_conv2", 14: "layer3_conv3", 17: "layer4_conv1", 19: "layer4_conv2", 21: "layer4_conv3",
    24: "layer5_conv1", 26: "layer5_conv2", 28: "layer5_conv3",
}  # fmt: skip


def network(fmt: str) -> torch.nn.Module:
    if fmt == "drs_refiner":
        return make_classifier("vgg16", refiner=True)
    return make_classifier("vgg16", "learnable" if fmt == "drs_classifier_learnable" else "fixed")


def release_file_state(fmt: str) -> dict[str, torch.Tensor]:
    """Random weights in the listed format; the ``features.N`` aliases hold the same tensors, as in the files."""
    state = random_state(fmt, seed=5)
    for key in state:
        if m := re.match(r"^features\.(\d+)\.(weight|bias)$", key):
            state[key] = state[f"{ALIAS_OF[int(m.group(1))]}.{m.group(2)}"]
    return state


@pytest.mark.parametrize("fmt", ["drs_classifier_learnable", "drs_classifier_fixed", "drs_refiner"])
def test_release_classifier_formats_load_and_round_trip(tmp_path: Path, fmt: str) -> None:
    state = release_file_state(fmt)
    model = network(fmt)
    report = load_classifier_weights(model, save(state, tmp_path / "best.pth", wrapper="model"))
    assert not report.missing and not report.skipped and report.aliases == 26
    conv_indices = model.backbone.conv_indices
    written = classifier_wsss_to_release(model.state_dict(), conv_indices)
    assert [(k, tuple(v.shape), v.dtype) for k, v in written.items()] == read_listing(fmt)
    assert all(torch.equal(written[k], v) for k, v in state.items())
    again, aliases = release_to_wsss(written, conv_indices)
    own = model.state_dict()
    assert (
        aliases == 26 and list(again) == list(own) and all(torch.equal(again[k], v) for k, v in own.items())
    )
    assert detect_format(written) == "release_classifier"  # not mistaken for a segmenter file


def test_only_a_vgg_classifier_can_be_written_in_the_release_layout() -> None:
    state = network("drs_refiner").state_dict()
    state["head.6.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 tensors of this classifier have no place .*'head.6.weight'"):
        classifier_wsss_to_release(state, network("drs_refiner").backbone.conv_indices)
