"""`wavflow stream MEL.npy [-o OUT.wav | -o -]`: one mel vocoded a chunk at a time (wavflow.streaming), the audio
written as it is made.

    wavflow stream mel.npy -o speech.wav --chunk-seconds 0.5          # a WAV file, renamed into place at the end
    wavflow stream mel.npy -o - | aplay -f S16_LE -c 1 -r 22050         # raw PCM on stdout, as the chunks come

Memory is bounded by the chunk, not the mel, and the audio is the whole-utterance audio of `wavflow synthesize`
with the same model, seed and options (wavflow.streaming: the chunks are exact, to float rounding). Everything a
user can get wrong (the mel, the checkpoint, the options, the output) is checked before the first chunk is made:
one line on stderr, exit status 2, no file. A WAV file is written under a temporary name and renamed when the
last chunk is in, so a failure part-way leaves no file either; on stdout, what was written stays written.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

import torch

from .. import resources
from ..audio import to_int16
from ..cli import ArgumentParser, number, output_paths, run_cli
from ..device import resolve_device
from ..errors import WavflowError
from ..fileio import check_writable_dir
from ..inference import load_vocoder
from ..melinput import conform_mel, input_stats, load_mel
from ..streaming import DEFAULT_CHUNK_SECONDS, stream_mel, write_wav
from .synthesize import add_vocoder_options

PROG = "wavflow stream"
STDOUT = "-"


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Vocode one mel spectrogram (.npy) a chunk at a time and write the "
                       "audio as it is made: a 16-bit WAV file (written under a temporary name, renamed at the "
                       "end) or, with -o -, raw PCM on stdout (16-bit signed little-endian, mono, at the "
                       "checkpoint's sample rate: 22050 Hz for the shipped models). The audio equals `wavflow "
                       "synthesize`'s for the same model, seed and options.",
                       epilog="example: wavflow stream mel.npy -o - | aplay -f S16_LE -c 1 -r 22050")
    p.add_argument("mel", nargs="?", metavar="MEL",
                   help="a mel .npy file shaped (n_mels, F), (F, n_mels) or (1, n_mels, F)")
    p.add_argument("--example", action="store_true",
                   help="stream the example mel that ships with wavflow (LJSpeech clip LJ002-0020)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="a .wav file, a directory (created if needed) for MEL's name with .wav, or - for raw PCM on "
                        "stdout (default: out/)")
    add_vocoder_options(p)
    p.add_argument("--chunk-seconds", type=number(float, above=0), default=DEFAULT_CHUNK_SECONDS, metavar="S",
                   help=f"audio per chunk, rounded to whole mel frames (default {DEFAULT_CHUNK_SECONDS:g}): about "
                        "the delay before the first audio with a real-time model")
    p.add_argument("--stats", metavar="FILE",
                   help="statistics the mel is normalised with (ParallelWaveGAN's stats.npy or stats.h5, ESPnet2's "
                        "feats_stats.npz), renormalised to the checkpoint's convention")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (default 0); the noise depends only on this and the mel's contents, as in "
                        "`wavflow synthesize`")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return p


def write_pcm(out: BinaryIO, chunks: Iterator[torch.Tensor]) -> int:
    """Each chunk to `out` as 16-bit little-endian PCM as soon as it is made (flushed: a player starts at once);
    returns the samples written."""
    written = 0
    for chunk in chunks:
        out.write(to_int16(chunk).reshape(-1).astype("<i2").tobytes())
        out.flush()
        written += chunk.shape[-1]
    return written


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv`, check everything, then stream; the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.example == (args.mel is not None):
        parser.error("give one mel .npy file or --example")
    path = resources.example_mel() if args.example else Path(args.mel)
    to_stdout = args.output == STDOUT
    if to_stdout and sys.stdout.isatty():
        raise WavflowError("-o -: stdout is a terminal; redirect it (| aplay ..., > file.pcm) or give a .wav file")
    target = None if to_stdout else output_paths([path], args.output, ".wav", default_dir="out")[0]
    if target is not None:
        check_writable_dir(target.parent)

    # Everything a user can get wrong is checked before the first chunk: the model, the mel, the options.
    vocoder = load_vocoder(args.checkpoint, args.model, resolve_device(args.device), args.dtype,
                           backend=args.backend)
    config = vocoder.mel_config
    mel, warning = conform_mel(load_mel(path, config.n_mels, config.max_frames), config,
                               input_stats(args.stats, config.n_mels), str(path))
    if warning is not None:  # shown under -q too: the audio is likely noise
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    chunks = stream_mel(vocoder, mel, chunk_seconds=args.chunk_seconds, seed=args.seed, denoise=args.denoise,
                        sigma=args.sigma, temperature=args.temperature)

    t0 = time.perf_counter()
    first: list[float] = []  # wall time to the first chunk: the delay a listener waits

    def timed(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for chunk in chunks:
            if not first:
                first.append(time.perf_counter() - t0)
            yield chunk

    if target is None:
        try:
            samples = write_pcm(sys.stdout.buffer, timed(chunks))
        except BrokenPipeError:
            # The reader went away (a player closed, `| head -c`): no traceback, and none at exit either when
            # Python flushes stdout again (the docs' recipe: point stdout at /dev/null).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        samples = write_wav(target, timed(chunks), config.sample_rate)
    wall = time.perf_counter() - t0
    if not args.quiet:
        seconds = samples / config.sample_rate
        where = (f"raw 16-bit PCM (mono, {config.sample_rate} Hz, little-endian) to stdout" if target is None
                 else str(target))
        print(f"wrote {where}: {seconds:.2f} s of audio in chunks of {args.chunk_seconds:g} s, first after "
              f"{first[0] if first else wall:.2f} s, {wall:.2f} s in all (RTF {wall / seconds:.3g})",
              file=sys.stderr if target is None else sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow stream`: bad input is one line on stderr and exit status 2, with no file written."""
    run_cli(prog, lambda args: run(args, prog), argv)
