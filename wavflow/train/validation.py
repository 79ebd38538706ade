"""Validation: the held-out clips of a run, their NLL pooled over every process, and the audio samples that
TensorBoard shows of the first clip."""
from __future__ import annotations

import torch

from ..data import LJSpeech, validation_clips
from ..frontend import MelConfig, mel_spectrogram
from ..metrics import pooled_nll
from ..pitch import PitchTrack
from .config import TrainConfig
from .runtime import Runtime, separate_rng


class Validation:
    """train.valid_clips clips of `valid_set` (each at most train.valid_max_seconds) on `device`; none when the
    run has no validation set or train.valid_every is 0. `history` holds the (step, NLL) pairs so far and
    `validated_at` the step of the last one. With `pitch` (a model with a source), the clips' recorded pitch
    tracks too, for `nll_given_pitch`."""

    def __init__(self, valid_set: LJSpeech | None, settings: TrainConfig, mel_config: MelConfig, runtime: Runtime,
                 device: torch.device, pitch: bool = False):
        self.mel_config, self.runtime, self.device = mel_config, runtime, device
        self.clips: list[torch.Tensor] = []
        self.pitch: list[PitchTrack] | None = None
        if valid_set is not None and settings.valid_every > 0:
            clips = validation_clips(valid_set, settings.valid_clips, settings.valid_max_seconds)
            # A clip needs more than n_fft / 2 samples for a mel (reflect padding); shorter ones are left out.
            kept = [i for i, clip in enumerate(clips) if clip.audio.shape[0] > mel_config.n_fft // 2]
            self.clips = [clips[i].audio.to(device) for i in kept]
            if pitch and kept:
                valid_set.attach_pitch()
                self.pitch = [valid_set.pitch[i] for i in kept]
        self.history: list[tuple[int, float]] = []
        self.validated_at = -1

    def nll(self, model: torch.nn.Module) -> float | None:
        """`model`'s NLL in nats per sample over the clips, as it samples (a model with a source from its predicted
        pitch, the phase running free), each process scoring its share (a collective: every process calls it);
        None without clips. The training run's random streams do not move."""
        return self._pooled(model, None)

    def nll_given_pitch(self, model: torch.nn.Module) -> float | None:
        """A model with a source: its NLL given the recordings' pitch tracks, as it trains (metrics.pooled_nll),
        the held-out twin of the training loss's NLL; None for other models (a collective, as `nll`)."""
        return None if self.pitch is None else self._pooled(model, self.pitch)

    def _pooled(self, model: torch.nn.Module, pitch: list[PitchTrack] | None) -> float | None:
        if not self.clips:
            return None
        runtime = self.runtime
        share = slice(runtime.rank, None, runtime.world_size)
        model.eval()
        with separate_rng(self.device):
            total, count = pooled_nll(model, self.clips[share], self.mel_config,
                                      pitch=None if pitch is None else pitch[share])
        model.train()
        total, count = runtime.all_sum([total, float(count)], self.device)
        return total / int(count)

    def record(self, step: int, nll: float) -> None:
        self.validated_at = step
        self.history.append((step, nll))

    def real(self, seconds: float) -> torch.Tensor:
        """The first clip's first `seconds`, on the device."""
        return self.clips[0][: int(seconds * self.mel_config.sample_rate)]

    def generated(self, model: torch.nn.Module, seconds: float, seed: int, options: dict) -> torch.Tensor:
        """`model`'s audio [T] on the CPU for the mel of `real(seconds)`, from the same noise every time (drawn
        from `seed`), so successive samples differ only by what the model learnt; `options` go to `infer`."""
        mel = mel_spectrogram(self.real(seconds).unsqueeze(0), self.mel_config)
        model.eval()
        with separate_rng(self.device), torch.no_grad():
            generator = torch.Generator(self.device).manual_seed(seed)
            audio = model.infer(mel, generator=generator, **options)
        model.train()
        return audio[0].float().clamp(-1, 1).cpu()
