"""`python -m wavflow.mel`: audio files to mel spectrograms, in the Tacotron 2 convention every shipped model
reads or in another toolkit's (`--preset`, `--stats`).

    python -m wavflow.mel speech.wav                      # speech.npy next to speech.wav
    python -m wavflow.mel speech.flac -o mel.npy          # any format soundfile reads, any sample rate
    python -m wavflow.mel a.wav b.wav wavs/ -o mels/      # several files (a directory stands for its audio)
    python -m wavflow.mel speech.wav --preset parallel_wavegan --stats stats.npy   # ESPnet / PWG features
    python -m wavflow.mel speech.wav --preset espnet --sample-rate 24000 --hop-length 300 --n-fft 2048 --win-length 1200
    python -m wavflow.mel speech.wav --checkpoint exp/waveglow/best.pt   # the mel that checkpoint vocodes

Each output is float32 .npy shaped (n_mels, F); by default (80, F) with F = T // 256 + 1 for T samples at
22050 Hz (design.md section 1): exactly the mel `wavflow.mel_spectrogram` gives, so Tacotron 2 output and these
files are interchangeable. Audio at another rate is resampled to the convention's rate first. Every input is
checked (readable, long enough, within the length limit) before any work; the mels are written under temporary
names and renamed into place only when all of them are done, so a failure leaves neither a partial .npy nor
part of a list behind.

This module is an entry point only: inside the package use wavflow.frontend.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from .audio import load_audio
from .cli import ArgumentParser, check_writable_dir, expand_inputs, number, output_paths, run_cli
from .errors import WavflowError
from .fileio import check_input_file
from .frontend import PRESETS, MelConfig, mel_spectrogram
from .melinput import load_stats, save_mel

PROG = "python -m wavflow.mel"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
OVERRIDES = [("sample_rate", int, "sample rate in Hz"), ("n_fft", int, "FFT size (the window too, unless given)"),
             ("hop_length", int, "hop in samples: one frame per hop"), ("win_length", int, "window length"),
             ("n_mels", int, "mel bands"), ("fmin", float, "lowest band edge in Hz"),
             ("fmax", float, "highest band edge in Hz (default: the preset's, at most half the sample rate)")]


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
        raise WavflowError(f"{path}: {info.frames / info.samplerate:.0f} s of audio gives {frames} mel frames, more "
                           f"than the limit of {max_frames} ({max_frames * config.hop_length / config.sample_rate:.0f} s); "
                           f"split it into shorter pieces")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Compute log-mel spectrograms of audio files (by default the "
                            "Tacotron 2 convention: 80 bands, hop 256, 22050 Hz) and write them as float32 .npy "
                            "arrays shaped (n_mels, F).")
    parser.add_argument("inputs", nargs="+", metavar="AUDIO",
                        help="audio files (WAV, FLAC, anything soundfile reads; other sample rates are resampled) "
                             "or directories of them")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="output .npy file (one input) or directory (created if needed); "
                             "default: next to each input, with the suffix .npy")
    parser.add_argument("--preset", default="tacotron2", choices=list(PRESETS),
                        help="the convention: tacotron2 (default; every shipped model), hifigan, parallel_wavegan, "
                             "espnet (docs/design.md section 8)")
    parser.add_argument("--stats", metavar="FILE",
                        help="normalise each band with dataset statistics: ParallelWaveGAN's stats.npy ([2, n_mels]: "
                             "mean, scale) or stats.h5, or ESPnet2's feats_stats.npz")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="the convention a wavflow checkpoint was trained on, its statistics included (instead "
                             "of --preset): the mel that checkpoint vocodes")
    for name, kind, what in OVERRIDES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=number(kind, above=0) if kind is int
                            else number(kind, minimum=0), metavar="N" if kind is int else "HZ",
                            help=f"{what} (overrides the preset's)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not list the files written")
    args = parser.parse_args(argv)

    if args.checkpoint is not None:
        if args.preset != "tacotron2" or args.stats is not None:
            parser.error("--checkpoint gives the convention: leave out --preset and --stats")
        from .checkpoint import load
        config = load(args.checkpoint).mel_config
    else:
        config = MelConfig.preset(args.preset)
    changes = {name: getattr(args, name) for name, _, _ in OVERRIDES if getattr(args, name) is not None}
    if changes:
        if "n_fft" in changes and "win_length" not in changes:  # a window as long as the FFT, as every preset
            changes["win_length"] = changes["n_fft"]
        if "sample_rate" in changes and "fmax" not in changes:
            changes["fmax"] = min(config.fmax, changes["sample_rate"] / 2)
        try:
            config = dataclasses.replace(config, **changes)
        except WavflowError as e:
            parser.error(str(e))
    if args.stats is not None:
        config = config.with_stats(*load_stats(args.stats, config.n_mels))
    inputs = expand_inputs(args.inputs, AUDIO_SUFFIXES, "audio")
    for path in inputs:
        check_audio_file(path, config)
    targets = output_paths(inputs, args.output, ".npy")
    for directory in sorted({t.parent for t in targets}):
        check_writable_dir(directory)

    # Each mel goes to a hidden temporary next to its target; only when every input has been converted are
    # they renamed into place. A file that fails to decode half-way through the list leaves nothing behind.
    created = _missing_dirs({t.parent for t in targets})
    staged: list[tuple[Path, Path]] = []
    shapes = []
    try:
        for directory in created:
            directory.mkdir()
        for src, dst in zip(inputs, targets):
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
            try:
                directory.rmdir()
            except OSError:
                pass
        raise
    if not args.quiet:
        for src, dst, shape in zip(inputs, targets, shapes):
            print(f"{src} -> {dst}  {shape}")
    return 0


if __name__ == "__main__":
    run_cli(PROG, main)
