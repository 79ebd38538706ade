"""WaveGlow's sampling pass as ONNX traces it (`WaveGlow.export_graph`, wavflow.export): the flows run backwards
with weight norm folded and each invertible 1x1 convolution stored as its inverse (computed in float64), so the
graph is plain convolutions and pointwise ops; with a source, the pitch predictor and the excitation are in the
graph too, and F0 and voicing come out beside the audio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..source import excitation, free_track, harmonic_mean
from . import folded_copy

if TYPE_CHECKING:  # annotations only: waveglow.py imports this module
    from .waveglow import WaveGlow


class WaveGlowGraph(nn.Module):
    """WaveGlow's sampling pass (WaveGlow.infer, the flows run backwards) for export:
    (mel [B, n_mels, F], z [B, n_group, G], sigma []) -> audio [B, G * n_group], G = F * hop / n_group.
    With a source, also the predicted f0 [B, F] (Hz, 0 where unvoiced) and voiced [B, F] the excitation came from."""

    def __init__(self, model: WaveGlow):
        super().__init__()
        model = folded_copy(model)
        self.config, self.hop = model.config, model.mel_config.hop_length
        self.rate = model.mel_config.sample_rate
        self.source, self.filter, self.harmonics = model.source, model.filter, model.harmonics
        self._model = [model]  # prior_scale: the energy prior's std per group (no weights)
        self.upsample = model.upsample
        self.nets = nn.ModuleList(c.net for c in model.coupling)
        for k, conv in enumerate(model.convinv):
            w = conv.weight.detach().double()
            self.register_buffer(f"w_inv{k}", torch.linalg.inv(w).float()[:, :, None])

    def forward(self, mel: Tensor, z: Tensor, sigma: Tensor) -> Tensor:
        cfg, g = self.config, self.config.n_group
        cond = self.upsample(mel)  # [B, n_mels, (F - 1) * hop + kernel]
        if cfg.upsample_kernel > self.hop:
            # F * hop samples (a constant crop: the length stays dynamic)
            cond = cond[:, :, : self.hop - cfg.upsample_kernel]
        b, c = cond.shape[0], cond.shape[1]
        cond = cond.reshape(b, c, -1, g).transpose(2, 3).reshape(b, c * g, -1)  # flows.squeeze
        f0 = voiced = track = None
        if self.source is not None:
            log_f0, logit = self.source(mel)
            voiced = (logit > 0).to(mel.dtype)
            f0 = torch.exp(log_f0) * voiced
            track = free_track(f0, voiced, self.hop, self.rate, traceable=True)
            if self.harmonics is not None:
                track = track.with_amplitudes(self.harmonics(mel))
            e = excitation(track, self.hop, self.rate, cfg.source_amplitude)
            cond = torch.cat([cond, e.reshape(b, 1, -1, g).transpose(2, 3).reshape(b, g, -1)], 1)
        z = z * sigma
        scale = self._model[0].prior_scale(mel, z.shape[-1])
        if scale is not None:
            z = z * scale
        exits = [k for k in range(cfg.n_flows) if k > 0 and k % cfg.n_early_every == 0]
        x = z[:, len(exits) * cfg.n_early_size:]
        for k in reversed(range(cfg.n_flows)):
            n_a = cfg.remaining_channels(k) // 2
            out = self.nets[k](x[:, :n_a], cond)
            n_b = out.shape[1] // 2
            x = torch.cat([x[:, :n_a], (x[:, n_a:] - out[:, :n_b]) * torch.exp(-out[:, n_b:])], 1)
            x = F.conv1d(x, getattr(self, f"w_inv{k}"))
            if k in exits:
                j = exits.index(k)
                x = torch.cat([z[:, j * cfg.n_early_size: (j + 1) * cfg.n_early_size], x], 1)
        if self.filter is not None:  # WaveGlow.unfilter: the source filter's mean and scale
            mean, log_s = self.filter(cond[:, -g:], cond).chunk(2, 1)
            x = x * torch.exp(log_s) + mean
        audio = x.transpose(1, 2).reshape(b, -1)  # flows.unsqueeze to [B, T]
        if self.harmonics is not None:
            # the harmonic mean, all frames in one block (a traced loop would not follow the dynamic length)
            audio = audio + harmonic_mean(track, self.hop, self.rate, block=None)
        return audio if f0 is None else (audio, f0, voiced)
