"""`wavflow convert CHECKPOINT OUT.pt [--dtype fp32|fp16|bf16] [--max-mib M] [--sigma S]`: any checkpoint
wavflow reads as a native inference file (wavflow.convert): NVIDIA's WaveGlow files converted, a training run's
file stripped of its training state for shipping, the weights in the precision asked for, a WaveGlow's default
sigma set.

The last line printed is `OUT: TYPE, N parameters as DTYPE, X MiB, step S, from a ORIGIN checkpoint, sha256 H`.
Bad input: one line on stderr, exit status 2, nothing written.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from ..checkpoint import WEIGHT_DTYPES
from ..cli import ArgumentParser, number, run_cli
from ..convert import convert

PROG = "wavflow convert"


def build_parser(prog: str = PROG, dtype: str = "fp32") -> ArgumentParser:
    """The parser; `dtype` is --dtype's default (`python -m wavflow.train.ship`, which this replaces, wrote fp16)."""
    parser = ArgumentParser(prog=prog, description="Convert a checkpoint (NVIDIA's WaveGlow, a training run's "
                            "best.pt or last.pt, any wavflow file) to a native wavflow inference checkpoint: the "
                            "model without training state, its weights in fp32, fp16 or bf16 (upcast to float32 "
                            "on load); no code from the input file is run.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="the checkpoint to read (NVIDIA glow.WaveGlow pickle, DeepLearningExamples, wavflow)")
    parser.add_argument("out", metavar="OUT", help="the native wavflow checkpoint to write")
    parser.add_argument("--dtype", default=dtype, choices=list(WEIGHT_DTYPES),
                        help=f"precision of the weights in the file (default {dtype}; fp16 and bf16 halve it)")
    parser.add_argument("--max-mib", type=number(float, above=0, name="--max-mib"), default=None, metavar="M",
                        help="refuse to write a file larger than M MiB")
    parser.add_argument("--sigma", type=number(float, minimum=0, name="--sigma"), default=None, metavar="S",
                        help="a WaveGlow's default sampling sigma in the file (its infer_sigma; default: unchanged)")
    parser.add_argument("--temperature", type=number(float, minimum=0, name="--temperature"), default=None,
                        metavar="T", help="a WaveNet teacher's or student's default sampling temperature in the file "
                                          "(its infer_temperature; default: unchanged)")
    return parser


def run(argv: Sequence[str] | None, prog: str = PROG, dtype: str = "fp32") -> int:
    args = build_parser(prog, dtype).parse_args(argv)
    info = convert(args.checkpoint, args.out, args.dtype, args.max_mib, sigma=args.sigma,
                   temperature=args.temperature)
    # The sha256 comes last, where a script reading the line takes it from.
    print(f"{info['path']}: {info['model_type']}, {info['parameters']:,} parameters as {info['dtype']}, "
          f"{info['bytes'] / 2**20:.2f} MiB, step {info['step']}, from a {info['origin']} checkpoint, "
          f"sha256 {info['sha256']}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG, dtype: str = "fp32") -> NoReturn:
    """`wavflow convert`: bad input is one line on stderr and exit status 2, nothing written."""
    run_cli(prog, lambda args: run(args, prog, dtype), argv)
