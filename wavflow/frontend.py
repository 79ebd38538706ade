"""The mel front end (design.md section 1): one mel function for every convention wavflow reads.

One function serves data preparation, training losses, evaluation and the `python -m wavflow.mel` command,
so a mel computed anywhere in wavflow is the mel every model was trained on. `MelConfig` describes a
convention completely (rate, STFT, bands, scale, compression, normalisation) and travels in every checkpoint;
`PRESETS` names the conventions of the toolkits users' TTS models come from (design.md section 8).

Mels that come in from elsewhere (mel files and their layouts, normalisation statistics, the convention checks
against a `MelConfig`) are wavflow.melinput's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import WavflowError

# The mel input half (files, layouts, statistics) is wavflow.melinput; its MAX_SECONDS bounds max_frames.
from .melinput import MAX_SECONDS

LOG_BASES = {"e": math.e, "10": 10.0}


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 22050  # Hz
    n_fft: int = 1024
    hop_length: int = 256  # one mel frame per hop: F frames vocode to F * hop samples
    win_length: int = 1024  # periodic Hann window, zero-padded to n_fft
    center: bool = True  # reflect-pad n_fft // 2 per side (T // hop + 1 frames); False: (n_fft - hop) // 2 (T // hop)
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    mel_scale: str = "slaney"  # "slaney" (Auditory Toolbox, librosa's default) or "htk" (2595 log10(1 + f / 700))
    mel_norm: str | None = "slaney"  # "slaney": each filter has unit area in Hz; None: peak 1
    magnitude_eps: float = 0.0  # |X| = sqrt(re^2 + im^2 + eps); HiFi-GAN adds 1e-9
    log_base: str = "e"  # "e" (Tacotron 2, HiFi-GAN, WaveGlow) or "10" (ESPnet, ParallelWaveGAN)
    clip_val: float = 1e-5  # log(max(mel, clip_val)): ln(1e-5) = -11.5129 is the Tacotron 2 silence floor
    mean: tuple[float, ...] | None = None  # per-band statistics: the stored mel is (log-mel - mean) / std
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):  # YAML, JSON and checkpoints give lists
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        problems = []
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not problems:
            if self.win_length > self.n_fft:
                problems.append(f"win_length={self.win_length} must not exceed n_fft={self.n_fft}")
            if not self.center and (self.n_fft - self.hop_length) % 2:
                problems.append(f"center=false pads (n_fft - hop) / 2 per side: n_fft={self.n_fft} and "
                                f"hop_length={self.hop_length} must differ by an even number")
            if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
                problems.append(f"fmin={self.fmin} and fmax={self.fmax} must satisfy 0 <= fmin < fmax <= "
                                f"sample_rate / 2 = {self.sample_rate / 2:g}")
        if self.mel_scale not in ("slaney", "htk"):
            problems.append(f"mel_scale={self.mel_scale!r} must be 'slaney' or 'htk'")
        if self.mel_norm not in ("slaney", None):
            problems.append(f"mel_norm={self.mel_norm!r} must be 'slaney' or null")
        if self.log_base not in LOG_BASES:
            problems.append(f"log_base={self.log_base!r} must be 'e' or '10'")
        if not (isinstance(self.clip_val, (int, float)) and self.clip_val > 0 and math.isfinite(self.clip_val)):
            problems.append(f"clip_val={self.clip_val!r} must be a positive number")
        if not (isinstance(self.magnitude_eps, (int, float)) and 0 <= self.magnitude_eps < math.inf):
            problems.append(f"magnitude_eps={self.magnitude_eps!r} must be a number >= 0")
        if (self.mean is None) != (self.std is None):
            problems.append("mean and std come together: give both per-band statistics or neither")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and isinstance(self.n_mels, int) and len(value) != self.n_mels:
                problems.append(f"{name} has {len(value)} values for {self.n_mels} bands")
            elif value is not None and not all(math.isfinite(v) for v in value):
                problems.append(f"{name} holds NaN or infinite values")
        if self.std is not None and any(v <= 0 for v in self.std):
            problems.append("std must be positive in every band")
        if problems:
            raise WavflowError(f"invalid MelConfig: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MelConfig:
        """From a checkpoint's or a YAML file's dict; settings missing from an older checkpoint keep their default,
        which is the convention every checkpoint used before they existed."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise WavflowError(f"unknown mel setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MelConfig:
        """A named convention (PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise WavflowError(f"unknown mel preset '{name}'; known: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def with_stats(self, mean: Any, std: Any) -> MelConfig:
        return dataclasses.replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    def num_frames(self, num_samples: int) -> int:
        """Frames of the STFT over `num_samples` samples: T // hop + 1 centred, T // hop (for T >= hop) not."""
        if self.center:
            return num_samples // self.hop_length + 1
        return (num_samples + 2 * self.pad - self.n_fft) // self.hop_length + 1

    @property
    def max_frames(self) -> int:
        """Frames of ten minutes of audio: the longest mel accepted (longer inputs are refused, not risked)."""
        return MAX_SECONDS * self.sample_rate // self.hop_length

    @property
    def pad(self) -> int:
        """Reflect padding per side."""
        return self.n_fft // 2 if self.center else (self.n_fft - self.hop_length) // 2

    @property
    def silence(self) -> float:
        """The value of digital silence in this convention: the floor's log, normalised when stats are set."""
        return float(self.compress(torch.zeros(self.n_mels, 1, dtype=torch.float64)).mean())

    def compress(self, mel: torch.Tensor) -> torch.Tensor:
        """Linear mel magnitudes [..., n_mels, F] -> the stored values: log_base(max(mel, clip_val)), normalised."""
        out = torch.log(torch.clamp(mel, min=self.clip_val))
        if self.log_base != "e":
            out = out / math.log(LOG_BASES[self.log_base])
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device)[:, None]
            std = torch.tensor(self.std, dtype=out.dtype, device=out.device)[:, None]
            out = (out - mean) / std
        return out

    def decompress(self, values: torch.Tensor) -> torch.Tensor:
        """The inverse of `compress` above the floor: stored values -> linear mel magnitudes."""
        out = values
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=out.dtype, device=out.device)[:, None]
            std = torch.tensor(self.std, dtype=out.dtype, device=out.device)[:, None]
            out = out * std + mean
        return torch.exp(out * math.log(LOG_BASES[self.log_base]))


# Conventions of the toolkits TTS models come from (design.md section 8 gives the source of each number).
PRESETS: dict[str, MelConfig] = {
    # NVIDIA Tacotron 2 / WaveGlow: the default, and what every shipped model was trained on.
    "tacotron2": MelConfig(),
    # jik876/hifi-gan (and BigVGAN): the same filters and natural log, but not centred (reflect padding of
    # (n_fft - hop) / 2, so T samples give T // hop frames, each half a hop later) and sqrt(|X|^2 + 1e-9).
    "hifigan": MelConfig(center=False, magnitude_eps=1e-9),
    # kan-bayashi/ParallelWaveGAN and ESPnet: 80-7600 Hz, log10 of max(mel, 1e-10); usually normalised with
    # the training set's statistics as well (MelConfig.with_stats / --stats).
    "parallel_wavegan": MelConfig(fmin=80.0, fmax=7600.0, log_base="10", clip_val=1e-10),
    "espnet": MelConfig(fmin=80.0, fmax=7600.0, log_base="10", clip_val=1e-10),
}


def _hz_to_mel(f: np.ndarray, scale: str = "slaney") -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney's Auditory Toolbox scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray, scale: str = "slaney") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def mel_basis(config: MelConfig) -> torch.Tensor:
    """Triangular mel filters, [n_mels, n_fft // 2 + 1], on the config's scale and normalisation.

    The same filters as librosa.filters.mel (htk= and norm= mapped from the config), built in float64 and
    rounded once: a float32 build drifts by 1e-4 in the log domain on quiet high bands, where the filters'
    tails dominate.
    """
    scale = config.mel_scale
    fft_freqs = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin, scale), _hz_to_mel(config.fmax, scale),
                                   config.n_mels + 2), scale)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if config.mel_norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # each filter has unit area in Hz
    return torch.from_numpy(weights.astype(np.float32))


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """|STFT| of [B, T] audio with a periodic Hann window, centred with reflect padding: [B, n_fft//2+1, T//hop+1]."""
    window = torch.hann_window(win_length, periodic=True, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length, win_length, window, center=True, pad_mode="reflect",
                      return_complex=True)
    return spec.abs()


class MelSpectrogram(torch.nn.Module):
    """Log-mel spectrogram: [B, T] or [T] float audio in [-1, 1] -> [B, n_mels, config.num_frames(T)]."""

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("basis", mel_basis(config).double(), persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_length, periodic=True, dtype=torch.float64),
                             persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        c = self.config
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.shape[-1] <= c.pad:
            raise WavflowError(f"audio of {audio.shape[-1]} samples is too short for a mel: need more than {c.pad}")
        # float64 even under autocast: torch's float32 FFT is ~1e-7 off the frame's peak, which on quiet bins of a
        # loud frame moves the log-mel by 2e-4; in float64 the mel matches the reference to 1e-6, at negligible cost
        # beside any vocoder.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            x = audio.double()
            if not c.center:  # HiFi-GAN's framing: pad so frame i starts at i * hop - pad
                x = torch.nn.functional.pad(x.unsqueeze(1), (c.pad, c.pad), mode="reflect").squeeze(1)
            spec = torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=c.center,
                              pad_mode="reflect", return_complex=True)
            spec = spec.abs() if c.magnitude_eps == 0 else torch.sqrt(spec.real ** 2 + spec.imag ** 2 + c.magnitude_eps)
            mel = c.compress(torch.matmul(self.basis, spec))
            return mel.to(audio.dtype if audio.is_floating_point() else torch.float32)


_cache: dict[tuple[MelConfig, str], MelSpectrogram] = {}


def mel_spectrogram(audio: torch.Tensor, config: MelConfig = MelConfig()) -> torch.Tensor:
    """Functional form of MelSpectrogram, reusing the filters per (config, device)."""
    key = (config, str(audio.device))
    if key not in _cache:
        _cache[key] = MelSpectrogram(config).to(audio.device)
    return _cache[key](audio)
