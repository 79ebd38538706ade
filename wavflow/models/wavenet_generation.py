"""The WaveNet teacher's generation machinery (design.md section 4): the torch steps of cached generation on
fixed buffers (`CachedSteps`, which a CUDA graph can replay) and the streams that keep generation state between
chunks of one utterance (`WaveNet.generation_stream`, and `WaveNetStreamer` over them for wavflow.streaming).
The compiled CPU loop itself is wavflow/kernels.py; `WaveNet.generate` is the entry point for whole utterances.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..layers import RES_SCALE, flatten_stack
from . import NoiseSpan, Streamer

if TYPE_CHECKING:  # annotations only: wavenet.py imports this module
    from .wavenet import WaveNet


class Stream:
    """One utterance's generation a chunk at a time: run(c [1, C, n], noise [1, N, n]) -> audio [1, n]."""

    def run(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CompiledStream(Stream):
    """The compiled loop (wavflow/kernels.py), its queues kept by a kernels.CachedGenerator."""

    def __init__(self, model: WaveNet, length: int, temperature: float):
        from .. import kernels

        head = (model.out1.weight[:, :, 0], model.out1.bias, model.out2.weight[:, :, 0], model.out2.bias)
        self.gen = kernels.CachedGenerator(flatten_stack(model.stack), head, model.dist, torch.tensor([length]),
                                           temperature, model.config.log_scale_min, threads=1)
        self.chunk = model._chunk_size(1)

    def run(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n = c.shape[-1]
        return torch.cat([self.gen.run(c[..., s: s + self.chunk], noise[..., s: s + self.chunk])
                          for s in range(0, n, self.chunk)], -1)

    def close(self) -> None:
        self.gen.close()


class TorchStream(Stream):
    """`CachedSteps` (torch, any device) kept between calls. On a GPU the steps of a chunk are captured once as a
    CUDA graph; a replay runs a whole chunk, so a piece shorter than a chunk that is not the utterance's last
    runs eagerly on the same buffers instead."""

    def __init__(self, model: WaveNet, length: int, temperature: float, device: torch.device, graph: bool):
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
        self.chunk = min(128, max(length, 1)) if graph else model._chunk_size(1)
        with torch.autocast(device.type, enabled=False):
            self.steps = CachedSteps(model, 1, self.chunk, temperature, device, dtype)
            self.replay = self.steps.capture() if graph and length else None
        self.length, self.t, self.device = length, 0, device

    def run(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n = c.shape[-1]
        c, noise = c.to(self.device), noise.to(self.device)
        out = torch.empty(1, n, device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            for s0 in range(0, n, self.chunk):
                s1 = min(s0 + self.chunk, n)
                self.steps.load(c, noise, s0, s1)
                if self.replay is not None and (s1 - s0 == self.chunk or self.t + s1 >= self.length):
                    self.replay.replay()
                else:
                    for s in range(s1 - s0):
                        self.steps.step(s)
                out[:, s0:s1] = self.steps.out[: s1 - s0].t()
        self.t += n
        return out


class NaiveStream(Stream):
    """The naive reference a chunk at a time: it keeps the last receptive field of inputs and conditioning, and
    recomputes the stack over it for every sample, as `_generate_naive` does."""

    def __init__(self, model: WaveNet, temperature: float):
        self.model, self.temperature, self.rf = model, temperature, model.receptive_field
        self.x_hist: torch.Tensor | None = None  # shifted inputs x_in[t0 - h .. t0] (x_in[t] = x[t - 1])
        self.c_hist: torch.Tensor | None = None  # conditioning of steps t0 - h .. t0 - 1

    def run(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        B, C, n = c.shape
        if self.c_hist is None:
            self.x_hist, self.c_hist = c.new_zeros(B, 1, 1), c.new_zeros(B, C, 0)
        h = self.c_hist.shape[-1]
        c_ext = torch.cat([self.c_hist, c], -1)
        x_ext = torch.cat([self.x_hist, c.new_zeros(B, 1, n)], -1)
        for i in range(n):
            t = h + i
            s = max(0, t - self.rf + 1)
            params = self.model._step_params(x_ext[..., s: t + 1], c_ext[..., s: t + 1])
            x_ext[:, 0, t + 1] = self.model.dist.sample(params, self.temperature, noise=noise[..., i: i + 1])[:, 0]
        self.c_hist, self.x_hist = c_ext[..., -(self.rf - 1):] if self.rf > 1 else c_ext[..., :0], x_ext[..., -self.rf:]
        return x_ext[:, 0, h + 1:]


class WaveNetStreamer(Streamer):
    """Autoregressive: the generation state (queues, or the naive method's receptive field) carries over."""

    def __init__(self, model: WaveNet, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]):
        super().__init__(model, mel, noise, options)
        self.gen = model.generation_stream(self.frames * self.hop, method=options.get("method", "cached"),
                                           temperature=options.get("temperature"), device=mel.device)
        # A teacher with a source: the pitch of every frame (a small frame-rate pass) and the phase at each frame
        # centre are worked out once, so each chunk's excitation and harmonic mean continue the whole utterance's.
        self.track = model.source_of(mel)

    def chunk(self, f0: int, f1: int) -> torch.Tensor:
        cond = self.model.upsampler.window(self.mel, f0, f1)
        noise = self.noise.span(f0 * self.hop, f1 * self.hop).to(cond.device)
        if self.track is None:
            return self.gen.run(cond, noise)[0]
        track, n = self.track.frames(f0, f1), (f1 - f0) * self.hop
        residual = self.gen.run(self.model.with_excitation(cond, track), noise)[0]
        return residual + self.model.mean_of(track, n)[0].to(residual)

    def close(self) -> None:
        self.gen.close()


class CachedSteps:
    """Cached WaveNet generation as fixed-shape torch steps on fixed buffers, so a CUDA graph can replay them.

    Every layer's past inputs live in one ring, hist [B, L * H, R] with H = (k - 1) * max dilation: layer l's
    input at step t sits in row l * H + t mod H. The step counter t is a device tensor that each step
    increments, so no kernel depends on a Python value that changes from step to step. A step first gathers
    the taps at lags >= 1 of all layers at once (they were written by earlier steps) and projects them with the
    mel conditioning in one batched matmul; only the lag-0 tap has to run layer after layer. Skip outputs are
    kept per layer and projected in one matmul at the end; the output head runs in float32 as in `head`.

    load() copies a chunk of conditioning [N, L, B, G] and noise [N, B, n, 1] into the buffers; step(s) reads
    position s of them and writes out[s] [B].
    """

    def __init__(self, model: WaveNet, B: int, chunk: int, temperature: float, device: torch.device,
                 dtype: torch.dtype):
        cfg = model.config
        k, R, G = cfg.kernel_size, cfg.residual_channels, cfg.gate_channels
        dil = model.stack.dilations
        L, H = len(dil), (k - 1) * max(dil)
        self.model, self.B, self.L, self.H, self.k, self.R, self.Gh = model, B, L, H, k, R, G // 2
        self.temperature, self.dtype = temperature, dtype
        flat = flatten_stack(model.stack)

        def put(t: torch.Tensor, dt: torch.dtype = dtype) -> torch.Tensor:
            return t.detach().to(device=device, dtype=dt).contiguous()

        skip_scale = flat.skip_scale
        # [in, out] copies of the FlatStack's [out, in] matrices, so a step is x @ W; conv taps j = 0 .. k-2 look
        # (k - 1 - j) * d steps back: rows j * R + r of w_past
        self.w_past = put(flat.conv_w[:, :, : (k - 1) * R].transpose(1, 2))  # [L, (k-1) R, G]
        self.w_now = put(flat.conv_w[:, :, (k - 1) * R:].transpose(1, 2))  # [L, R, G]
        self.cond_w = put(flat.cond_w.transpose(1, 2))  # [L, C, G]
        self.conv_b = put(flat.conv_b)  # [L, G]
        rs_w, rs_b = flat.rs_w.transpose(1, 2), flat.rs_b  # [L, G/2, R + S], [L, R + S]
        self.res_w, self.res_b = put(RES_SCALE * rs_w[:, :, :R]), put(RES_SCALE * rs_b[:, :R])
        self.skip_w = put(skip_scale * rs_w[:, :, R:])  # [L, G/2, S]
        self.skip_b = put(skip_scale * rs_b[:, R:].sum(0), torch.float32)
        self.in_w, self.in_b = put(flat.in_w), put(flat.in_b)
        self.out1_w = put(model.out1.weight[:, :, 0].t(), torch.float32)
        self.out1_b = put(model.out1.bias, torch.float32)
        self.out2_w = put(model.out2.weight[:, :, 0].t(), torch.float32)
        self.out2_b = put(model.out2.bias, torch.float32)
        lags = torch.tensor([[(k - 1 - j) * d for j in range(k - 1)] for d in dil], dtype=torch.long)
        self.lags = lags.reshape(-1).to(device)  # [L (k-1)]
        self.lag_base = (torch.arange(L)[:, None] * H).expand(L, k - 1).reshape(-1).to(device)
        self.row_base = (torch.arange(L) * H).to(device)  # [L]
        n = model.dist.noise_channels
        self.hist = torch.zeros(B, L * H, R, device=device, dtype=dtype)
        self.h = torch.zeros(L, B, R, device=device, dtype=dtype)  # h[l]: layer l's input at this step
        self.gates = torch.zeros(L, B, self.Gh, device=device, dtype=dtype)
        self.x_prev = torch.zeros(B, device=device, dtype=dtype)
        self.t = torch.zeros((), dtype=torch.long, device=device)
        self.cond = torch.zeros(chunk, L, B, G, device=device, dtype=dtype)
        self.noise = torch.zeros(chunk, B, n, 1, device=device)
        self.out = torch.zeros(chunk, B, device=device)
        self.chunk = chunk

    def reset(self) -> None:
        for buf in (self.hist, self.h, self.gates, self.x_prev, self.t, self.out):
            buf.zero_()

    def load(self, c: torch.Tensor, noise: torch.Tensor, t0: int, t1: int) -> None:
        """Conditioning of samples [t0, t1) from the upsampled mel c [B, C, T], with the conv bias, and their noise."""
        n = t1 - t0
        torch.add(torch.einsum("bct,lcg->tlbg", c[..., t0:t1].to(self.dtype), self.cond_w), self.conv_b[:, None],
                  out=self.cond[:n])
        self.noise[:n].copy_(noise[..., t0:t1].permute(2, 0, 1)[..., None])
        if n < self.chunk:  # a replayed graph runs the whole chunk; the extra steps' output is never read
            self.cond[n:].zero_()
            self.noise[n:].fill_(0.5)

    def step(self, s: int) -> torch.Tensor:
        """One sample at chunk position s: writes out[s] and the state; returns the parameters [B, P]."""
        B, L, H, k, R, Gh = self.B, self.L, self.H, self.k, self.R, self.Gh
        rows = torch.remainder(self.t - self.lags, H) + self.lag_base
        past = self.hist.index_select(1, rows).view(B, L, (k - 1) * R).transpose(0, 1)  # [L, B, (k-1) R]
        z_all = torch.baddbmm(self.cond[s], past, self.w_past)  # [L, B, G]
        torch.addcmul(self.in_b, self.x_prev[:, None], self.in_w[None, :], out=self.h[0])
        for layer in range(L):
            z = torch.addmm(z_all[layer], self.h[layer], self.w_now[layer])
            torch.mul(torch.tanh(z[:, :Gh]), torch.sigmoid(z[:, Gh:]), out=self.gates[layer])
            if layer + 1 < L:  # the last layer's residual output is never used
                torch.addmm(self.h[layer], self.gates[layer], self.res_w[layer], beta=RES_SCALE, out=self.h[layer + 1])
                self.h[layer + 1].add_(self.res_b[layer])
        skips = torch.bmm(self.gates, self.skip_w).sum(0).float() + self.skip_b
        a = torch.relu(torch.addmm(self.out1_b, torch.relu(skips), self.out1_w))
        params = torch.addmm(self.out2_b, a, self.out2_w)
        x = self.model.dist.sample(params[:, :, None], self.temperature, noise=self.noise[s])[:, 0]
        self.out[s].copy_(x)
        self.x_prev.copy_(x)
        self.hist.index_copy_(1, self.row_base + torch.remainder(self.t, H), self.h.transpose(0, 1))
        self.t.add_(1)
        return params

    def capture(self) -> torch.cuda.CUDAGraph:
        """Record the `chunk` steps of one chunk as a CUDA graph, after a warm-up that leaves the state at zero."""
        side = torch.cuda.Stream(self.t.device)
        side.wait_stream(torch.cuda.current_stream(self.t.device))
        with torch.cuda.stream(side):  # first calls create cuBLAS handles and workspaces, which capture forbids
            for s in range(min(3, self.chunk)):
                self.step(s)
        torch.cuda.current_stream(self.t.device).wait_stream(side)
        self.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for s in range(self.chunk):
                self.step(s)
        return graph
