"""WaveGlow's fast sampling plan: the coupling networks' arithmetic regrouped into a few large matmuls or
convolutions, on the backend measured fastest for the machine at hand (docs/design.md sections 3 and 6).

`WaveGlow.infer` runs on it; `WaveGlow.inverse` is the plain reference that tests pin every backend to.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import WavflowError

if TYPE_CHECKING:
    from .waveglow import WN

# `infer` runs the arithmetic of WN.stack + AffineCoupling.inverse, regrouped so nearly all the work is a few
# large matmuls (tests pin every backend to the plain `inverse`):
# - each layer's gate starts as its slice of the conditioning conv, one [2 * channels, n_cond] x [n_cond, G]
#   matmul into a buffer reused by every layer, and the in_layer accumulates into it (its bias folded into the
#   conditioning bias);
# - a dilated conv is k matmuls of its tap weights with shifted views of a zero-margined buffer (no im2col copy,
#   no padding per layer), or one convolution;
# - the skip 1x1 convs feed only the (linear) end conv, so end o skip_i is one [2 * n_b, channels] matrix per
#   layer, and each layer's residual and folded skip outputs come from one matmul into a buffer holding both;
# - the residual stream is kept without its biases (start bias + residual biases so far, a constant B_i per
#   layer): a conv of a constant is the constant W_ij B_i per tap wherever the tap lands inside the signal, so
#   it joins the conditioning bias, minus the few edge columns where zero padding is read instead;
# - without its bias the first layer's input is start_w x_a, of rank n_a, so its taps are folded to
#   W_0j start_w: a [2 * channels, n_a] matmul replaces a [2 * channels, channels] one;
# - the gate tanh(a) sigmoid(b) is computed as 2 (sigmoid(2a) - 1/2) sigmoid(b): one sigmoid call over the
#   whole gate instead of a tanh and a sigmoid (torch's CPU tanh costs more than its sigmoid: the gate takes
#   about half the time), with the 2 inside folded into the tanh half's weights and biases and the 2 outside
#   into the residual/skip weights (multiplying by 2 is exact in floating point);
# - buffers are reused across the couplings of a call (`_Workspace`): a fresh tensor of tens of megabytes per
#   coupling paid its page faults every time.
#
# The same arithmetic runs on one of three backends (SAMPLING_BACKENDS), whose speed depends on the machine:
#   mm      channels-first [C, G]: BLAS matmuls (torch.mm / addmm_, MKL on x86) with the weights on the left
#   mm_t    time-major [G, C]: the same matmuls transposed (activations on the left, the weights as transposed
#           views), which BLAS blocks differently
#   conv    channels-first oneDNN convolutions (conv1d): the conditioning and residual/skip 1x1 convolutions and
#           each dilated convolution as one call
# On a CPU the backend is chosen by timing all three on the model's own coupling the first time a plan meets a
# shape class (config, dtype, threads, length bucket), once per process (`backend_for`); the choice is kept in
# `sampling_backend_choices()` for the benchmark to report. On a GPU it is `mm` (cuBLAS), not measured.
# A caller that names a backend (WaveGlow.infer's `backend` option, or the model's default from
# WaveGlow.set_backend / wavflow.load(..., backend=...)) skips the measurement: the backends differ in the last
# bits of float rounding, so naming one makes runs bit-identical across processes.

SAMPLING_BACKENDS = ("mm", "mm_t", "conv")
TUNE_GROUPS = 2048  # the longest probe (groups of n_group samples): every length from here on shares one choice


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    how: str                                   # "measured", "chosen by the caller", "cuda default"
    seconds: dict[str, float] = field(default_factory=dict)  # best probe time per backend, where measured


_backend_choices: dict[tuple, BackendChoice] = {}


def check_backend(backend: str | None) -> str | None:
    """`backend` itself when it names a sampling backend (None: measure), else a one-line WavflowError."""
    if backend is not None and backend not in SAMPLING_BACKENDS:
        raise WavflowError(f"WaveGlow sampling backend {backend!r}: expected one of {', '.join(SAMPLING_BACKENDS)}")
    return backend


def sampling_backend_choices() -> dict[str, BackendChoice]:
    """Every backend choice this process made, keyed by a readable shape class."""
    return {_describe_key(k): v for k, v in _backend_choices.items()}


def _describe_key(key: tuple) -> str:
    device, dtype, threads, probe, shape = key
    return f"{device} {str(dtype).replace('torch.', '')} {threads} threads, probe {probe} groups, coupling {shape}"


@dataclass
class _CouplingPlan:
    BLOCK: ClassVar[int] = 4096  # time rows per block of the mm_t backend: bounds its gate buffer (its docstring)

    channels: int
    n_a: int
    kernel: int
    dilations: list[int]
    cond_w: Tensor  # [2 * channels * layers, n_cond]
    cond_b: Tensor  # [2 * channels * layers]: cond + in_layer biases + the in_layers' response to the B_i
    start_w: Tensor  # [channels, n_a]
    first_w: Tensor  # layer 0: [k, 2 * channels, n_a], tap j = W_0j start_w
    taps_w: list[Tensor]  # layers 1...: [k, 2 * channels, channels], tap j = W_ij
    edges: list[list[tuple[int, Tensor]]]  # per layer: (offset != 0, W_ij B_i [2 * channels]) to undo at the edges
    # per layer: [channels + 2 * n_b, channels] (residual, end o skip); last: [2 * n_b, channels]
    res_skip: list[Tensor]
    out_b: Tensor  # [2 * n_b]: end bias + end o (sum of skip biases)
    margin: int  # largest tap offset

    def offsets(self, i: int) -> list[int]:
        return [(j - (self.kernel - 1) // 2) * self.dilations[i] for j in range(self.kernel)]

    @classmethod
    def fold(cls, net: WN, dtype: torch.dtype | None = None) -> _CouplingPlan:
        """The folded weights of `net`, computed in at least float32 and stored in `dtype` (default: the net's)."""
        c, n_layers = net.channels, net.n_layers
        dtype = dtype or net.end.weight.dtype
        acc = torch.promote_types(net.end.weight.dtype, torch.float32)

        def w(t: Tensor) -> Tensor:
            return t.detach().to(acc)

        # the gate's tanh half, pre-multiplied by 2 (module comment): rows [0, c) of each layer's 2c rows
        gate_scale = torch.cat([torch.full((c,), 2.0), torch.ones(c)]).to(device=net.end.weight.device, dtype=acc)
        end_w = w(net.end.weight[:, :, 0])
        start_w = w(net.start.weight[:, :, 0])
        stream_b = w(net.start.bias)  # B_i: the bias the residual stream carries into layer i
        skip_b = end_w.new_zeros(c)
        cond_b, taps_w, edges, res_skip, dilations = [], [], [], [], []
        first_w = None
        for i, (layer, rs) in enumerate(zip(net.in_layers, net.res_skip_layers, strict=True)):
            lw, k, d = w(layer.weight) * gate_scale[:, None, None], layer.kernel_size[0], layer.dilation[0]
            dilations.append(d)
            offsets = [(j - (k - 1) // 2) * d for j in range(k)]
            responses = [lw[:, :, j] @ stream_b for j in range(k)]
            cond_b.append(w(layer.bias) * gate_scale + sum(responses))
            edges.append([(off, r.to(dtype)) for off, r in zip(offsets, responses, strict=True) if off != 0])
            if i == 0:
                first_w = torch.stack([lw[:, :, j] @ start_w for j in range(k)])
            else:
                taps_w.append(lw.permute(2, 0, 1).to(dtype).contiguous())
            rs_w = 2.0 * w(rs.weight[:, :, 0])  # acts here are half the module's (module comment)
            if i < n_layers - 1:
                res_skip.append(torch.cat([rs_w[:c], end_w @ rs_w[c:]]).to(dtype))
                stream_b = stream_b + w(rs.bias[:c])
                skip_b = skip_b + w(rs.bias[c:])
            else:
                res_skip.append((end_w @ rs_w).to(dtype))
                skip_b = skip_b + w(rs.bias)
        cond_w = w(net.cond_layer.weight[:, :, 0]) * gate_scale.repeat(n_layers)[:, None]
        k = net.in_layers[0].kernel_size[0]
        return cls(channels=c, n_a=start_w.shape[1], kernel=k, dilations=dilations, cond_w=cond_w.to(dtype),
                   cond_b=(w(net.cond_layer.bias) * gate_scale.repeat(n_layers) + torch.cat(cond_b)).to(dtype),
                   start_w=start_w.to(dtype), first_w=first_w.to(dtype), taps_w=taps_w, edges=edges,
                   res_skip=res_skip, out_b=(w(net.end.bias) + end_w @ skip_b).to(dtype),
                   margin=max((k - 1) // 2 * d for d in dilations))

    def run(self, x_a: Tensor, cond_in: Tensor, backend: str = "mm", work: _Workspace | None = None
            ) -> tuple[Tensor, Tensor]:
        """x_a [n_a, G], cond_in [n_cond, G] -> (shift, log_s), each [n_b, G] (views into `work`, possibly
        transposed). Equals WN(x_a, cond_in) split, on any backend. work: buffers reused across calls."""
        work = _Workspace() if work is None else work
        if backend == "mm":
            return self._run_mm(x_a, cond_in, work)
        if backend == "mm_t":
            return self._run_mm_t(x_a, cond_in, work)
        if backend == "conv":
            return self._run_conv(x_a, cond_in, work)
        raise ValueError(f"unknown WaveGlow sampling backend {backend!r}; known: {', '.join(SAMPLING_BACKENDS)}")

    def _gate_taps(self, i: int) -> list[tuple[int, Tensor]]:
        w = self.first_w if i == 0 else self.taps_w[i - 1]
        return list(zip(self.offsets(i), w, strict=True))

    def _layer_cond(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's conditioning weight [2 * channels, n_cond] and bias [2 * channels]. Each layer's gate starts
        from its own conditioning matmul into one reused buffer, rather than all layers' at once: the same
        arithmetic, and a working set of [2 * channels, G] rather than 8 times that (which no cache holds)."""
        rows = slice(2 * self.channels * i, 2 * self.channels * (i + 1))
        return self.cond_w[rows], self.cond_b[rows]

    def _run_mm(self, x_a: Tensor, cond_in: Tensor, work: _Workspace) -> tuple[Tensor, Tensor]:
        c, m, g = self.channels, self.margin, x_a.shape[1]
        # Zero margins make shifted views exact zero-padded convolutions. Rows: residual stream, then end output.
        state = work.zeros("state", self.out_b.shape[0] + c, g + 2 * m, x_a)
        x_pad = work.zeros("x_pad", x_a.shape[0], g + 2 * m, x_a)
        gate_buffer = work.get("gate", 2 * c, g, x_a)
        x_pad[:, m:m + g] = x_a
        h, both, out = state[:c, m:m + g], state[:, m:m + g], state[c:, m:m + g]
        h.addmm_(self.start_w, x_a)
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            gate = torch.addmm(cond_b[:, None], cond_w, cond_in, out=gate_buffer)
            source = x_pad if i == 0 else state[:c]
            for offset, w in self._gate_taps(i):
                gate.addmm_(w, source[:, m + offset: m + offset + g])
            for offset, response in edges:  # where a tap reads padding, the stream's bias was not there
                cols = gate[:, : min(-offset, g)] if offset < 0 else gate[:, max(g - offset, 0):]
                cols.sub_(response[:, None])
            s = torch.sigmoid_(gate)
            acts = s[:c].sub_(0.5).mul_(s[c:])
            (out if i == last else both).addmm_(self.res_skip[i], acts)
        out.add_(self.out_b[:, None])
        n_b = out.shape[0] // 2
        return out[:n_b], out[n_b:]

    def _run_mm_t(self, x_a: Tensor, cond_in: Tensor, work: _Workspace) -> tuple[Tensor, Tensor]:
        """Time-major, layer by layer and, within a layer, in blocks of BLOCK rows: a block's gate is made, gated
        and consumed while it is still in cache (a whole long utterance's is tens of megabytes). Layer i reads
        its whole input and writes the next layer's into the other of two buffers, so blocks need no halo and
        nothing is recomputed; each buffer's columns are [residual stream, end output], so one matmul per block
        carries both forward."""
        c, m, g = self.channels, self.margin, x_a.shape[1]
        width = c + self.out_b.shape[0]
        cur = work.zeros("state_t", g + 2 * m, width, x_a)  # rows: time; columns: stream, then end output
        nxt = work.zeros("state_t2", g + 2 * m, width, x_a)
        x_pad = work.zeros("x_pad_t", g + 2 * m, x_a.shape[0], x_a)
        block = max(1, min(self.BLOCK, g))
        gate_buffer = work.get("gate_t", block, 2 * c, x_a)
        x_pad[m:m + g] = x_a.t()
        cur[m:m + g, :c].addmm_(x_a.t(), self.start_w.t())
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            source = x_pad if i == 0 else cur[:, :c]
            taps = self._gate_taps(i)
            for t0 in range(0, g, block):
                t1 = min(t0 + block, g)
                gate = torch.addmm(cond_b, cond_in[:, t0:t1].t(), cond_w.t(), out=gate_buffer[:t1 - t0])
                for offset, w in taps:
                    gate.addmm_(source[m + offset + t0: m + offset + t1], w.t())
                for offset, response in edges:  # rows [0, -offset) or [g - offset, g) of the utterance
                    lo, hi = (0, min(-offset, g)) if offset < 0 else (max(g - offset, 0), g)
                    lo, hi = max(lo, t0), min(hi, t1)
                    if lo < hi:
                        gate[lo - t0: hi - t0].sub_(response)
                s = torch.sigmoid_(gate)
                acts = s[:, :c].sub_(0.5).mul_(s[:, c:])
                if i < last:
                    torch.addmm(cur[m + t0: m + t1], acts, self.res_skip[i].t(), out=nxt[m + t0: m + t1])
                else:  # the last layer adds to the end output only, which no tap reads: in place
                    cur[m + t0: m + t1, c:].addmm_(acts, self.res_skip[i].t())
            if i < last:
                cur, nxt = nxt, cur
        out = cur[m:m + g, c:]
        out.add_(self.out_b)
        n_b = out.shape[1] // 2
        return out[:, :n_b].t(), out[:, n_b:].t()

    def _run_conv(self, x_a: Tensor, cond_in: Tensor, work: _Workspace) -> tuple[Tensor, Tensor]:
        c, g = self.channels, x_a.shape[1]
        state = work.zeros("state", c + self.out_b.shape[0], g, x_a)  # rows: residual stream, then end output
        h, out = state[:c], state[c:]
        h.addmm_(self.start_w, x_a)
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            gate = F.conv1d(cond_in[None], cond_w[:, :, None], cond_b)[0]
            w = self.first_w if i == 0 else self.taps_w[i - 1]
            source = x_a if i == 0 else h
            pad = (self.kernel - 1) // 2 * self.dilations[i]
            gate.add_(F.conv1d(source[None], w.permute(1, 2, 0), padding=pad, dilation=self.dilations[i])[0])
            for offset, response in edges:
                cols = gate[:, : min(-offset, g)] if offset < 0 else gate[:, max(g - offset, 0):]
                cols.sub_(response[:, None])
            s = torch.sigmoid_(gate)
            acts = s[:c].sub_(0.5).mul_(s[c:])
            rs = F.conv1d(acts[None], self.res_skip[i][:, :, None])[0]
            (out if i == last else state).add_(rs)
        out.add_(self.out_b[:, None])
        n_b = out.shape[0] // 2
        return out[:n_b], out[n_b:]

    def shape_class(self) -> tuple:
        return (self.n_a, self.channels, len(self.dilations), self.kernel, self.cond_w.shape[1])


class _Workspace:
    """Buffers that one `infer` call reuses across its couplings (and utterances): a fresh multi-megabyte
    tensor per coupling costs its page faults every time, about a tenth of a large matmul's time."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, rows: int, cols: int, like: Tensor) -> Tensor:
        """An uninitialised [rows, cols] view of buffer `name`, in `like`'s dtype and device."""
        t = self._buffers.get(name)
        if t is None or t.dtype != like.dtype or t.device != like.device or t.shape[0] < rows or t.shape[1] != cols:
            if t is not None and t.shape[1] == cols:
                rows = max(rows, t.shape[0])
            t = self._buffers[name] = torch.empty(rows, cols, dtype=like.dtype, device=like.device)
        return t[:rows]

    def zeros(self, name: str, rows: int, cols: int, like: Tensor) -> Tensor:
        return self.get(name, rows, cols, like).zero_()


@dataclass
class _SamplingPlan:
    dtype: torch.dtype  # of the coupling networks' arithmetic; the flow state stays in float32 or wider
    upsample: Tensor  # upsample_matrix of the upsampler weight, in dtype
    couplings: list[_CouplingPlan]
    inverses: list[Tensor]  # W_k^-1, computed in float64, in the flow state's dtype

    def backend_for(self, device: torch.device, groups: int, backend: str | None = None) -> BackendChoice:
        """The backend for `groups` columns on `device`: `backend` when the caller names one (check_backend), the
        CUDA default, or measured once per process and shape class (module comment). The probe runs the plan's
        widest coupling on random inputs."""
        if check_backend(backend) is not None:
            return BackendChoice(backend, "chosen by the caller")
        if device.type != "cpu":
            return BackendChoice("mm", f"{device.type} default")
        probe = min(TUNE_GROUPS, 1 << max(groups - 1, 1).bit_length())
        coupling = max(self.couplings, key=lambda cp: cp.n_a)
        key = (device.type, self.dtype, torch.get_num_threads(), probe, coupling.shape_class())
        if key not in _backend_choices:
            _backend_choices[key] = _measure_backends(coupling, probe, self.dtype, device)
        return _backend_choices[key]


def _measure_backends(coupling: _CouplingPlan, groups: int, dtype: torch.dtype, device: torch.device,
                      rounds: int = 2) -> BackendChoice:
    """Time every backend on `coupling` over `groups` random columns: one untimed call each (allocator,
    oneDNN primitive creation), then `rounds` rounds taking turns; the fastest best time wins."""
    g = torch.Generator(device=device).manual_seed(0)
    x_a = torch.randn(coupling.n_a, groups, generator=g, device=device).to(dtype)
    cond_in = torch.randn(coupling.cond_w.shape[1], groups, generator=g, device=device).to(dtype)
    best = dict.fromkeys(SAMPLING_BACKENDS, math.inf)
    work = _Workspace()
    with torch.no_grad():
        for r in range(rounds + 1):
            for b in SAMPLING_BACKENDS:
                t0 = time.perf_counter()
                coupling.run(x_a, cond_in, b, work)
                if r:
                    best[b] = min(best[b], time.perf_counter() - t0)
    return BackendChoice(min(best, key=best.get), "measured", best)
