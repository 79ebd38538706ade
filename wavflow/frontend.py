"""The mel spectrogram of design.md section 1 (NVIDIA Tacotron 2 / WaveGlow convention), in torch.

One function serves data preparation, training losses, evaluation and the `python -m wavflow.mel` command,
so a mel computed anywhere in wavflow is the mel every model was trained on.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import WavflowError
from .fileio import atomic_write, check_input_file


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 22050  # Hz
    n_fft: int = 1024
    hop_length: int = 256  # one mel frame per 256 samples: F frames vocode to F * 256 samples
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    clip_val: float = 1e-5  # log(max(mel, 1e-5)): silence sits at ln(1e-5) = -11.5129

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "MelConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise WavflowError(f"unknown mel setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT over `num_samples` samples: T // hop + 1."""
        return num_samples // self.hop_length + 1


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def mel_basis(config: MelConfig) -> torch.Tensor:
    """Slaney-scale triangular filters with Slaney area normalisation, [n_mels, n_fft // 2 + 1].

    The same filters as librosa.filters.mel's defaults, built in float64 and rounded once: a float32 build
    drifts by 1e-4 in the log domain on quiet high bands, where the filters' tails dominate.
    """
    fft_freqs = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(config.fmax), config.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # each filter has unit area in Hz
    return torch.from_numpy(weights.astype(np.float32))


def stft_magnitude(audio: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """|STFT| of [B, T] audio with a periodic Hann window, centred with reflect padding: [B, n_fft//2+1, T//hop+1]."""
    window = torch.hann_window(win_length, periodic=True, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length, win_length, window, center=True, pad_mode="reflect",
                      return_complex=True)
    return spec.abs()


class MelSpectrogram(torch.nn.Module):
    """Log-mel spectrogram: [B, T] or [T] float audio in [-1, 1] -> [B, n_mels, T // hop + 1] (natural log)."""

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
        if audio.shape[-1] <= c.n_fft // 2:
            raise WavflowError(f"audio of {audio.shape[-1]} samples is too short for a mel: need more than {c.n_fft // 2}")
        # float64 even under autocast: torch's float32 FFT is ~1e-7 off the frame's peak, which on quiet bins of a
        # loud frame moves the log-mel by 2e-4; in float64 the mel matches the reference to 1e-6, at negligible cost
        # beside any vocoder.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio.double(), c.n_fft, c.hop_length, c.win_length, self.window, center=True,
                              pad_mode="reflect", return_complex=True).abs()
            mel = torch.matmul(self.basis, spec)
            return torch.log(torch.clamp(mel, min=c.clip_val)).to(audio.dtype if audio.is_floating_point() else torch.float32)


_cache: dict[tuple[MelConfig, str], MelSpectrogram] = {}


def mel_spectrogram(audio: torch.Tensor, config: MelConfig = MelConfig()) -> torch.Tensor:
    """Functional form of MelSpectrogram, reusing the filters per (config, device)."""
    key = (config, str(audio.device))
    if key not in _cache:
        _cache[key] = MelSpectrogram(config).to(audio.device)
    return _cache[key](audio)


# ----------------------------------------------------------------------------------------------------------------
# Mel files written by other tools

MAX_FRAMES = 600 * 22050 // 256  # ten minutes of audio per file: more is refused rather than risking memory


def _mel_frames(shape: tuple[int, ...], dtype: np.dtype, n_mels: int, max_frames: int, name: str) -> int:
    """Check a mel's dtype and layout from its shape alone (so a file's header is judged before its data is
    read) and return its frame count."""
    if not np.issubdtype(dtype, np.floating):
        raise WavflowError(f"{name}: mel has dtype {dtype}, expected a floating-point array (float32)")
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3 and shape[0] == 1 and shape[1] == n_mels:
        frames = shape[2]
    elif len(shape) == 2 and shape[0] == n_mels:
        frames = shape[1]
    elif len(shape) == 2 and shape[1] == n_mels:
        frames = shape[0]
    else:
        raise WavflowError(f"{name}: mel has shape {shape}; accepted shapes are "
                           f"({n_mels}, F), (F, {n_mels}) or (1, {n_mels}, F)")
    if frames == 0:
        raise WavflowError(f"{name}: mel has zero frames")
    if frames > max_frames:
        raise WavflowError(f"{name}: mel has {frames} frames, more than the limit of {max_frames} "
                           f"({max_frames * 256 / 22050:.0f} s of audio); split it into shorter pieces")
    return frames


def check_mel(mel: np.ndarray, n_mels: int = 80, max_frames: int = MAX_FRAMES, name: str = "mel") -> np.ndarray:
    """Validate an in-memory mel and return it as contiguous float32 [n_mels, F].

    Accepted layouts: (n_mels, F) (Tacotron 2, wavflow), (F, n_mels) and (1, n_mels, F) (ParallelWaveGAN,
    HiFi-GAN); a square (n_mels, n_mels) array is read as (n_mels, F). `name` starts every error message.
    """
    _mel_frames(mel.shape, mel.dtype, n_mels, max_frames, name)
    if mel.ndim == 3:
        mel = mel[0]
    elif mel.shape[0] != n_mels:
        mel = mel.T
    if not np.all(np.isfinite(mel)):
        raise WavflowError(f"{name}: mel contains NaN or infinite values")
    return np.ascontiguousarray(mel, dtype=np.float32)


def load_mel(path: str | os.PathLike, n_mels: int = 80, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Read a mel .npy as float32 [n_mels, F], accepting the layouts TTS models write (see check_mel).

    The header is checked before any data is read: a pickled object is refused without being unpickled
    (never allow_pickle), and a shape above `max_frames` is refused before memory is allocated for it.
    """
    path = Path(path)
    check_input_file(path, "a .npy mel")
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            try:
                version = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran_order, dtype = read_header(f)
            except (ValueError, EOFError, SyntaxError, TypeError) as e:
                raise WavflowError(f"{path}: not a .npy array file ({str(e).splitlines()[0][:120]})") from None
            if dtype.hasobject:
                raise WavflowError(f"{path}: holds a pickled Python object; a mel must be a plain numeric array")
            _mel_frames(shape, dtype, n_mels, max_frames, str(path))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            data = f.read(nbytes)
    except OSError as e:
        raise WavflowError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) != nbytes:
        raise WavflowError(f"{path}: truncated .npy file ({len(data)} of {nbytes} data bytes)")
    mel = np.frombuffer(bytearray(data), dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return check_mel(mel, n_mels, max_frames, str(path))


def save_mel(path: str | os.PathLike, mel: np.ndarray | torch.Tensor) -> None:
    """Write a mel [n_mels, F] as a float32 .npy, under a temporary name renamed into place (never half a file)."""
    path = Path(path)
    arr = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))
