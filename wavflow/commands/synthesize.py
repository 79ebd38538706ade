"""`wavflow synthesize MEL.npy [MORE.npy | DIR ...] [-o OUT]`: mel spectrograms to WAV files.
`wavflow synthesize --list-models`: the shipped models, by the names --model takes.

The vocoding itself is wavflow/inference.py (`wavflow.synthesize`, the Python API) and, for long mels,
wavflow/streaming.py; this module is the command line only. `python -m wavflow.synthesize` and the
`wavflow-synthesize` script run the same `main` under their own names.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from .. import resources
from ..audio import save_wav
from ..cli import ArgumentParser, expand_inputs, number, output_paths, run_cli
from ..device import resolve_device
from ..errors import WavflowError
from ..fileio import check_writable_dir
from ..inference import DEFAULT_BATCH_SIZE, SHIPPED, check_options, load_vocoder, make_denoiser, vocode
from ..melinput import MelFile, conform_mel, input_stats, load_mel
from ..models.waveglow_sampling import SAMPLING_BACKENDS
from ..streaming import CLI_CHUNK_SECONDS, STREAM_ABOVE_SECONDS, stream_to_wavs

PROG = "wavflow synthesize"


def add_vocoder_options(p: ArgumentParser) -> None:
    """The model and how it samples, as `wavflow synthesize` and `wavflow stream` both take them."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH",
                     help="a wavflow checkpoint or an NVIDIA WaveGlow file (default: the shipped WaveGlow)")
    src.add_argument("--model", choices=SHIPPED, metavar="NAME",
                     help=f"a shipped model by name: {', '.join(SHIPPED)} (default: waveglow; "
                          "`wavflow synthesize --list-models` lists them)")
    p.add_argument("--sigma", type=number(float, minimum=0),
                   help="WaveGlow noise scale (default: the checkpoint's own; 0.6 where it names none)")
    p.add_argument("--temperature", type=number(float, minimum=0),
                   help="WaveNet / student sampling temperature (default 1.0)")
    p.add_argument("--denoise", type=number(float, minimum=0), default=0.0, metavar="STRENGTH",
                   help="subtract STRENGTH x the model's bias spectrum (NVIDIA's denoiser; 0 = off, try 0.01-0.1)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (default: auto, the GPU if there is one)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the model's arithmetic (default fp32); bf16 only where the device has it "
                        "natively (a CPU with avx512_bf16 or amx_bf16, a bf16-capable GPU), for WaveGlow and the "
                        "student (docs/speed.md)")
    p.add_argument("--backend", choices=SAMPLING_BACKENDS,
                   help="WaveGlow's sampling backend (default: the fastest measured on this machine); they agree to "
                        "float rounding, so naming one makes runs on one machine bit-identical (docs/speed.md)")


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Vocode mel spectrograms (.npy) to 16-bit WAV files with a wavflow "
                       "checkpoint. Each mel of F frames gives exactly F * hop samples (hop 256 for the shipped "
                       "models) at the checkpoint's sample rate.")
    p.add_argument("inputs", nargs="*", metavar="MEL",
                   help="mel .npy files shaped (n_mels, F), (F, n_mels) or (1, n_mels, F) (80 bands for the shipped "
                        "models), or directories of them")
    p.add_argument("--example", action="store_true",
                   help="vocode the example mel that ships with wavflow (LJSpeech clip LJ002-0020)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output directory (created if needed; default: out/), or a .wav file for a single mel")
    add_vocoder_options(p)
    p.add_argument("--list-models", action="store_true",
                   help="list the shipped models (name, family, parameters, sample rate, held-out DNSMOS) and exit")
    p.add_argument("--batch-size", type=number(int, above=0), default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"mels vocoded together, padded to the longest (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--chunk-seconds", type=number(float, above=0), metavar="S",
                   help=f"stream every mel in chunks of S seconds of audio, writing each WAV as it goes (memory "
                        f"bounded by the chunk; the same audio as unstreamed). Default: mels longer than "
                        f"{STREAM_ABOVE_SECONDS:g} s are streamed in {CLI_CHUNK_SECONDS:g} s chunks, shorter ones "
                        f"batched")
    p.add_argument("--stats", metavar="FILE",
                   help="statistics the mels are normalised with (ParallelWaveGAN's stats.npy or stats.h5, ESPnet2's "
                        "feats_stats.npz), when the TTS model normalises and the checkpoint does not or differently; "
                        "the mels are renormalised to the checkpoint's convention (README: Mels from other toolkits)")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (default 0); each mel's noise depends only on this and the mel's contents")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return p


def models_table() -> str:
    """The shipped models as a text table: name (what --model and wavflow.load take), family, parameters (as
    trained: weight norm's g and v apart, as checkpoints/README.md counts them), sample rate, and the held-out
    DNSMOS P.808 that checkpoints/README.md reports ('-' where it reports none); each file is loaded to count."""
    from ..checkpoint import load

    dnsmos = resources.held_out_dnsmos()
    rows = [("name", "family", "parameters", "sample rate", "held-out DNSMOS P.808", "file")]
    for model in resources.MODELS.values():
        parameters = rate = "-"  # where the file is missing or unreadable: still listed, its figures unknown
        where = f"{model.file} (not found)"
        try:
            path = resources.shipped_checkpoint(model.name)
            where = f"{model.file} (unreadable)"
            loaded = load(path)
            parameters = f"{sum(p.numel() for p in loaded.parameters()):,}"
            rate = f"{loaded.mel_config.sample_rate} Hz"
            where = model.file
        except WavflowError:
            pass
        score = dnsmos.get(model.name)
        rows.append((model.name, model.family, parameters, rate, "-" if score is None else f"{score:.2f}", where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4}  # numbers align on the right
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    note = "DNSMOS P.808 on held-out clips, as checkpoints/README.md reports it ('-': not measured)."
    return "\n".join([*lines, note])


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv` and vocode; a WavflowError (or an OSError naming a path) is bad input, for run_cli."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.list_models:
        print(models_table())
        return 0
    if args.example:
        args.inputs = [*args.inputs, str(resources.example_mel())]
    if not args.inputs:
        parser.error("give at least one mel .npy file or directory (or --example)")

    # Everything a user can get wrong is checked before the first WAV is written.
    device = resolve_device(args.device)
    vocoder = load_vocoder(args.checkpoint, args.model, device, args.dtype, backend=args.backend)
    options = check_options(vocoder, {"sigma": args.sigma, "temperature": args.temperature})
    n_mels = vocoder.mel_config.n_mels
    inputs = expand_inputs(args.inputs, (".npy",), "mel .npy")
    stats = input_stats(args.stats, n_mels)
    mels = []
    for path in inputs:  # each read and judged against the checkpoint's convention; none kept
        mel, warning = conform_mel(load_mel(path, n_mels, vocoder.mel_config.max_frames), vocoder.mel_config, stats,
                                   str(path))
        if warning is not None:  # shown under -q too: the audio is likely noise
            print(f"{prog}: warning: {warning}", file=sys.stderr)
        mels.append(MelFile(path, mel.shape[1], stats))
    targets = output_paths(inputs, args.output, ".wav", default_dir="out")
    for directory in sorted({t.parent for t in targets}):
        check_writable_dir(directory)
    denoise = args.denoise
    if denoise > 0:
        make_denoiser(vocoder)  # refuse a model the denoiser cannot serve before any work

    sr = vocoder.mel_config.sample_rate
    for directory in sorted({t.parent for t in targets}):
        directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    audio_seconds = 0.0
    # Long mels (all with --chunk-seconds) are streamed one by one, written as they are vocoded; the rest batched.
    stream_above = 0.0 if args.chunk_seconds is not None else STREAM_ABOVE_SECONDS
    streamed = {i for i, m in enumerate(mels) if m.frames * vocoder.mel_config.hop_length / sr > stream_above}
    audio_seconds += stream_to_wavs(vocoder, [(mels[i], targets[i]) for i in sorted(streamed)],
                                    chunk_seconds=args.chunk_seconds or CLI_CHUNK_SECONDS, seed=args.seed,
                                    denoise=denoise, progress=not args.quiet, **options)
    written = targets
    mels = [m for i, m in enumerate(mels) if i not in streamed]
    targets = [t for i, t in enumerate(targets) if i not in streamed]
    for i, audio in vocode(vocoder, mels, seed=args.seed, batch_size=args.batch_size, denoise=denoise,
                              progress=not args.quiet and bool(mels), **options):
        save_wav(targets[i], audio, sr)
        audio_seconds += audio.shape[-1] / sr
    wall = time.perf_counter() - t0
    if not args.quiet:
        where = (written[0] if len(written) == 1
                 else f"{len(written)} files in {', '.join(sorted({str(t.parent) for t in written}))}")
        print(f"wrote {where}: {audio_seconds:.2f} s of audio in {wall:.2f} s "
              f"(RTF {wall / audio_seconds:.3g} = wall/audio, {audio_seconds / wall:.3g}x real time)")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow synthesize`: exits 2 with one line on stderr for any bad input, writing nothing."""
    run_cli(prog, lambda args: run(args, prog), argv)


def legacy_main() -> NoReturn:
    """The `wavflow-synthesize` console script, from before `wavflow synthesize`: the same command."""
    main(prog="wavflow-synthesize")
