"""Audio files to mel spectrogram files: what `wavflow mel` (wavflow.commands.mel; also `python -m wavflow.mel`)
runs, in the Tacotron 2 convention every shipped model reads or in another toolkit's (`--preset`, `--stats`).

    wavflow mel speech.wav                      # speech.npy next to speech.wav
    wavflow mel speech.flac -o mel.npy          # any format soundfile reads, any sample rate
    wavflow mel a.wav b.wav wavs/ -o mels/      # several files (a directory stands for its audio)
    wavflow mel speech.wav --preset parallel_wavegan --stats stats.npy   # ESPnet / PWG features
    wavflow mel speech.wav --preset espnet --sample-rate 24000 --hop-length 300 --n-fft 2048 --win-length 1200
    wavflow mel speech.wav --checkpoint exp/waveglow/best.pt   # the mel that checkpoint vocodes

Each output is float32 .npy shaped (n_mels, F); by default (80, F) with F = T // 256 + 1 for T samples at
22050 Hz (design.md section 1): exactly the mel `wavflow.mel_spectrogram` gives, so Tacotron 2 output and these
files are interchangeable. Audio at another rate is resampled to the convention's rate first. Every input is
checked (readable, long enough, within the length limit) before any work; the mels are written under temporary
names and renamed into place only when all of them are done, so a failure leaves neither a partial .npy nor
part of a list behind.

Inside the package, compute mels with wavflow.frontend; this module adds reading audio files and writing .npy
files (`check_audio_file`, `audio_to_mel`, `write_mels`).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .audio import load_audio
from .errors import WavflowError
from .fileio import check_input_file
from .frontend import MelConfig, mel_spectrogram
from .melinput import save_mel

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")  # what a directory of audio stands for


def check_audio_file(path: Path, config: MelConfig = MelConfig(), max_frames: int | None = None) -> int:
    """Check from the file's header alone that it gives a mel within limits; return its frame count.

    Run on every input before any work, so one bad file in a list stops the run before anything is written.
    """
    check_input_file(path, "an audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as e:
        raise WavflowError(f"{path}: not a readable audio file ({str(e).splitlines()[0][:160]})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise WavflowError(f"{path}: the audio file holds no samples")
    samples = math.ceil(info.frames * config.sample_rate / info.samplerate)  # after resampling
    if samples <= config.pad:
        raise WavflowError(f"{path}: {info.frames / info.samplerate * 1000:.1f} ms of audio is too short for a mel "
                           f"(need more than {config.pad} samples at {config.sample_rate} Hz)")
    frames = config.num_frames(samples)
    max_frames = config.max_frames if max_frames is None else max_frames
    if frames > max_frames:
        limit_s = max_frames * config.hop_length / config.sample_rate
        raise WavflowError(f"{path}: {info.frames / info.samplerate:.0f} s of audio gives {frames} mel frames, more "
                           f"than the limit of {max_frames} ({limit_s:.0f} s); split it into shorter pieces")
    return frames


def audio_to_mel(path: str | Path, config: MelConfig = MelConfig()) -> np.ndarray:
    """The mel of an audio file as float32 [n_mels, F], resampling to config.sample_rate when needed."""
    path = Path(path)
    check_audio_file(path, config)
    audio = load_audio(path, config.sample_rate)
    if not torch.isfinite(audio).all():
        raise WavflowError(f"{path}: audio contains NaN or infinite samples")
    return mel_spectrogram(audio.unsqueeze(0), config)[0].numpy()


def _missing_dirs(directories: set[Path]) -> list[Path]:
    """The directories (and ancestors) that do not exist yet, parents before children."""
    missing: set[Path] = set()
    for d in directories:
        while not d.exists() and d != d.parent:
            missing.add(d)
            d = d.parent
    return sorted(missing, key=lambda d: len(d.parts))


def write_mels(inputs: Sequence[Path], targets: Sequence[Path], config: MelConfig) -> list[tuple[int, ...]]:
    """The mel of each audio file of `inputs` written to the .npy file of `targets` at the same place, all or
    none; returns their shapes.

    Each mel goes to a hidden temporary next to its target; only when every input has been converted are
    they renamed into place. A file that fails to decode half-way through the list leaves nothing behind, not
    even the directories this call created for the targets.
    """
    created = _missing_dirs({t.parent for t in targets})
    staged: list[tuple[Path, Path]] = []
    shapes = []
    try:
        for directory in created:
            directory.mkdir()
        for src, dst in zip(inputs, targets, strict=True):
            mel = audio_to_mel(src, config)
            tmp = dst.with_name(f".{dst.name}.partial")
            save_mel(tmp, mel)
            staged.append((tmp, dst))
            shapes.append(mel.shape)
        for tmp, dst in staged:
            os.replace(tmp, dst)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for directory in reversed(created):  # children first; only what this run made, and only if empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return shapes


if __name__ == "__main__":
    from wavflow.commands.mel import main

    main(prog="python -m wavflow.mel")  # help and errors name the command as it was typed
