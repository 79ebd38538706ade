"""Invertible building blocks of WaveGlow-style flows: squeeze, invertible 1x1 convolution, affine coupling.

Every layer maps x -> (y, logdet) with logdet = log|det dy/dx| per batch element ([B]), and has an exact inverse.
Tensors are laid out [B, C, G]: C channels (the samples of one squeezed group) by G groups (time / n_group).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def squeeze(x: Tensor, n_group: int) -> Tensor:
    """Fold time into channels: [B, C, T] -> [B, C * n_group, T // n_group].

    Output channel c * n_group + j at group g holds x[:, c, g * n_group + j] (NVIDIA's unfold order, so imported
    conditioning weights line up). A trailing T mod n_group samples are dropped.
    """
    b, c, t = x.shape
    g = t // n_group
    x = x[:, :, : g * n_group].reshape(b, c, g, n_group)
    return x.transpose(2, 3).reshape(b, c * n_group, g)


def unsqueeze(x: Tensor, n_group: int) -> Tensor:
    """The inverse of `squeeze`: [B, C * n_group, G] -> [B, C, G * n_group]."""
    b, cg, g = x.shape
    return x.reshape(b, cg // n_group, n_group, g).transpose(2, 3).reshape(b, cg // n_group, g * n_group)


def random_rotation(channels: int, generator: torch.Generator | None = None) -> Tensor:
    """A random orthonormal [C, C] matrix with determinant +1 (QR of a Gaussian matrix, one column flipped if needed).

    Orthonormal means log|det W| starts at 0 and W is perfectly conditioned; det +1 keeps it a rotation, reachable
    from the identity without crossing the singular matrices (a reflection never is, for gradient descent).
    """
    a = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique QR: the Haar-distributed rotation
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


class Invertible1x1Conv(nn.Module):
    """y = W x over the channels of each group (Glow's invertible 1x1 convolution), W: [C, C].

    log|det dy/dx| = G * log|det W| for G groups. The determinant comes from an LU factorisation in float64
    (slogdet), so it stays accurate even for an ill-conditioned W in float32 or bf16 training. Inference uses
    W^-1, computed in float64 and cached; the cache remembers the exact W it inverted and is rebuilt whenever
    W differs (optimizer step, load_state_dict, .data assignment, device or dtype move), so it cannot go stale.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(random_rotation(channels))  # [C_out, C_in]
        self._inverse_cache: tuple[Tensor, Tensor] | None = None  # (W it was computed from, W^-1)

    def log_abs_det(self) -> Tensor:
        """log|det W| as a 0-d tensor in the weight's dtype, differentiable."""
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, G] -> (W x [B, C, G], logdet [B])."""
        b, _, g = x.shape
        y = F.conv1d(x, self.weight.unsqueeze(-1))
        logdet = (g * self.log_abs_det()).expand(b)
        return y, logdet

    def weight_inverse(self) -> Tensor:
        """W^-1 [C, C]: cached when no gradient is wanted, differentiable otherwise."""
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.inv(w.double()).to(w.dtype)
        cache = self._inverse_cache
        if (cache is None or cache[0].device != w.device or cache[0].dtype != w.dtype
                or not torch.equal(cache[0], w.detach())):
            # Built outside inference mode so the cached tensor stays usable by later ordinary (autograd) code.
            with torch.inference_mode(False), torch.no_grad():
                w0 = w.detach().clone()
                cache = (w0, torch.linalg.inv(w0.double()).to(w0.dtype))
            self._inverse_cache = cache
        return cache[1]

    def inverse(self, y: Tensor) -> Tensor:
        """y [B, C, G] -> W^-1 y."""
        return F.conv1d(y, self.weight_inverse().unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class AffineCoupling(nn.Module):
    """Affine coupling (RealNVP / Glow): the first half of the channels passes through unchanged and sets an
    affine map of the second half.

        x = [x_a, x_b]  (x_a: the first C // 2 channels)
        (b, log_s) = net(x_a, cond)          net returns [B, 2 * (C - C // 2), G]: shift first, log-scale second
        y = [x_a, exp(log_s) * x_b + b],     log|det dy/dx| = sum(log_s)

    The inverse needs only x_a, which y carries unchanged: x_b = (y_b - b) * exp(-log_s).
    `net` is any module; `cond` is passed to it untouched (for WaveGlow: the squeezed mel).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def _params(self, x_a: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        out = self.net(x_a, cond)
        n = out.shape[1] // 2
        return out[:, :n], out[:, n:]

    def forward(self, x: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        """x [B, C, G] -> (y [B, C, G], logdet [B])."""
        n_a = x.shape[1] // 2
        x_a, x_b = x[:, :n_a], x[:, n_a:]
        b, log_s = self._params(x_a, cond)
        y_b = torch.exp(log_s) * x_b + b
        return torch.cat([x_a, y_b], 1), log_s.flatten(1).sum(1)

    def inverse(self, y: Tensor, cond: Any) -> Tensor:
        """y [B, C, G] -> x [B, C, G]."""
        n_a = y.shape[1] // 2
        y_a, y_b = y[:, :n_a], y[:, n_a:]
        b, log_s = self._params(y_a, cond)
        return torch.cat([y_a, (y_b - b) * torch.exp(-log_s)], 1)

