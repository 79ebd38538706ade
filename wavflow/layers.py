"""Layers shared by the WaveNet teacher and the IAF student: causal dilated conv, the gated residual stack, and
the mel upsampler (design.md section 4); and `FlatStack`, the one matrix layout of a stack that every fast path
(cached generation, the student's step loop and time-major pass, the compiled loops of wavflow/kernels.py)
starts from.

Shapes: audio-rate tensors are [B, C, T]; mels are [B, n_mels, F] with F frames for F * hop samples.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RES_SCALE = math.sqrt(0.5)  # the residual sum's scale in every gated layer: the variance stays put down the stack


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
        return (x + res) * RES_SCALE, skip


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


@dataclass(frozen=True)
class FlatStack:
    """A `WaveNetStack` (one input channel) as plain matrices, for one-step and time-major evaluation: the one
    layout every fast path starts from (`flatten_stack`). Every matrix is [out, in], torch's Linear layout: a
    step is y = x @ W.T, and a row of W is one output's weights (contiguous, as the compiled loops read them).

    L layers, k taps, R residual, G gate, S skip, C conditioning channels:
      in_w, in_b  [R]            input 1x1 conv of the single input channel
      conv_w      [L, G, k * R]  dilated conv; column j * R + r is tap j, which looks (k - 1 - j) * d_l steps
                                 back (tap k - 1 is the current step), of residual channel r
      conv_b      [L, G]
      cond_w      [L, G, C]      each layer's 1x1 projection of the conditioning into its gate (no bias)
      rs_w        [L, R + S, G/2] fused residual and skip 1x1 conv: rows [0, R) residual, [R, R + S) skip
      rs_b        [L, R + S]
    A layer: z = conv_w[l] @ taps + conv_b[l] + cond_w[l] @ c; g = tanh(z[:G/2]) * sigmoid(z[G/2:]);
    rs = rs_w[l] @ g + rs_b[l]; h <- (h + rs[:R]) * RES_SCALE; skips += rs[R:]. Output: skips * skip_scale.
    """

    kernel_size: int
    dilations: tuple[int, ...]
    in_w: torch.Tensor
    in_b: torch.Tensor
    conv_w: torch.Tensor
    conv_b: torch.Tensor
    cond_w: torch.Tensor
    rs_w: torch.Tensor
    rs_b: torch.Tensor

    @property
    def residual_channels(self) -> int:
        return self.in_w.shape[0]

    @property
    def skip_scale(self) -> float:
        """sqrt(1 / L), the scale of the skip sum (WaveNetStack.forward)."""
        return math.sqrt(1.0 / len(self.dilations))

    def tap(self, layer: int, j: int) -> torch.Tensor:
        """conv_w's [G, R] block of tap j (lag (k - 1 - j) * d) of one layer: a view."""
        r = self.residual_channels
        return self.conv_w[layer, :, j * r: (j + 1) * r]

    def stepper(self, batch: int, dtype: torch.dtype,
                device: torch.device | str) -> Callable[[torch.Tensor, int, Sequence[torch.Tensor]], torch.Tensor]:
        """The stack one time step at a time, in plain torch (the reference the compiled loops are tested against).

        Returns step(x [B], t, cond_t) -> skip sum [B, S], for x the stack's input at step t and cond_t each
        layer's conditioning projection at t, [B, G] (no conv bias), called for t = 0, 1, ... in order. Each
        layer keeps a ring of its last (k - 1) d + 1 inputs, zero at first: the causal left padding.
        """
        k, R = self.kernel_size, self.residual_channels
        layers = [(d, torch.zeros(batch, (k - 1) * d + 1, R, dtype=dtype, device=device), self.conv_w[layer].t(),
                   self.conv_b[layer], self.rs_w[layer].t(), self.rs_b[layer])
                  for layer, d in enumerate(self.dilations)]

        def step(x: torch.Tensor, t: int, cond_t: Sequence[torch.Tensor]) -> torch.Tensor:
            h = x[:, None] * self.in_w + self.in_b  # [B, R]
            skips = 0
            for (d, ring, conv_w, conv_b, rs_w, rs_b), c in zip(layers, cond_t, strict=True):
                size = ring.shape[1]
                ring[:, t % size] = h
                # tap j looks (k - 1 - j) d steps back
                taps = ring[:, [(t - (k - 1 - j) * d) % size for j in range(k)]].reshape(batch, k * R)
                a, g = torch.addmm(conv_b + c, taps, conv_w).chunk(2, dim=1)
                rs = torch.addmm(rs_b, torch.tanh(a) * torch.sigmoid(g), rs_w)
                h = (h + rs[:, :R]) * RES_SCALE
                skips = skips + rs[:, R:]
            return skips * self.skip_scale

        return step

    def time_major(self) -> tuple[list[tuple], torch.Tensor]:
        """The layers as [in, out] matrices for time-major GEMMs (rows [T, in] @ W), constants folded in for a
        gate of one sigmoid: tanh(a) = 2 sigmoid(2a) - 1, so the tanh half of every gate column is doubled and
        g = (sigmoid(2a) - 1/2) sigmoid(b), half the gate output, is what the 1x1 convs read (their weights
        take the 2, with RES_SCALE on the residual and skip_scale on the skip).

        Returns (per layer: (dilation, k taps [R, G] (tap j looks (k - 1 - j) d back), cond [C, G], gate bias
        [G], residual [G/2, R] and its bias [R] scaled by RES_SCALE (None for the last layer, whose residual
        output is never used), skip [G/2, S]), the skip biases summed and scaled [S]).
        """
        R, L = self.residual_channels, len(self.dilations)
        col = torch.ones_like(self.conv_b[0])
        col[: col.shape[0] // 2] = 2.0
        skip_scale = self.skip_scale
        layers = []
        skip_b = 0.0
        for layer, d in enumerate(self.dilations):
            last = layer == L - 1
            w_rs, b_rs = self.rs_w[layer].t(), self.rs_b[layer]  # [G/2, R + S], [R + S]
            layers.append((
                d,
                [(self.tap(layer, j) * col[:, None]).t().contiguous() for j in range(self.kernel_size)],
                (self.cond_w[layer] * col[:, None]).t().contiguous(),
                self.conv_b[layer] * col,
                None if last else (2 * RES_SCALE * w_rs[:, :R]).contiguous(),
                None if last else RES_SCALE * b_rs[:R],
                (2 * skip_scale * w_rs[:, R:]).contiguous(),
            ))
            skip_b = skip_b + skip_scale * b_rs[R:]
        return layers, skip_b

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FlatStack:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype).contiguous()

        return FlatStack(self.kernel_size, self.dilations, *(move(getattr(self, n)) for n in _TENSORS))


_TENSORS = ("in_w", "in_b", "conv_w", "conv_b", "cond_w", "rs_w", "rs_b")


def flatten_stack(stack: WaveNetStack) -> FlatStack:
    """The stack's weights as a FlatStack (detached, contiguous; same dtype and device as the stack)."""
    if stack.input.in_channels != 1:
        raise ValueError(f"flatten_stack needs a stack of one input channel, got {stack.input.in_channels}")
    blocks = list(stack.blocks)
    R, k = stack.residual_channels, stack.kernel_size
    weight = stack.input.weight
    # conv weight [G, R, k] -> [G, k, R] -> [G, k R]: column j R + r = w[:, r, j]
    conv_w = torch.stack([b.conv.weight.permute(0, 2, 1).reshape(-1, k * R) for b in blocks])
    cond_w = torch.stack([b.cond.weight[:, :, 0] if b.cond is not None else weight.new_zeros(b.conv.out_channels, 0)
                          for b in blocks])
    tensors = (stack.input.weight[:, 0, 0], stack.input.bias, conv_w, torch.stack([b.conv.bias for b in blocks]),
               cond_w, torch.stack([b.res_skip.weight[:, :, 0] for b in blocks]),
               torch.stack([b.res_skip.bias for b in blocks]))
    return FlatStack(k, tuple(stack.dilations), *(t.detach().contiguous() for t in tensors))


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
        for factor, conv in zip(self.factors, self.smooth, strict=True):
            h = F.leaky_relu(conv(torch.repeat_interleave(h, factor, dim=-1)), 0.4)
        return h

    @property
    def reach(self) -> int:
        """Output samples next to an edge of the mel that see the convolutions' zero padding there: the frame
        conv's k // 2 frames, stretched by each stage and widened by its smoothing conv's k // 2 steps (682
        samples for the default 5 / 4 x 4 x 4 x 4 / 5). A mel cut at a frame boundary gives the same output as
        the whole mel farther than this from the cut."""
        reach = self.context.kernel_size[0] // 2
        for factor, conv in zip(self.factors, self.smooth, strict=True):
            reach = reach * factor + conv.kernel_size[0] // 2
        return reach

    def window(self, mel: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """self(mel)[..., start * hop: stop * hop], from the frames within `reach` of [start, stop) only: the
        conditioning of one chunk of a stream, at a cost bounded by the chunk, not the mel."""
        margin = -(-self.reach // self.hop)
        a, b = max(0, start - margin), min(mel.shape[-1], stop + margin)
        return self(mel[..., a:b])[..., (start - a) * self.hop: (stop - a) * self.hop]
