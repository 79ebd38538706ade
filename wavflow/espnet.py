"""A wavflow vocoder behind an ESPnet or ParallelWaveGAN-style text-to-speech front end.

ESPnet's `Text2Speech` holds its vocoder as a module with a sample rate `fs` and calls it on one utterance's
denormalised features, time first: `wav = vocoder(feats)` with feats [T, n_mels] and wav [T * hop]. This
module gives any wavflow checkpoint that interface:

    from wavflow.espnet import EspnetVocoder
    vocoder = EspnetVocoder("exp/waveglow/best.pt")  # or EspnetVocoder(model="waveglow") for the shipped one
    wav = vocoder(feats)                             # feats [T, n_mels] -> wav [T * hop], on feats' device

The features must be in the checkpoint's mel convention (docs/design.md sections 1 and 8): a vocoder trained
on the `parallel_wavegan` preset reads ESPnet's log10 features; the shipped models read Tacotron 2's natural-log
mel. Features normalised with dataset statistics are denormalised first when `stats` names the file.

ESPnet takes the vocoder object itself, never its class by name, so the class is called EspnetVocoder (not
Vocoder, which names the model interface of wavflow.models) and has no other name.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .errors import WavflowError
from .inference import load_vocoder, synthesize
from .melinput import load_stats


class EspnetVocoder(torch.nn.Module):
    """ESPnet's vocoder interface over a wavflow model: `fs`, and `forward(feats [T, n_mels]) -> wav [T * hop]`.

    checkpoint / model: a checkpoint path, or a shipped model name ("waveglow", "wavenet", "student").
    seed: each call's noise is seeded by this and the features (wavflow.synthesize), so a sentence vocodes the
    same way every time. stats: statistics the features are normalised with (ParallelWaveGAN's stats.npy / .h5).
    Other keyword arguments are the model's options (sigma, temperature, ...).
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, model: str | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, stats: str | os.PathLike | None = None,
                 **options: Any):
        super().__init__()
        self.model = load_vocoder(checkpoint, model, device)
        self.mel_config = self.model.mel_config
        self.fs = self.mel_config.sample_rate
        self.seed = seed
        self.options = options
        self.stats = None if stats is None else load_stats(stats, self.mel_config.n_mels)

    @torch.no_grad()
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        n_mels = self.mel_config.n_mels
        if feats.dim() != 2 or feats.shape[1] != n_mels:
            raise WavflowError(f"features of shape {tuple(feats.shape)}: expected [frames, {n_mels}] "
                               f"(ESPnet's time-first layout)")
        mel = feats.detach().float().cpu().numpy().T
        wav = synthesize(mel, model=self.model, seed=self.seed, stats=self.stats, **self.options)
        return wav.to(feats.device)
