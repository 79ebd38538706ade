"""Layers shared by the WaveNet teacher and the IAF student: causal dilated conv, the gated residual stack, and
the mel upsampler (design.md section 4).

Shapes: audio-rate tensors are [B, C, T]; mels are [B, n_mels, F] with F frames for F * hop samples.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def dilations_for(layers: int, cycles: int) -> tuple[int, ...]:
    """Dilations 1, 2, 4, ... restarting every layers/cycles layers: 24 layers in 4 cycles -> (1..32) x 4."""
    if layers % cycles != 0:
        raise ValueError(f"layers ({layers}) must be a multiple of cycles ({cycles})")
    per_cycle = layers // cycles
    return tuple(2 ** (i % per_cycle) for i in range(layers))


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Samples a causal dilated stack sees, the current one included: (k - 1) * sum(dilations) + 1.

    505 for 24 layers / 4 cycles / k3, 6139 for 30 / 3 / k3, 253 for 12 / 2 / k3.
    """
    return (kernel_size - 1) * sum(dilations) + 1


class CausalConv1d(nn.Conv1d):
    """Conv1d whose output at t sees inputs at t, t - d, ..., t - (k-1) d only: left zero padding of (k-1) d.

    [B, C_in, T] -> [B, C_out, T]. Tap j of the kernel multiplies the input (k - 1 - j) * d steps back, which is
    the layout the cached generator relies on when it flattens the kernel into one matrix.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ResidualBlock(nn.Module):
    """One gated WaveNet layer: z = causal_conv(x) + cond_proj(c); g = tanh(z_a) * sigmoid(z_b);
    residual x + res(g) (scaled by sqrt(1/2) so the variance stays put down the stack) and skip(g).

    x [B, R, T], c [B, C, T] -> (x_next [B, R, T], skip [B, S, T]).
    """

    def __init__(self, residual_channels: int, gate_channels: int, skip_channels: int, cond_channels: int,
                 kernel_size: int, dilation: int):
        super().__init__()
        if gate_channels % 2:
            raise ValueError(f"gate_channels must be even (tanh and sigmoid halves), got {gate_channels}")
        self.dilation = dilation
        self.conv = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation)
        # Each layer has its own 1x1 projection of the upsampled mel into its gate (no bias: the conv has one).
        self.cond = nn.Conv1d(cond_channels, gate_channels, 1, bias=False) if cond_channels > 0 else None
        # residual and skip 1x1 convs fused into one: output channels [0, R) residual, [R, R + S) skip.
        self.res_skip = nn.Conv1d(gate_channels // 2, residual_channels + skip_channels, 1)
        self.residual_channels = residual_channels

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.conv(x)
        if self.cond is not None:
            z = z + self.cond(c)
        a, b = z.chunk(2, dim=1)
        rs = self.res_skip(torch.tanh(a) * torch.sigmoid(b))
        res, skip = rs[:, : self.residual_channels], rs[:, self.residual_channels:]
        return (x + res) * math.sqrt(0.5), skip


class WaveNetStack(nn.Module):
    """The causal gated residual stack: input 1x1 conv, `layers` ResidualBlocks, summed skips.

    x [B, in_channels, T], c [B, cond_channels, T] (already at audio rate) -> skip sum [B, S, T], where output t
    depends on x[..., t - receptive_field + 1 .. t] only. Shift the input right by one outside the stack to
    predict x[t] from x[<t]. Used by the WaveNet teacher (24 layers, 128/256/128) and by each IAF flow of the
    student (10 layers, 64 channels).
    """

    def __init__(self, in_channels: int = 1, residual_channels: int = 128, gate_channels: int = 256,
                 skip_channels: int = 128, cond_channels: int = 80, kernel_size: int = 3,
                 layers: int = 24, cycles: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.dilations = dilations_for(layers, cycles)
        self.residual_channels, self.gate_channels, self.skip_channels = residual_channels, gate_channels, skip_channels
        self.cond_channels = cond_channels
        self.input = nn.Conv1d(in_channels, residual_channels, 1)
        self.blocks = nn.ModuleList(
            ResidualBlock(residual_channels, gate_channels, skip_channels, cond_channels, kernel_size, d)
            for d in self.dilations
        )

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.kernel_size, self.dilations)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(x)
        skips = 0
        for block in self.blocks:
            h, s = block(h, c)
            skips = skips + s
        # sqrt(1/L) keeps the skip sum's scale independent of depth
        return skips * math.sqrt(1.0 / len(self.blocks))


class MelUpsampler(nn.Module):
    """Mel frames -> audio-rate conditioning (design.md section 4), shared by teacher and student.

    A frame-context conv (kernel 5, across frames) then one stage per factor (default 4 x 4 x 4 x 4 = 256 = hop),
    each a nearest-neighbour stretch followed by a small smoothing conv. Nearest stretch + conv, unlike a
    transposed conv, cannot leave checkerboard artefacts; the smoothing convs start as moving averages.

    mel [B, n_mels, F] -> [B, channels, F * hop] (crop to the audio length T afterwards: F * hop >= T).
    """

    def __init__(self, n_mels: int = 80, channels: int = 80, factors: Sequence[int] = (4, 4, 4, 4),
                 context_kernel: int = 5, smooth_kernel: int = 5):
        super().__init__()
        self.factors = tuple(factors)
        self.hop = math.prod(self.factors)
        self.channels = channels
        self.context = nn.Conv1d(n_mels, channels, context_kernel, padding=context_kernel // 2)
        self.smooth = nn.ModuleList(
            nn.Conv1d(channels, channels, smooth_kernel, padding=smooth_kernel // 2) for _ in self.factors
        )
        with torch.no_grad():
            for conv in self.smooth:  # identity across channels, box filter in time
                conv.weight.zero_()
                conv.weight[torch.arange(channels), torch.arange(channels), :] = 1.0 / smooth_kernel
                conv.bias.zero_()

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.context(mel), 0.4)
        for factor, conv in zip(self.factors, self.smooth):
            h = F.leaky_relu(conv(torch.repeat_interleave(h, factor, dim=-1)), 0.4)
        return h
