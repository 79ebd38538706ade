"""The IAF student's fast sampling path (design.md section 5): its flows folded into time-major matrices
(`fold_flow`) and run blocked, layer by layer, with each causal layer's left context carried between blocks and
between calls (`FlowStream`), so an utterance goes through the flows whole (`IAFStudent.fast_flow`) or a chunk
at a time (`IAFStudent.flow_stream`, `StudentStreamer` for wavflow.streaming) with the same result.
`IAFStudent.flow` is the reference it is tested against. `StudentGraph` is the parallel pass as ONNX traces it
(wavflow.export).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import RES_SCALE, flatten_stack
from ..source import excitation, free_track, harmonic_mean
from . import NoiseSpan, Streamer, folded_copy

if TYPE_CHECKING:  # annotations only: student.py imports this module
    from .student import IAFFlow, IAFStudent


def fold_flow(f: IAFFlow, dtype: torch.dtype) -> dict[str, Any]:
    """One flow's weights as [in, out] matrices (time-major x @ W) with the constants of `fast_flow` folded
    in (FlatStack.time_major)."""
    flat = flatten_stack(f.stack).to(dtype)
    layers, skip_b = flat.time_major()
    return {
        "kernel_size": flat.kernel_size, "layers": layers, "in_w": flat.in_w, "in_b": flat.in_b, "skip_b": skip_b,
        "hidden_w": f.hidden.weight[:, :, 0].to(dtype).t(), "hidden_b": f.hidden.bias.to(dtype),
        "out_w": f.out.weight[:, :, 0].to(dtype).t(), "out_b": f.out.bias.to(dtype),
    }


class FlowStream:
    """The state and buffers of `IAFStudent.fast_flow`, kept between calls so an utterance can go through the flows
    a chunk of time at a time (IAFStudent.flow_stream): each flow is causal, so its output for a chunk needs
    only, per layer, the last P_i = (kernel_size - 1) * d_i rows of that layer's input (`ctx`) and the flow's
    input at the step before the chunk (`prev`, since a flow sees its input shifted by one). Nothing of the
    past is recomputed. `fast_flow` is one `run` over the whole utterance.
    """

    def __init__(self, student: IAFStudent, batch: int, dtype: torch.dtype, device: torch.device | str,
                 block: int | None):
        cfg = student.config
        self.config = cfg
        self.flows = [fold_flow(f, dtype) for f in student.flows]
        self.pads = [[(fold["kernel_size"] - 1) * d for d, *_ in fold["layers"]] for fold in self.flows]
        self.pmax = max(max(p) for p in self.pads)
        self.block = block  # rows per block; None: each call's whole chunk
        self.dtype, self.device = dtype, torch.device(device)
        R = cfg.residual_channels
        # per item, flow and layer: the layer's last P_i input rows, zeros before the first step (the causal
        # convs' left padding); per item and flow: its input at the last step done (zero before the first)
        self.ctx = [[[torch.zeros(p, R, dtype=dtype, device=self.device) for p in pad] for pad in self.pads]
                    for _ in range(batch)]
        self.prev = torch.zeros(batch, len(self.flows), dtype=dtype, device=self.device)
        self.rows = 0  # rows the work buffers hold
        self.work: list[torch.Tensor] = []

    def _buffers(self, rows: int) -> None:
        # Layer i reads work[i % 2] (its block in rows [pmax, pmax + n), its left context in the P_i rows before)
        # and writes layer i + 1's input into the other. Two work buffers rather than one [P_i + block, R] buffer
        # per layer: a per-layer layout faulted in more fresh pages per call and ran behind the unblocked code on
        # short utterances.
        if rows <= self.rows:
            return
        cfg, new = self.config, lambda *shape: torch.empty(*shape, dtype=self.dtype, device=self.device)
        self.work = [new(self.pmax + rows, cfg.residual_channels) for _ in range(2)]
        self.gate, self.g = new(rows, cfg.gate_channels), new(rows, cfg.gate_channels // 2)
        self.skips = new(rows, cfg.skip_channels)
        self.rows = rows

    @torch.no_grad()
    def run(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next n steps: z_0 [B, n], cond [B, C, n] (the upsampled mel of those steps) -> (x, M, log S) [B, n]."""
        B, T = z.shape
        block = max(1, min(self.block or T, T))
        self._buffers(block)
        pmax, R, work = self.pmax, self.config.residual_channels, self.work
        gate, g, skips = self.gate, self.g, self.skips
        x_all = torch.empty_like(z)
        mean_all = torch.zeros_like(z)
        log_scale_all = torch.zeros_like(z)
        for b in range(B):
            c = cond[b].t().contiguous()  # [T, C], shared by every flow
            x = z[b]
            mean, log_scale = mean_all[b], log_scale_all[b]
            for f, (fold, pad, ctx) in enumerate(zip(self.flows, self.pads, self.ctx[b], strict=True)):
                shifted = torch.cat([self.prev[b, f: f + 1], x[:-1]])  # the flow sees its input one step late
                self.prev[b, f] = x[-1]
                x_next = torch.empty_like(x)  # not in place: for the first flow x is the caller's z[b]
                k = fold["kernel_size"]
                for t0 in range(0, T, block):
                    t1 = min(t0 + block, T)
                    n = t1 - t0
                    torch.addr(fold["in_b"].expand(n, R), shifted[t0:t1], fold["in_w"], out=work[0][pmax: pmax + n])
                    gt, gu, sk = gate[:n], g[:n], skips[:n]
                    sk.copy_(fold["skip_b"].expand(n, -1))
                    ct = c[t0:t1]
                    for i, (d, w_taps, w_cond, b_gate, w_res, b_res, w_skip) in enumerate(fold["layers"]):
                        h, p = work[i % 2], pad[i]
                        h[pmax - p: pmax].copy_(ctx[i])
                        torch.addmm(b_gate, ct, w_cond, out=gt)
                        for j in range(k):  # tap j looks (k - 1 - j) * d steps back
                            lag = (k - 1 - j) * d
                            gt.addmm_(h[pmax - lag: pmax - lag + n], w_taps[j])
                        # before work[i % 2] is overwritten by layer i + 1; when n < P_i, the P_i rows span the
                        # old context and the block: still the input's last P_i rows
                        ctx[i].copy_(h[pmax + n - p: pmax + n])
                        torch.sigmoid(gt, out=gt)
                        half = gt.shape[1] // 2
                        torch.sub(gt[:, :half], 0.5, out=gu).mul_(gt[:, half:])  # (tanh(a) * sigmoid(b)) / 2
                        sk.addmm_(gu, w_skip)
                        if w_res is not None:  # the last layer's residual output is never used
                            # bias and scaled input in one pass, then the GEMM accumulates in place (addmm with
                            # out= would first copy its input into out, and add the bias in another pass)
                            torch.add(b_res, h[pmax: pmax + n], alpha=RES_SCALE,
                                      out=work[(i + 1) % 2][pmax: pmax + n]).addmm_(gu, w_res)
                    hid = torch.addmm(fold["hidden_b"], sk.relu_(), fold["hidden_w"]).relu_()
                    out = torch.addmm(fold["out_b"], hid, fold["out_w"])
                    mu, log_s = out[:, 0], out[:, 1].clamp(min=self.config.log_scale_min)
                    s = torch.exp(log_s)
                    torch.mul(x[t0:t1], s, out=x_next[t0:t1]).add_(mu)
                    mean[t0:t1].mul_(s).add_(mu)
                    log_scale[t0:t1].add_(log_s)
                x = x_next
            x_all[b] = x
        return x_all, mean_all, log_scale_all


class StudentStreamer(Streamer):
    """Causal flows: one FlowStream carries every layer's context from chunk to chunk, so nothing is recomputed."""

    def __init__(self, model: IAFStudent, mel: Tensor, noise: NoiseSpan, options: dict[str, Any]):
        super().__init__(model, mel, noise, options)
        temperature = options.get("temperature")
        self.temperature = float(model.config.infer_temperature if temperature is None else temperature)
        self.flows = model.flow_stream(1, mel.dtype, mel.device)
        # with a source, the pitch and the phase at each frame centre are worked out once for the whole mel, so
        # each chunk's excitation and harmonic mean continue the whole utterance's
        self.track = model.source_of(mel)

    def chunk(self, f0: int, f1: int) -> Tensor:
        cond = self.model.upsampler.window(self.mel, f0, f1)
        z = self.noise.span(f0 * self.hop, f1 * self.hop).to(cond.device, cond.dtype)
        if self.track is None:
            x, _, _ = self.flows.run(z * self.temperature, cond)
            return x[0].clamp(-1.0, 1.0)
        track = self.track.frames(f0, f1)
        x, _, _ = self.flows.run(z * self.temperature, self.model.with_excitation(cond, track))
        return (x + self.model.mean_of(track, x.shape[-1]).to(x.dtype))[0].clamp(-1.0, 1.0)


class StudentGraph(nn.Module):
    """The IAF student's parallel pass (IAFStudent.infer) for export:
    (mel [B, n_mels, F], z [B, T], temperature []) -> audio [B, T] in [-1, 1], T = F * hop; with a source, also
    the predicted f0 [B, F] (Hz, 0 where unvoiced) and voiced [B, F] the excitation came from."""

    def __init__(self, model: IAFStudent):
        super().__init__()
        model = folded_copy(model)
        self.upsampler, self.flows = model.upsampler, model.flows
        self.log_scale_min = float(model.config.log_scale_min)
        self.source, self.harmonics, self.excite = model.source, model.harmonics, model.excite
        self.hop, self.rate = model.mel_config.hop_length, model.mel_config.sample_rate
        self.amplitude = float(model.config.source_amplitude)

    def forward(self, mel: Tensor, z: Tensor, temperature: Tensor) -> Tensor:
        up = self.upsampler  # MelUpsampler.forward, with the nearest-neighbour stretch as expand + reshape
        h = F.leaky_relu(up.context(mel), 0.4)
        for factor, conv in zip(up.factors, up.smooth, strict=True):
            b, c = h.shape[0], h.shape[1]
            h = h.unsqueeze(-1).expand(-1, -1, -1, factor).reshape(b, c, -1)
            h = F.leaky_relu(conv(h), 0.4)
        track = f0 = voiced = None
        if self.source is not None:  # HarmonicSource.source_track and with_excitation, the running sum traced
            log_f0, logit = self.source(mel)
            voiced = (logit > 0).to(mel.dtype)
            f0 = torch.exp(log_f0) * voiced
            track = free_track(f0, voiced, self.hop, self.rate, traceable=True)
            track = track.with_amplitudes(self.harmonics(mel))
            h = h + self.excite(excitation(track, self.hop, self.rate, self.amplitude)[:, None])
        x = z * temperature
        for flow in self.flows:  # IAFFlow.forward, the one-step shift as a concatenation
            shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).unsqueeze(1)
            out = flow.out(F.relu(flow.hidden(F.relu(flow.stack(shifted, h)))))
            log_s = torch.clamp(out[:, 1], min=self.log_scale_min)
            x = x * torch.exp(log_s) + out[:, 0]
        if track is None:
            return x.clamp(-1.0, 1.0)
        # the harmonic mean, all frames in one block (a traced loop would not follow the dynamic length)
        x = x + harmonic_mean(track, self.hop, self.rate, block=None)
        return x.clamp(-1.0, 1.0), f0, voiced
