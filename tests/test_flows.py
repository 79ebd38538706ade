"""Flow layers: exact inverses, log-determinants against the autograd Jacobian, the W^-1 cache."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wavflow.flows import AffineCoupling, Invertible1x1Conv, random_rotation, squeeze, unsqueeze


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of a single example x [1, C, G], by brute force."""
    flat = lambda v: fn(v.view_as(x))[0].reshape(-1)  # noqa: E731  (one expression, for jacobian)
    jac = torch.autograd.functional.jacobian(flat, x.reshape(-1))
    return torch.linalg.slogdet(jac)[1]


class TinyNet(nn.Module):
    """A coupling network with non-zero output, so log_s and b actually vary with x_a and cond."""

    def __init__(self, n_a: int, n_b: int, n_cond: int):
        super().__init__()
        self.a = nn.Conv1d(n_a, 8, 3, padding=1)
        self.c = nn.Conv1d(n_cond, 8, 1)
        self.out = nn.Conv1d(8, 2 * n_b, 3, padding=1)

    def forward(self, x_a: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.a(x_a) + self.c(cond)))


def test_squeeze_order_and_round_trip():
    x = torch.randn(2, 3, 40)
    s = squeeze(x, 8)
    assert s.shape == (2, 24, 5)
    for c in range(3):
        for j in range(8):
            torch.testing.assert_close(s[:, c * 8 + j], x[:, c, j::8], rtol=0, atol=0)
    assert torch.equal(unsqueeze(s, 8), x)
    # a tail shorter than a group is dropped
    assert torch.equal(unsqueeze(squeeze(torch.cat([x, x[..., :5]], -1), 8), 8), x)


@pytest.mark.parametrize("c", [2, 4, 6, 8])
def test_random_rotation_is_orthonormal_with_det_plus_one(c):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        w = random_rotation(c, g).double()
        torch.testing.assert_close(w @ w.T, torch.eye(c, dtype=torch.float64), atol=1e-6, rtol=0)
        assert abs(torch.linalg.det(w).item() - 1.0) < 1e-5
    assert abs(torch.linalg.det(Invertible1x1Conv(c).weight.double()).item() - 1.0) < 1e-5


def test_invertible_conv_inverse_and_logdet():
    conv = Invertible1x1Conv(6).double()
    with torch.no_grad():  # move off the orthonormal start so log|det W| is not 0
        conv.weight.add_(0.3 * torch.randn(6, 6, dtype=torch.float64))
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    y, logdet = conv(x)
    assert logdet.shape == (3,)
    torch.testing.assert_close(conv.inverse(y), x, atol=1e-10, rtol=0)
    expected = jacobian_logdet(conv, x[:1])
    assert abs(expected.item()) > 0.1
    torch.testing.assert_close(logdet, expected.expand(3), atol=1e-8, rtol=0)
    # float32 round trip within 1e-4
    conv32 = conv.float()
    x32 = x.float()
    torch.testing.assert_close(conv32.inverse(conv32(x32)[0]), x32, atol=1e-4, rtol=0)


def test_logdet_gradient_matches_closed_form():
    """d log|det W| / dW = W^-T: the float64 slogdet path must be differentiable and right."""
    conv = Invertible1x1Conv(4)
    with torch.no_grad():
        conv.weight.add_(0.2 * torch.randn(4, 4))
    conv.log_abs_det().backward()
    torch.testing.assert_close(conv.weight.grad, torch.linalg.inv(conv.weight.detach()).T, atol=1e-5, rtol=1e-5)


def test_inverse_cache_follows_every_kind_of_weight_change():
    torch.manual_seed(1)
    conv = Invertible1x1Conv(8)
    x = torch.randn(2, 8, 16)

    def check():
        with torch.no_grad():
            y, _ = conv(x)
            torch.testing.assert_close(conv.inverse(y), x, atol=1e-5, rtol=0)

    check()
    with torch.no_grad():
        first = conv.weight_inverse()
        assert conv.weight_inverse() is first  # cached while W is unchanged
    # an optimizer step
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    y, logdet = conv(x)
    (y.square().mean() - logdet.mean()).backward()
    opt.step()
    with torch.no_grad():
        assert conv.weight_inverse() is not first
    check()
    # load_state_dict, a .data in-place edit (which bypasses the version counter) and .data assignment
    state = {"weight": torch.linalg.qr(torch.randn(8, 8))[0] + 0.1 * torch.randn(8, 8)}
    conv.load_state_dict(state)
    check()
    conv.weight.data.mul_(1.5)
    check()
    conv.weight.data = torch.randn(8, 8) + 3 * torch.eye(8)
    check()
    # dtype move
    conv.double()
    x = x.double()
    check()


def test_inverse_cache_made_in_inference_mode_is_usable_with_autograd():
    conv = Invertible1x1Conv(4)
    conv.weight.requires_grad_(False)
    with torch.inference_mode():
        conv.inverse(torch.randn(1, 4, 3))
    x = torch.randn(1, 4, 3, requires_grad=True)
    conv.inverse(x).sum().backward()  # would fail if the cached W^-1 were an inference tensor
    assert x.grad is not None


def test_inverse_is_differentiable_in_the_weight_while_training():
    conv = Invertible1x1Conv(4)
    conv.inverse(torch.randn(1, 4, 5)).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_affine_coupling_inverse_and_logdet():
    torch.manual_seed(2)
    layer = AffineCoupling(TinyNet(3, 3, 5)).double()
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    cond = torch.randn(2, 5, 9, dtype=torch.float64)
    y, logdet = layer(x, cond)
    torch.testing.assert_close(y[:, :3], x[:, :3], rtol=0, atol=0)  # the first half passes through
    torch.testing.assert_close(layer.inverse(y, cond), x, atol=1e-10, rtol=0)
    for i in range(2):
        expected = jacobian_logdet(lambda v, i=i: layer(v, cond[i: i + 1]), x[i: i + 1])
        assert abs(expected.item()) > 0.01
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=0)
    layer32 = layer.float()
    torch.testing.assert_close(layer32.inverse(layer32(x.float(), cond.float())[0], cond.float()), x.float(),
                               atol=1e-4, rtol=0)
