"""The DRS module: exact suppression, controller init, gradient flow, the activation factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.method.drs import DRS, LAYERS, count_drs, make_activation


def hand_tensor() -> torch.Tensor:
    """(1, 2, 2, 3): channel 0 max 4.0, channel 1 max 10.0, with negatives that ReLU must zero."""
    return torch.tensor(
        [
            [
                [[1.0, -2.0, 4.0], [3.0, 0.5, 2.0]],
                [[10.0, 6.0, -1.0], [5.0, 5.5, 0.0]],
            ]
        ]
    )


def test_fixed_drs_caps_at_delta_times_channel_max() -> None:
    out = DRS(2, mode="fixed", delta=0.55)(hand_tensor())
    # by hand: channel 0 cap 0.55 * 4 = 2.2, channel 1 cap 0.55 * 10 = 5.5
    expected = torch.tensor(
        [
            [
                [[1.0, 0.0, 2.2], [2.2, 0.5, 2.0]],
                [[5.5, 5.5, 0.0], [5.0, 5.5, 0.0]],
            ]
        ]
    )
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
    x = hand_tensor()
    ref = torch.minimum(torch.relu(x), 0.55 * torch.relu(x).amax(dim=(2, 3), keepdim=True))
    assert torch.equal(out, ref)


def test_fixed_drs_delta_one_is_relu() -> None:
    x = torch.randn(2, 5, 7, 7)
    assert torch.equal(DRS(5, "fixed", 1.0)(x), torch.relu(x))


def test_learnable_controller_starts_near_half() -> None:
    torch.manual_seed(0)
    drs = DRS(512, "learnable")
    w = drs.fc[0].weight.detach()
    assert tuple(w.shape) == (512, 512) and drs.fc[0].bias is None
    assert abs(float(w.std()) - 0.01) < 0.0005 and abs(float(w.mean())) < 0.0005
    x = torch.rand(2, 512, 9, 9)
    with torch.no_grad():
        g = drs.controller(torch.relu(x))
        # GAP ~ 0.5 per channel: FC output ~ N(0, 0.01 * sqrt(512 / 4)) = N(0, 0.11), so G ~ 0.5 +- 0.03
        assert g.shape == (2, 512, 1, 1)
        assert abs(float(g.mean()) - 0.5) < 0.01
        assert 0.015 < float(g.std()) < 0.045 and float((g - 0.5).abs().max()) < 0.15
        # and the output is min(X, X_max * G) with that G
        relu = torch.relu(x)
        assert torch.equal(drs(x), torch.minimum(relu, relu.amax(dim=(2, 3), keepdim=True) * g))


def test_gradients_reach_controller_and_flow_through_max() -> None:
    torch.manual_seed(0)
    drs = DRS(4, "learnable")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    drs(x).sum().backward()
    grad = drs.fc[0].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    # the per-channel max pixel gets gradient from every suppressed pixel (no detach of X_max)
    relu = torch.relu(x.detach())
    flat_max = relu.flatten(2).argmax(dim=2)
    grad_at_max = x.grad.flatten(2).gather(2, flat_max[..., None])
    assert bool((grad_at_max > 1.0).all())


def test_fixed_drs_has_no_parameters_and_checks_delta() -> None:
    assert list(DRS(8, "fixed", 0.55).parameters()) == []
    with pytest.raises(ValueError, match="drs.delta"):
        DRS(8, "fixed", 0.0)
    with pytest.raises(ValueError, match="learnable, fixed"):
        DRS(8, "off")


def test_activation_factory_follows_placement() -> None:
    act = make_activation("learnable", 0.55, ["layer2", "layer6"])
    assert isinstance(act("layer2", 16), DRS) and isinstance(act("layer6", 16), DRS)
    relu = act("layer1", 16)
    assert type(relu) is nn.ReLU and relu.inplace is False
    assert all(type(make_activation("off")(name, 8)) is nn.ReLU for name in LAYERS)
    assert make_activation("fixed", 0.4)("layer3", 8).delta == 0.4
    assert count_drs(nn.Sequential(*[make_activation("learnable", placement=[])(n, 4) for n in LAYERS])) == 0


def test_activation_factory_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="drs.placement holds \\['layer7'\\]"):
        make_activation("learnable", placement=["layer1", "layer7"])
    with pytest.raises(ValueError, match="drs=learnable\\|fixed\\|off"):
        make_activation("sometimes")
    with pytest.raises(ValueError, match="drs.delta"):
        make_activation("fixed", 1.5)
