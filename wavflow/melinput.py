"""Mels as wavflow takes them in: files, layouts, limits and normalisation statistics, in one place.

    mel = load_mel("tts_output.npy", n_mels=80)          # float32 [80, F] from (80, F), (F, 80) or (1, 80, F)
    mean, std = load_stats("stats.npy", 80)               # ParallelWaveGAN / ESPnet statistics files
    mel, warning = conform_mel(mel, config, (mean, std))  # renormalised to a checkpoint's convention, and judged

A mel file is checked from its header before its data is read (never unpickled, never larger than
MAX_SECONDS of audio); an in-memory mel in any accepted layout becomes a contiguous float32 [n_mels, F]
(`as_mel_array`); a mel made in another convention is refused or warned about against the checkpoint's
`MelConfig` (docs/design.md section 8). `as_mel_list`, `input_stats`, `conform_mels` and `MelFile` are what
`wavflow.synthesize`, `wavflow.stream` and the synthesize command read their inputs with. The mel computation and
`MelConfig` itself are wavflow.frontend's, which re-exports the names here that other modules import from it.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import WavflowError
from .fileio import atomic_write, check_input_file

if TYPE_CHECKING:  # annotations only: wavflow.frontend imports this module, so the reverse runs never
    from .frontend import MelConfig

MAX_SECONDS = 600  # the longest mel accepted, in seconds of audio (MelConfig.max_frames in frames)
MAX_FRAMES = MAX_SECONDS * 22050 // 256  # the default convention's MelConfig().max_frames
QUIET_LOG10 = -6.0  # a log10 speech mel's quietest 1% stays above this (near -4); a natural-log one's lies near -9


# ----------------------------------------------------------------------------------------------------------------
# Mel files and layouts

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


def as_mel_array(mel: np.ndarray, n_mels: int = 80, max_frames: int = MAX_FRAMES, name: str = "mel") -> np.ndarray:
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
    """Read a mel .npy as float32 [n_mels, F], accepting the layouts TTS models write (see as_mel_array).

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
    return as_mel_array(mel, n_mels, max_frames, str(path))


def save_mel(path: str | os.PathLike, mel: np.ndarray | torch.Tensor) -> None:
    """Write a mel [n_mels, F] as a float32 .npy, under a temporary name renamed into place (never half a file)."""
    path = Path(path)
    arr = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


# ----------------------------------------------------------------------------------------------------------------
# Normalisation statistics and conventions

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


# ----------------------------------------------------------------------------------------------------------------
# What the synthesis API accepts

def as_mel_list(mel: Any, n_mels: int, max_frames: int = MAX_FRAMES) -> tuple[list[np.ndarray], str]:
    """Normalise what `synthesize` accepts to a list of float32 [n_mels, F] arrays and the form to return.

    Returns (mels, form) with form "single" (return [T]), "batch" (return [B, T]) or "list" (return a list).
    """
    if isinstance(mel, (str, os.PathLike)):
        return [load_mel(mel, n_mels, max_frames)], "single"
    if isinstance(mel, (list, tuple)):
        if not mel:
            raise WavflowError("no mels given")
        mels = []
        for i, m in enumerate(mel):
            if isinstance(m, (np.ndarray, torch.Tensor)) and m.ndim == 3 and m.shape[0] > 1:
                raise WavflowError(f"mel list item {i} is a batch of shape {tuple(m.shape)}; a list holds single mels")
            mels += as_mel_list(m, n_mels, max_frames)[0]
        return mels, "list"
    if isinstance(mel, torch.Tensor):
        mel = mel.detach().cpu().numpy()
    if not isinstance(mel, np.ndarray):
        raise WavflowError(f"mel is a {type(mel).__name__}; expected a numpy array, a tensor or a .npy path")
    if mel.ndim == 3 and mel.shape[0] > 1:
        return [as_mel_array(m, n_mels, max_frames, f"mel[{i}]") for i, m in enumerate(mel)], "batch"
    return [as_mel_array(mel, n_mels, max_frames, "mel")], "batch" if mel.ndim == 3 else "single"


def input_stats(stats: Any, n_mels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The statistics a TTS model's mels are normalised with: None, a statistics file (load_stats:
    ParallelWaveGAN's stats.npy / stats.h5, ESPnet2's feats_stats.npz) or a (mean, std) pair of [n_mels] arrays."""
    if stats is None:
        return None
    if isinstance(stats, (str, os.PathLike)):
        return load_stats(stats, n_mels)
    try:
        mean, std = (np.asarray(a, np.float64).reshape(-1) for a in stats)
    except (TypeError, ValueError):
        raise WavflowError("stats: expected a statistics file or a (mean, std) pair of per-band arrays") from None
    if mean.shape != (n_mels,) or std.shape != (n_mels,) or not (np.isfinite(mean).all() and (std > 0).all()):
        raise WavflowError(f"stats: mean and std must each hold {n_mels} finite values, std > 0")
    return mean, std


def conform_mels(mels: list[np.ndarray], config: MelConfig, stats: tuple[np.ndarray, np.ndarray] | None,
                 names: Sequence[str]) -> list[np.ndarray]:
    """Each checked mel as the checkpoint's convention expects it (conform_mel): renormalised from the
    TTS model's `stats`, refused with a WavflowError when its values cannot belong to the convention, a
    `warnings.warn` line when they are unlikely to."""
    out = []
    for mel, name in zip(mels, names, strict=True):
        mel, warning = conform_mel(mel, config, stats, name)
        if warning is not None:
            warnings.warn(warning, stacklevel=3)
        out.append(mel)
    return out


@dataclass(frozen=True)
class MelFile:
    """A mel .npy already checked by load_mel, read again only when its batch comes (a directory of thousands
    of mels is never held in memory at once); `stats`: the per-band (mean, std) it is normalised with."""
    path: Path
    frames: int
    stats: tuple[np.ndarray, np.ndarray] | None = None

    def read(self, config: MelConfig) -> np.ndarray:
        """The mel, float32 [n_mels, F], renormalised to `config` when the file has its own statistics."""
        mel = load_mel(self.path, config.n_mels, config.max_frames)
        return mel if self.stats is None else renormalise(mel, config, self.stats)
