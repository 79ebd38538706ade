"""The source module: F0 and voicing predicted from the mel, and the harmonic excitation made from them
(design.md section 9).

Neural source-filter vocoders (Wang, Takaki & Yamagishi 2019) give the network a sine excitation at F0 and
let it learn the filter; a network that must discover periodicity on its own from the mel learns it slowly.

    mel [B, n_mels, F] --PitchPredictor--> log-F0 and voicing per frame [B, F]
    (F0, voicing, phase anchors) --excitation--> e [B, T]: sum of the harmonics k * F0 below Nyquist,
                                                  gated by voicing, RMS `amplitude` where voiced

The phase is integrated from the frame-rate F0, linearly interpolated between frame centres (frame k sits at
sample k * hop, the mel's centring), in closed form per frame:

    phi(k * hop + j) = Psi_k + 2 pi / fs * (j (f_k + d_k) + (f_{k+1} - f_k) j (j - 1) / (2 hop)),   0 <= j < hop

Psi_k, the phase at frame k's centre, is a float64 running sum over frames (`SourceTrack.anchors`), so any
span of samples is made from its frames alone: a chunk of the excitation equals the same samples of the
whole utterance's, which streaming relies on. d_k is a per-frame detune, 0 except for a phase-locked track.

Phase-locked training excitation (`locked_track`): while training, the recording is known, so the phase of
its fundamental at each voiced frame centre is measured (a Hann-windowed projection onto the frame's F0) and
d_k bends the integrated phase to pass through it. The flow then sees an excitation whose harmonics line up
with the recording's and can learn the filter from the likelihood alone; at inference the phase runs free
from 0, which changes only the absolute phase of the harmonics, not what the ear hears.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WavflowError
from .pitch import FMAX, FMIN

LOG_FMIN, LOG_RANGE = math.log(FMIN), math.log(FMAX / FMIN)
UNVOICED_F0 = 100.0  # Hz: the F0 carried through unvoiced frames (gated off; keeps the phase smooth at onsets)


class PitchPredictor(nn.Module):
    """Frame-rate convolutions from the mel to log-F0 and a voicing logit.

    mel [B, n_mels, F] -> (log_f0 [B, F] in ln Hz within [ln FMIN, ln FMAX], voicing logit [B, F]).
    Non-causal, `reach` frames either side; every layer is local in time, so windows of the mel give the same
    frames as the whole.
    """

    def __init__(self, n_mels: int, channels: int = 64, layers: int = 4, kernel_size: int = 5):
        super().__init__()
        self.inp = nn.Conv1d(n_mels, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
                                   for _ in range(layers))
        self.out = nn.Conv1d(channels, 2, 1)
        self.reach = layers * (kernel_size // 2)

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        h = self.inp(mel)
        for conv in self.convs:
            h = h + conv(F.leaky_relu(h, 0.1))
        out = self.out(F.leaky_relu(h, 0.1))
        return LOG_FMIN + LOG_RANGE * torch.sigmoid(out[:, 0]), out[:, 1]

    def loss(self, mel: Tensor, f0: Tensor, voiced: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Supervised by a pitch track of the recording (wavflow.pitch): voicing cross-entropy on every frame
        plus |log2 F0 error| (octaves) on the voiced ones. f0, voiced [B, F'] with F' >= F frames used."""
        log_f0, logit = self(mel)
        n = log_f0.shape[-1]
        f0, voiced = f0[:, :n].to(log_f0.dtype), voiced[:, :n].to(log_f0.dtype)
        bce = F.binary_cross_entropy_with_logits(logit, voiced)
        octaves = (log_f0 - torch.log(f0.clamp_min(1.0))).abs() / math.log(2.0)
        f0_l1 = (octaves * voiced).sum() / voiced.sum().clamp_min(1.0)
        return bce + f0_l1, {"pitch/voicing_bce": bce.item(), "pitch/f0_octaves": f0_l1.item()}

    @torch.no_grad()
    def predict(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """mel [B, n_mels, F] -> (f0 [B, F] Hz, 0 where unvoiced; voiced [B, F] float 0/1)."""
        log_f0, logit = self(mel)
        voiced = (logit > 0).to(torch.float32)
        return torch.exp(log_f0.float()) * voiced, voiced


class HarmonicAmplitudes(nn.Module):
    """Frame-rate convolutions from the mel to the cosine and sine amplitudes of harmonics 1..K of F0:
    mel [B, n_mels, F] -> [B, 2K, F] (cosines first). The output conv starts at zero, so the harmonic mean
    starts silent. Local in time like PitchPredictor (`reach` frames either side)."""

    def __init__(self, n_mels: int, harmonics: int, channels: int = 64, layers: int = 4, kernel_size: int = 5):
        super().__init__()
        self.inp = nn.Conv1d(n_mels, channels, 1)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
                                   for _ in range(layers))
        self.out = nn.Conv1d(channels, 2 * harmonics, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.reach = layers * (kernel_size // 2)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.inp(mel)
        for conv in self.convs:
            h = h + conv(F.leaky_relu(h, 0.1))
        return self.out(F.leaky_relu(h, 0.1))


@dataclass
class SourceTrack:
    """Everything the source of frames [k0, k0 + F) needs: f0 [B, F] Hz (0 where unvoiced), voiced [B, F] 0/1,
    detune [B, F] Hz, anchors [B, F] float64 (the phase at each frame centre, mod 2 pi) and, for a model whose
    audio has a harmonic mean, the harmonics' amplitudes [B, 2K, F] (HarmonicAmplitudes)."""
    f0: Tensor
    voiced: Tensor
    detune: Tensor
    anchors: Tensor
    amplitudes: Tensor | None = None

    def frames(self, start: int, stop: int) -> SourceTrack:
        """Frames [start, stop), and the frame after them where there is one: a frame's samples interpolate
        towards the next frame, so the excitation of the first (stop - start) * hop samples equals the whole's."""
        end = min(stop + 1, self.f0.shape[1])
        amplitudes = None if self.amplitudes is None else self.amplitudes[..., start:end]
        return SourceTrack(self.f0[:, start:end], self.voiced[:, start:end], self.detune[:, start:end],
                           self.anchors[:, start:end], amplitudes)

    def with_amplitudes(self, amplitudes: Tensor | None) -> SourceTrack:
        return SourceTrack(self.f0, self.voiced, self.detune, self.anchors, amplitudes)


def _filled(f0: Tensor, voiced: Tensor) -> Tensor:
    return torch.where(voiced > 0, f0, torch.full_like(f0, UNVOICED_F0)).to(torch.float64)


def phase_steps(f: Tensor, detune: Tensor, hop: int, sample_rate: int) -> Tensor:
    """The phase advance from each frame centre to the next, [B, F] float64 (the last frame holds its F0)."""
    nxt = torch.cat([f[:, 1:], f[:, -1:]], 1)
    return 2 * math.pi / sample_rate * (hop * (f + detune) + (nxt - f) * (hop - 1) / 2)


def anchors_from(steps: Tensor, phase0: Tensor | float = 0.0) -> Tensor:
    """Exclusive running sum of the phase steps from phase0, mod 2 pi: [B, F] float64. Computed in numpy
    (a sequential sum), so a prefix of the frames always gives the same values."""
    s = steps.detach().cpu().numpy().astype(np.float64)
    start = np.broadcast_to(np.asarray(phase0, dtype=np.float64), (s.shape[0],)).reshape(-1, 1)
    out = np.cumsum(np.concatenate([start, s[:, :-1]], 1), axis=1)
    return torch.from_numpy(np.mod(out, 2 * math.pi)).to(steps.device)


def free_track(f0: Tensor, voiced: Tensor, hop: int, sample_rate: int, traceable: bool = False) -> SourceTrack:
    """The inference track: the phase integrated from 0 at the first frame. traceable: the running sum as a
    torch op (for an ONNX graph; equal to the numpy sum to float64 rounding)."""
    f0, voiced = f0.float(), voiced.float()
    detune = torch.zeros_like(f0)
    steps = phase_steps(_filled(f0, voiced), detune.double(), hop, sample_rate)
    if traceable:
        anchors = torch.remainder(torch.cumsum(torch.cat([torch.zeros_like(steps[:, :1]), steps[:, :-1]], 1), 1),
                                  2 * math.pi)
    else:
        anchors = anchors_from(steps)
    return SourceTrack(f0, voiced, detune, anchors)


def fundamental_phase(audio: Tensor, f0: Tensor, hop: int, sample_rate: int, window: int = 1024) -> Tensor:
    """The phase of the component at f0 in a Hann window centred on each frame: audio [B, T], f0 [B, F] Hz ->
    [B, F] radians, with audio(t) ~ A cos(2 pi f0 (t - k hop) / fs + phase_k) near frame k's centre."""
    b, frames = f0.shape
    half = window // 2
    x = F.pad(audio.float(), (half, half + max(0, frames * hop - audio.shape[-1])))
    segments = x.unfold(-1, window, hop)[:, :frames]  # [B, F, window], centred on k * hop
    tau = torch.arange(window, device=audio.device, dtype=torch.float32) - half
    w = torch.hann_window(window, periodic=False, device=audio.device)
    angle = 2 * math.pi / sample_rate * f0.float()[..., None] * tau  # [B, F, window]
    re = (segments * w * torch.cos(angle)).sum(-1)
    im = -(segments * w * torch.sin(angle)).sum(-1)
    return torch.atan2(im, re)


def locked_track(audio: Tensor, f0: Tensor, voiced: Tensor, hop: int, sample_rate: int) -> SourceTrack:
    """The training track whose phase passes through the recording's fundamental at every voiced frame centre
    (module docstring). audio [B, T], f0 / voiced [B, F] from the recording's pitch track."""
    f0, voiced = f0.float(), voiced.float()
    f = _filled(f0, voiced)
    base = anchors_from(phase_steps(f, torch.zeros_like(f), hop, sample_rate)).cpu()  # free-running phase, mod 2 pi
    measured = fundamental_phase(audio, f0.clamp_min(1.0), hop, sample_rate).double().cpu()
    v = voiced.cpu() > 0
    # r_k: how far the recording's phase is ahead of the free-running one, held through unvoiced frames
    r = torch.where(v, measured - base, torch.zeros_like(base))
    index = torch.where(v, torch.arange(v.shape[1]).expand_as(v), torch.zeros_like(v, dtype=torch.long))
    index = torch.cummax(index, 1).values
    r = r.gather(1, index)
    # The correction from frame k to k + 1, wrapped to (-pi, pi], spread over the hop as a constant detune.
    delta = torch.remainder(r[:, 1:] - r[:, :-1] + math.pi, 2 * math.pi) - math.pi
    delta = torch.cat([delta, torch.zeros_like(delta[:, :1])], 1)
    detune = delta * sample_rate / (2 * math.pi * hop)
    steps = phase_steps(f.cpu(), detune, hop, sample_rate)
    anchors = anchors_from(steps, r[:, 0])
    return SourceTrack(f0, voiced, detune.float().to(f0.device), anchors.to(f0.device))


@torch.no_grad()
def training_track(audio: Tensor, f0: Tensor, voiced: Tensor, phase: str, mel_config: Any) -> SourceTrack:
    """The training source of crops audio [B, T] from their recordings' pitch tracks f0 / voiced [B, F]: phase
    "recording" locks it to the recording (`locked_track`), "free" runs it from 0 (`free_track`)."""
    hop, rate = mel_config.hop_length, mel_config.sample_rate
    if phase == "recording":
        return locked_track(audio, f0, voiced, hop, rate)
    return free_track(f0, voiced, hop, rate)


def _phase(track: SourceTrack, hop: int, sample_rate: int) -> tuple[Tensor, Tensor, Tensor]:
    """(phi, freq, gate), each [B, F, hop] float64: the phase (mod 2 pi), the interpolated F0 and voicing of every
    sample of the track's frames (module docstring)."""
    f = _filled(track.f0, track.voiced)
    nxt = torch.cat([f[:, 1:], f[:, -1:]], 1)
    v = track.voiced.double()
    v_next = torch.cat([v[:, 1:], v[:, -1:]], 1)
    j = torch.arange(hop, device=f.device, dtype=torch.float64)
    slope = (nxt - f)[..., None] / hop  # Hz per sample
    freq = f[..., None] + slope * j  # [B, F, hop]
    offset = 2 * math.pi / sample_rate * (j * (f + track.detune.double())[..., None] + slope * (j * (j - 1) / 2))
    phi = torch.remainder(track.anchors.double()[..., None] + offset, 2 * math.pi)
    gate = v[..., None] + (v_next - v)[..., None] * (j / hop)
    return phi, freq, gate


def harmonic_mean(track: SourceTrack, hop: int, sample_rate: int, num_samples: int | None = None,
                  block: int | None = 32) -> Tensor:
    """The harmonic part of the audio the track's amplitudes describe: [B, F * hop] (or the first num_samples),
    in the amplitudes' dtype (float32 at least).

    Sample j of frame k: voicing * sum_{m <= K, m f < fs / 2} a_m cos(m phi) + b_m sin(m phi), with (a, b) the
    track's amplitudes [B, 2K, F] interpolated linearly between frame centres, like F0 and the voicing. Made
    `block` frames at a time: the cosines of a block are [B, K, block, hop] (None: every frame at once).
    """
    amps = track.amplitudes
    harmonics = amps.shape[1] // 2
    dtype = torch.promote_types(amps.dtype, torch.float32)
    phi, freq, gate = _phase(track, hop, sample_rate)
    nxt = torch.cat([amps[..., 1:], amps[..., -1:]], -1).to(dtype)
    amps = amps.to(dtype)
    m = torch.arange(1, harmonics + 1, device=amps.device, dtype=torch.float64)[None, :, None, None]
    w = (torch.arange(hop, device=amps.device, dtype=dtype) / hop)[None, None, None, :]
    out = []
    step = phi.shape[1] if block is None else block
    for k0 in range(0, phi.shape[1], step):
        k1 = min(k0 + step, phi.shape[1])
        angle = torch.remainder(m * phi[:, None, k0:k1], 2 * math.pi).to(dtype)  # [B, K, blk, hop]
        below = (m * freq[:, None, k0:k1] < sample_rate / 2).to(dtype)
        a = amps[:, :harmonics, k0:k1, None] * (1 - w) + nxt[:, :harmonics, k0:k1, None] * w
        b = amps[:, harmonics:, k0:k1, None] * (1 - w) + nxt[:, harmonics:, k0:k1, None] * w
        out.append(((a * torch.cos(angle) + b * torch.sin(angle)) * below).sum(1) * gate[:, k0:k1].to(dtype))
    mean = torch.cat(out, 1).flatten(1)
    return mean if num_samples is None else mean[:, :num_samples]


def excitation(track: SourceTrack, hop: int, sample_rate: int, amplitude: float = 0.1,
               num_samples: int | None = None) -> Tensor:
    """The harmonic excitation of a track's frames: [B, F * hop] float32 (or the first num_samples).

    Sample j of frame k: amplitude * sqrt(2 / K) * sum_{m=1..K} cos(m phi) * voicing, with K the harmonics of
    the interpolated F0 below Nyquist (so the RMS is `amplitude` whatever the pitch) and the voicing
    interpolated linearly between frame centres. The sum is the Dirichlet kernel's closed form.
    """
    # float64 throughout: the pulse at each period is steep (its slope grows as K^3), and float32 phases would
    # move its peak samples by 0.1%.
    phi, freq, gate = _phase(track, hop, sample_rate)
    k = torch.clamp(torch.floor(sample_rate / 2 / freq), min=1.0)
    half = torch.sin(phi / 2)
    small = half.abs() < 1e-6
    dirichlet = torch.where(small, k, torch.sin((k + 0.5) * phi) / (2 * torch.where(small, torch.ones_like(half),
                                                                                     half)) - 0.5)
    e = (amplitude * torch.sqrt(2.0 / k) * dirichlet * gate).flatten(1).float()
    return e if num_samples is None else e[:, :num_samples]


def predicted_pitch_error(predictor: PitchPredictor, mel: Tensor, f0: np.ndarray, voiced: np.ndarray) -> float:
    """How far F0 and voicing [B, F] (an exported graph's) are from `predictor`'s on `mel`: 1 where a voicing
    decision differs, else the largest relative difference of F0 (floored at 1 Hz)."""
    with torch.no_grad():
        mine, mine_voiced = predictor.predict(mel)
    if not torch.equal(mine_voiced.cpu(), torch.from_numpy(voiced).float()):
        return 1.0
    return float(((torch.from_numpy(f0) - mine.cpu()).abs() / mine.cpu().clamp_min(1)).max())


class HarmonicSource:
    """The harmonic source of the WaveNet-style vocoders (the teacher and the student; design.md section 9), mixed
    into the model: a pitch predictor (`source`), the harmonic mean's amplitudes (`harmonics`) and a 1x1
    projection of the excitation into the upsampled mel's channels (`excite`), all None without a source.
    The host has `config.source_amplitude` and `mel_config`. The amplitudes' output conv and the projection start
    at zero, so a model grown a source computes what it did."""

    source: PitchPredictor | None
    harmonics: HarmonicAmplitudes | None
    excite: nn.Conv1d | None

    def build_source(self, n_mels: int, harmonics: int, channels: int, cond_channels: int) -> None:
        on = harmonics > 0
        self.source = PitchPredictor(n_mels, channels) if on else None
        self.harmonics = HarmonicAmplitudes(n_mels, harmonics, channels) if on else None
        self.excite = nn.Conv1d(1, cond_channels, 1) if on else None
        if self.excite is not None:
            nn.init.zeros_(self.excite.weight)
            nn.init.zeros_(self.excite.bias)

    def source_track(self, mel: Tensor) -> SourceTrack:
        """The inference source of a mel [B, n_mels, F]: predicted F0 and voicing, the phase running free from 0,
        and the harmonic mean's amplitudes (with gradients, when enabled)."""
        f0, voiced = self.source.predict(mel.to(self.source.inp.weight.dtype))
        return self.track_of(f0, voiced, mel)

    def source_of(self, mel: Tensor, track: SourceTrack | None = None) -> SourceTrack | None:
        """The source for `mel`: `track` where one is given (the recording's in training, a stream's window of the
        whole utterance's), else the predicted one (`source_track`); None for a model without a source."""
        if self.source is None:
            return None
        return self.source_track(mel) if track is None else track

    def recording_track(self, audio: Tensor, mel: Tensor, f0: Tensor, voiced: Tensor) -> SourceTrack:
        """The training source of audio [B, T] (mel [B, n_mels, F]) from its recording's pitch track f0 / voiced
        [B, F] on the audio's device: phase-locked to the recording or running free as config.source_phase says
        (`training_track`), with the harmonic mean's amplitudes of the mel (with gradients, when enabled: the
        likelihood trains them)."""
        return self.with_amplitudes(training_track(audio, f0, voiced, self.config.source_phase, self.mel_config), mel)

    def with_amplitudes(self, track: SourceTrack, mel: Tensor) -> SourceTrack:
        """The track with the harmonic mean's amplitudes of this mel (unchanged without harmonics: a WaveGlow's
        source may have none)."""
        if self.harmonics is None:
            return track
        return track.with_amplitudes(self.harmonics(mel.to(self.harmonics.inp.weight.dtype)))

    def with_excitation(self, c: Tensor, track: SourceTrack | None) -> Tensor:
        """Conditioning c [B, C, n] of a track's first n samples, plus the projected excitation (c without a
        source)."""
        if self.source is None:
            return c
        e = excitation(track, self.mel_config.hop_length, self.mel_config.sample_rate, self.config.source_amplitude,
                       c.shape[-1])
        return c + self.excite(e[:, None].to(c.dtype))

    def track_of(self, f0: Tensor, voiced: Tensor, mel: Tensor) -> SourceTrack:
        """The inference source of given F0 and voicing [B, F] (phase running free from 0) for a mel."""
        return self.with_amplitudes(free_track(f0, voiced, self.mel_config.hop_length, self.mel_config.sample_rate),
                                    mel)

    def mean_of(self, track: SourceTrack | None, length: int) -> Tensor | None:
        """The harmonic mean h [B, length] of a track's first `length` samples (None without a source)."""
        if self.source is None:
            return None
        return harmonic_mean(track, self.mel_config.hop_length, self.mel_config.sample_rate, length)

    def export_options(self, mel: Tensor, outputs: Sequence[np.ndarray]) -> dict[str, Any]:
        """With a source, the track of the F0 and voicing an exported graph predicted (outputs[1:3])."""
        if self.source is None:
            return {}
        f0, voiced = (torch.from_numpy(o).to(mel.device) for o in outputs[1:3])
        return {"source_track": self.track_of(f0, voiced, mel)}

    def export_output_error(self, mel: Tensor, outputs: Sequence[np.ndarray]) -> float:
        """With a source, how far an exported graph's F0 and voicing (outputs[1:3]) are from the predictor's."""
        return 0.0 if self.source is None else predicted_pitch_error(self.source, mel, outputs[1], outputs[2])

    def grown_copy(self, config: Any, allowed: tuple[str, ...]) -> Any:
        """This model with `config` (which may differ only in `allowed` keys): the same weights, the source's new
        parts at their start (`build_source`), so it computes what it did."""
        mine, theirs = dataclasses.asdict(self.config), dataclasses.asdict(config)
        changed = sorted(k for k in mine if mine[k] != theirs[k])
        if any(k not in allowed for k in changed):
            raise WavflowError(f"cannot grow this {self.model_type} into one that differs in {', '.join(changed)}: "
                               f"only a source can be added ({', '.join(allowed)})")
        new = type(self)(config, self.mel_config).to(next(self.parameters()).device)
        missing, unexpected = new.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(k.split(".")[0] not in ("source", "harmonics", "excite") for k in missing):
            raise WavflowError(f"cannot grow this {self.model_type}: its weights do not fit "
                               f"({', '.join(unexpected + missing)})")
        return new
