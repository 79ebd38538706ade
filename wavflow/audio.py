"""Audio files in and out: read anything soundfile reads, resample, write 16-bit PCM WAV atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .errors import WavflowError
from .fileio import atomic_write, check_input_file


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> torch.Tensor:
    """Read a mono float32 waveform in [-1, 1], shape [T].

    Multi-channel files are averaged to mono. If `sample_rate` is given and the file's rate differs, the audio
    is resampled (torchaudio's windowed-sinc resampler) so models always see the rate they were trained at.
    """
    path = Path(path)
    check_input_file(path, "an audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise WavflowError(f"{path}: not a readable audio file ({str(e).splitlines()[0]})") from None
    if data.shape[0] == 0:
        raise WavflowError(f"{path}: the audio file holds no samples")
    audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, sample_rate)
    return audio


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's windowed-sinc resampler, [..., T] -> [..., T * new_rate / orig_rate].

    torchaudio is imported here and nowhere else: its compiled library is tied to one torch release, so code
    that never resamples (vocoding a mel, training and evaluating on audio at the model's rate) must not load it.
    """
    try:
        import torchaudio.functional as AF
    except (ImportError, OSError) as e:
        raise WavflowError(f"resampling {orig_rate} Hz audio to {new_rate} Hz needs a working torchaudio "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return AF.resample(audio, orig_rate, new_rate)


def to_int16(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16, clipping first so an overshoot saturates instead of wrapping around."""
    a = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    return (np.clip(a, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def save_wav(path: str | os.PathLike, audio: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write mono audio [T] as 16-bit PCM WAV.

    The file is written under a temporary name in the same directory and renamed into place, so a crash or a
    full disk never leaves a truncated WAV under the final name.
    """
    path = Path(path)
    pcm = to_int16(audio).reshape(-1)
    atomic_write(path, lambda f: sf.write(f, pcm, sample_rate, subtype="PCM_16", format="WAV"))
