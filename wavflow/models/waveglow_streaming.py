"""WaveGlow a chunk at a time (`WaveGlow.streamer`, wavflow.streaming): its couplings are non-causal, so each chunk
is vocoded by `infer` inside a window that reaches past it by the model's receptive field (`stream_margins`), and
cropped. Past that reach the window's edges cannot be seen, so the chunks equal the whole utterance's audio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import NoiseSpan, Streamer

if TYPE_CHECKING:  # annotations only: waveglow.py imports this module
    from .waveglow import WaveGlow


def stream_margins(model: WaveGlow) -> tuple[int, int]:
    """Mel frames a WaveGlow window must reach (before, after) a chunk for the chunk's audio to equal the whole
    utterance's.

    Running the flows backwards, each coupling's WN sees (k - 1) / 2 x sum(dilations) groups either side, and
    the flows compose: n_flows x that x n_group samples (24,480 = 1.11 s for the paper config, 960 for the
    shipped one). The conditioning of a window's first upsample_kernel - hop samples misses the frames before
    the window (the transposed conv spreads each frame over upsample_kernel samples), which adds to the reach
    before the chunk only; the energy prior adds a frame after it. A source's excitation comes from the whole
    utterance's track (its pitch predictor runs once on the whole mel), so it adds no reach; a source filter is one
    more coupling network's.
    """
    cfg, hop = model.config, model.mel_config.hop_length
    per_coupling = (cfg.wn_kernel_size - 1) // 2 * (2 ** cfg.wn_layers - 1)
    couplings = (cfg.n_flows + (1 if cfg.source_filter else 0)) * per_coupling * cfg.n_group
    before = couplings + cfg.upsample_kernel - hop
    # The energy prior's scale at a window's last half frame interpolates towards the frame after the window,
    # which the window lacks: one frame more keeps that edge out of reach too.
    return -(-before // hop), -(-couplings // hop) + (1 if cfg.energy_prior else 0)


class WaveGlowStreamer(Streamer):
    """Non-causal: each chunk is vocoded by `infer` in a window `stream_margins` wider, then cropped."""

    def __init__(self, model: WaveGlow, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]):
        super().__init__(model, mel, noise, options)
        self.before, self.after = stream_margins(model)
        # A model with a source: the pitch of every frame (a small frame-rate pass) and the phase at each frame
        # centre are worked out once, so each window's excitation continues the whole utterance's.
        self.track = model.source_of(mel)

    def chunk(self, f0: int, f1: int) -> torch.Tensor:
        w0, w1 = max(0, f0 - self.before), min(self.frames, f1 + self.after)
        mel = self.mel[..., w0:w1]
        z = self.noise.span(w0 * self.hop, w1 * self.hop).to(mel.device)  # float32, as vocode passes it
        options = dict(self.options)
        if self.track is not None:
            options["source_track"] = self.track.frames(w0, w1)
        audio = self.model.infer(mel, noise=z, frames=[w1 - w0], **options)
        return audio[0, (f0 - w0) * self.hop: (f1 - w0) * self.hop]
