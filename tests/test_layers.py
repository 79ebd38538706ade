"""Causal dilated conv, the gated residual stack and the mel upsampler (wavflow/layers.py)."""
from __future__ import annotations

import pytest
import torch

from wavflow.layers import (
    CausalConv1d,
    MelUpsampler,
    ResidualBlock,
    WaveNetStack,
    dilations_for,
    flatten_stack,
    receptive_field,
)


@pytest.mark.parametrize("layers,cycles,kernel,expected", [(24, 4, 3, 505), (30, 3, 3, 6139), (12, 2, 3, 253),
                                                           (24, 4, 2, 253), (10, 1, 3, 2047)])
def test_receptive_field_formula(layers, cycles, kernel, expected):
    assert receptive_field(kernel, dilations_for(layers, cycles)) == expected


def test_dilation_cycles():
    assert dilations_for(24, 4) == (1, 2, 4, 8, 16, 32) * 4
    with pytest.raises(ValueError):
        dilations_for(10, 3)


def _input_gradient(module, x: torch.Tensor, t: int, *extra) -> torch.Tensor:
    """|d sum_c out[0, c, t] / d x[0, :, t']| summed over input channels, for every t'."""
    x = x.clone().requires_grad_(True)
    module(x, *extra)[0, :, t].sum().backward()
    return x.grad[0].abs().sum(dim=0)


@pytest.mark.parametrize("kernel,dilation", [(2, 1), (3, 4), (5, 3)])
def test_causal_conv_sees_exactly_its_taps(kernel, dilation):
    torch.manual_seed(1)
    conv = CausalConv1d(3, 4, kernel, dilation).double()
    x = torch.randn(1, 3, 40, dtype=torch.float64)
    t = 30
    g = _input_gradient(conv, x, t)
    taps = {t - j * dilation for j in range(kernel)}
    for tp in range(40):
        assert (g[tp] != 0) == (tp in taps), f"t'={tp}"
    assert conv(x).shape == (1, 4, 40)


@pytest.mark.parametrize("kernel,layers,cycles", [(3, 6, 2), (2, 8, 2)])
def test_stack_is_causal_and_reaches_its_receptive_field(kernel, layers, cycles):
    torch.manual_seed(2)
    stack = WaveNetStack(1, 8, 16, 8, cond_channels=0, kernel_size=kernel, layers=layers, cycles=cycles).double()
    rf = stack.receptive_field
    assert rf == receptive_field(kernel, dilations_for(layers, cycles))
    T = rf + 20
    t = T - 5
    g = _input_gradient(stack, torch.randn(1, 1, T, dtype=torch.float64), t)
    assert torch.all(g[t + 1:] == 0), "output depends on the future"
    assert torch.all(g[: t - rf + 1] == 0), "output sees beyond the receptive field"
    assert g[t - rf + 1] != 0 and g[t] != 0, "receptive field not reached"


def test_conditioning_enters_at_the_same_step_only():
    """The mel reaches each gate through a 1x1 conv: out[t] depends on c[t'] for t' in the receptive field only."""
    torch.manual_seed(3)
    stack = WaveNetStack(1, 8, 16, 8, cond_channels=5, kernel_size=3, layers=4, cycles=2).double()
    x = torch.randn(1, 1, 30, dtype=torch.float64)
    c = torch.randn(1, 5, 30, dtype=torch.float64, requires_grad=True)
    t = 25
    stack(x, c)[0, :, t].sum().backward()
    g = c.grad[0].abs().sum(0)
    assert torch.all(g[t + 1:] == 0) and g[t] != 0
    assert torch.all(g[: t - stack.receptive_field + 1] == 0)


def test_residual_block_shapes_and_gate():
    torch.manual_seed(4)
    block = ResidualBlock(8, 12, 6, 5, kernel_size=3, dilation=2)
    x, c = torch.randn(2, 8, 17), torch.randn(2, 5, 17)
    res, skip = block(x, c)
    assert res.shape == (2, 8, 17) and skip.shape == (2, 6, 17)
    # the gate by hand: tanh of the first half times sigmoid of the second, then the fused 1x1
    z = block.conv(x) + block.cond(c)
    g = torch.tanh(z[:, :6]) * torch.sigmoid(z[:, 6:])
    rs = block.res_skip(g)
    torch.testing.assert_close(skip, rs[:, 8:])
    torch.testing.assert_close(res, (x + rs[:, :8]) * 0.5 ** 0.5)
    with pytest.raises(ValueError):
        ResidualBlock(8, 11, 6, 5, 3, 1)


def test_upsampler_length_and_frame_locality():
    torch.manual_seed(5)
    up = MelUpsampler(n_mels=80, channels=16).double()
    assert up.hop == 256
    F = 12
    mel = torch.randn(2, 80, F, dtype=torch.float64, requires_grad=True)
    out = up(mel)
    assert out.shape == (2, 16, F * 256)
    # sample n lies in frame n // 256; the context conv (kernel 5) and the smoothing convs reach a few frames only
    n = 6 * 256 + 100
    out[0, :, n].sum().backward()
    touched = (mel.grad[0].abs().sum(0) != 0).nonzero().flatten().tolist()
    assert 6 in touched and all(abs(f - 6) <= 3 for f in touched)
    assert mel.grad[1].abs().sum() == 0  # utterances do not mix


def test_upsampler_starts_as_a_smooth_interpolator():
    """At initialisation the smoothing convs are box filters: a constant context gives a constant output."""
    up = MelUpsampler(n_mels=4, channels=4)
    with torch.no_grad():
        up.context.weight.zero_()
        up.context.bias.fill_(0.5)
    out = up(torch.zeros(1, 4, 6))
    # away from the edges (zero padding) every sample equals the frame value
    torch.testing.assert_close(out[..., 256:-256], torch.full_like(out[..., 256:-256], 0.5))


@pytest.mark.parametrize("kernel", [2, 3])
def test_flat_stack_is_the_stack_one_step_at_a_time(kernel):
    """flatten_stack is the one matrix layout every fast path starts from: its step-by-step evaluation (ring
    buffers, the reference of the compiled loops) equals the stack's parallel forward."""
    torch.manual_seed(6)
    stack = WaveNetStack(1, 8, 16, 6, cond_channels=5, kernel_size=kernel, layers=6, cycles=2).double()
    T = 40
    x, c = torch.randn(2, 1, T, dtype=torch.float64), torch.randn(2, 5, T, dtype=torch.float64)
    flat = flatten_stack(stack)
    assert flat.conv_w.shape == (6, 16, kernel * 8) and flat.cond_w.shape == (6, 16, 5)
    assert flat.rs_w.shape == (6, 8 + 6, 8) and flat.dilations == stack.dilations
    for j in range(kernel):  # [out, in]: columns j * R + r are tap j, (k - 1 - j) * d steps back
        assert torch.equal(flat.tap(3, j), stack.blocks[3].conv.weight[:, :, j])
    step = flat.stepper(2, torch.float64, "cpu")
    cond = torch.einsum("bct,lgc->tlbg", c, flat.cond_w)
    steps = torch.stack([step(x[:, 0, t], t, cond[t]) for t in range(T)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(steps, stack(x, c), atol=1e-12, rtol=0)
