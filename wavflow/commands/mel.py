"""`wavflow mel AUDIO [AUDIO | DIR ...] [-o OUT]`: audio files to mel spectrogram .npy files (wavflow.mel).

Each output is float32 .npy shaped (n_mels, F); by default (80, F) with F = T // 256 + 1 for T samples at
22050 Hz, exactly the mel `wavflow.mel_spectrogram` gives. Every input is checked before any work, and the
files are written all or none (wavflow.mel.write_mels).
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import NoReturn

from ..cli import ArgumentParser, expand_inputs, number, output_paths, run_cli
from ..errors import WavflowError
from ..fileio import check_writable_dir
from ..frontend import PRESETS, MelConfig
from ..mel import AUDIO_SUFFIXES, check_audio_file, write_mels
from ..melinput import load_stats

PROG = "wavflow mel"
# The MelConfig fields a flag may override: (field, type, what the help says)
OVERRIDES = [("sample_rate", int, "sample rate in Hz"), ("n_fft", int, "FFT size (the window too, unless given)"),
             ("hop_length", int, "hop in samples: one frame per hop"), ("win_length", int, "window length"),
             ("n_mels", int, "mel bands"), ("fmin", float, "lowest band edge in Hz"),
             ("fmax", float, "highest band edge in Hz (default: the preset's, at most half the sample rate)")]


def build_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Compute log-mel spectrograms of audio files (by default the "
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
    return parser


def mel_config(args: argparse.Namespace, parser: ArgumentParser) -> MelConfig:
    """The convention the flags ask for: a checkpoint's or a preset's, with the overrides and statistics."""
    if args.checkpoint is not None:
        if args.preset != "tacotron2" or args.stats is not None:
            parser.error("--checkpoint gives the convention: leave out --preset and --stats")
        from ..checkpoint import load

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
    return config


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    config = mel_config(args, parser)
    inputs = expand_inputs(args.inputs, AUDIO_SUFFIXES, "audio")
    for path in inputs:  # one bad file in a list stops the run before anything is written
        check_audio_file(path, config)
    targets = output_paths(inputs, args.output, ".npy")
    for directory in sorted({t.parent for t in targets}):
        check_writable_dir(directory)
    shapes = write_mels(inputs, targets, config)
    if not args.quiet:
        for src, dst, shape in zip(inputs, targets, shapes, strict=True):
            print(f"{src} -> {dst}  {shape}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow mel`: bad input is one line on stderr and exit status 2, with nothing written."""
    run_cli(prog, lambda args: run(args, prog), argv)
