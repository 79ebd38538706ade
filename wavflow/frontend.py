"""The mel front end (design.md section 1): one mel function for every convention wavflow reads.

One function serves data preparation, training losses, evaluation and the `python -m wavflow.mel` command,
so a mel computed anywhere in wavflow is the mel every model was trained on. `MelConfig` describes a
convention completely (rate, STFT, bands, scale, compression, normalisation) and travels in every checkpoint;
`PRESETS` names the conventions of the toolkits users' TTS models come from (design.md section 8).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import WavflowError
from .fileio import atomic_write, check_input_file

LOG_BASES = {"e": math.e, "10": 10.0}
MAX_SECONDS = 600
QUIET_LOG10 = -6.0  # a log10 speech mel's quietest 1% stays above this (near -4); a natural-log one's lies near -9


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
    def from_dict(cls, d: dict[str, Any] | None) -> "MelConfig":
        """From a checkpoint's or a YAML file's dict; settings missing from an older checkpoint keep their default,
        which is the convention every checkpoint used before they existed."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise WavflowError(f"unknown mel setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MelConfig":
        """A named convention (PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise WavflowError(f"unknown mel preset '{name}'; known: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def with_stats(self, mean: Any, std: Any) -> "MelConfig":
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


def load_stats(path: str | os.PathLike, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (mean, std) from a statistics file: ParallelWaveGAN's stats.npy (rows mean and scale, [2, n_mels])
    or stats.h5 (datasets "mean" and "scale"; needs h5py), or ESPnet2's feats_stats.npz (arrays "count", "sum"
    and "sum_square": mean = sum / count, std = sqrt(sum_square / count - mean^2), as its GlobalMVN)."""
    path = Path(path)
    check_input_file(path, "a statistics file (.npy, .h5 or .npz)")
    if path.suffix == ".npy":
        try:
            stats = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise WavflowError(f"{path}: not a plain .npy array ({str(e).splitlines()[0][:120]})") from None
        if stats.ndim != 2 or stats.shape[0] != 2:
            raise WavflowError(f"{path}: statistics of shape {stats.shape}; expected (2, {n_mels}): mean, scale")
        mean, std = stats[0], stats[1]
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if not {"count", "sum", "sum_square"} <= set(f.files):
                    raise WavflowError(f"{path}: expected ESPnet's arrays 'count', 'sum' and 'sum_square', found "
                                       f"{', '.join(f.files) or 'none'}")
                count, total, squares = (np.asarray(f[k], np.float64) for k in ("count", "sum", "sum_square"))
        except (ValueError, OSError) as e:
            raise WavflowError(f"{path}: not a plain .npz archive ({str(e).splitlines()[0][:120]})") from None
        if count.size != 1 or not count.item() > 0:
            raise WavflowError(f"{path}: 'count' must be one positive number")
        mean = total / count.item()
        std = np.sqrt(np.maximum(squares / count.item() - mean * mean, 1e-20))  # GlobalMVN's floor on the variance
    elif path.suffix in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError:
            raise WavflowError(f"{path}: reading .h5 statistics needs h5py (pip install h5py), or save them as "
                               f".npy with rows mean and scale") from None
        with h5py.File(path, "r") as f:
            if "mean" not in f or "scale" not in f:
                raise WavflowError(f"{path}: expected datasets 'mean' and 'scale'")
            mean, std = np.asarray(f["mean"]), np.asarray(f["scale"])
    else:
        raise WavflowError(f"{path}: statistics must be a .npy ([2, n_mels]: mean, scale), .h5 or ESPnet .npz file")
    mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
    if mean.shape != (n_mels,) or std.shape != (n_mels,):
        raise WavflowError(f"{path}: statistics for {mean.shape[0]} bands; the mel has {n_mels}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise WavflowError(f"{path}: statistics must be finite with a positive scale in every band")
    return mean, std


def renormalise(mel: np.ndarray, config: MelConfig, input_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A mel [n_mels, F] normalised with `input_stats` (mean, std per band), as `config` expects it: the
    statistics undone, then the config's own applied when it has them. For a TTS model and a vocoder that
    normalise differently (or one of them not at all)."""
    mean, std = (np.asarray(a, np.float64)[:, None] for a in input_stats)
    log_mel = mel.astype(np.float64) * std + mean
    if config.mean is not None:
        log_mel = (log_mel - np.asarray(config.mean)[:, None]) / np.asarray(config.std)[:, None]
    return log_mel.astype(np.float32)


def convention_problem(mel: np.ndarray, config: MelConfig) -> tuple[str, bool] | None:
    """Whether a mel's values can belong to `config`'s convention: None, or (message, refuse).

    Only the shape is certain; values give strong hints. Values far below the convention's silence floor
    cannot come from it (a natural-log mel, floor -11.5, given to a log10 model, floor -10): refused. Speech's
    quietest 1% of mel bins lies near a magnitude of 1e-4 (design.md section 8): about -9 in natural log,
    about -4 in log10. So a natural-log model's mel whose quietest percentile sits above half the floor is most
    likely log10 or normalised, and a log10 model's mel whose quietest percentile lies below log10(1e-6) is most
    likely natural-log: both warned about.
    """
    if config.mean is not None:  # normalised values have no fixed floor
        return None
    floor = config.silence
    lowest = float(mel.min())
    if lowest < floor - 0.1 * abs(floor):
        return (f"values go down to {lowest:.2f}, below this checkpoint's silence floor {floor:.2f} "
                f"(log{'' if config.log_base == 'e' else '10'} of {config.clip_val:g}): the mel was made in "
                f"another convention; convert it or use a checkpoint trained on it (docs/design.md section 8)", True)
    quiet = float(np.percentile(mel, 1))
    if config.log_base == "e" and quiet > floor / 2:
        return (f"the quietest 1% of values lies above {quiet:.2f}, where a natural-log mel (silence {floor:.2f}) has "
                f"its quiet bands: is it log10 or normalised? vocode it with a checkpoint of that convention, or "
                f"give --stats for normalised features", False)
    if config.log_base == "10" and quiet < QUIET_LOG10:
        return (f"the quietest 1% of values lies below {quiet:.2f}, lower than log10 speech mels go (about -4; "
                f"{QUIET_LOG10:g} is a magnitude of 1e-6): is it natural-log? vocode it with a checkpoint of that "
                f"convention", False)
    return None


def conform_mel(mel: np.ndarray, config: MelConfig, stats: tuple[np.ndarray, np.ndarray] | None = None,
                name: str = "mel") -> tuple[np.ndarray, str | None]:
    """A checked mel [n_mels, F] as a checkpoint of `config` expects it: renormalised from `stats` (the TTS
    model's per-band mean and std) when given, then judged by `convention_problem`. Returns (mel, warning line
    or None); a mel that cannot belong to the convention raises a WavflowError naming `name`."""
    if stats is not None:
        mel = renormalise(mel, config, stats)
    problem = convention_problem(mel, config)
    if problem is None:
        return mel, None
    message, refuse = problem
    if refuse:
        raise WavflowError(f"{name}: {message}")
    return mel, f"{name}: {message}"


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


# ----------------------------------------------------------------------------------------------------------------
# Mel files written by other tools

MAX_FRAMES = MAX_SECONDS * 22050 // 256  # the default convention's MelConfig().max_frames


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
