"""`wavflow benchmark [--quick] [--models ...] [--json OUT] [--plot OUT.png]`: the speed of every way wavflow
samples audio, one markdown table on stdout (the protocol, the rows and the columns: wavflow.benchmark).

    wavflow benchmark --quick --json out.json --plot out.png      # tiny configs: what CI runs
    wavflow benchmark --device cuda --dtype fp16 --ar-max 0.5     # GPU; AR rows at short lengths only

Progress lines go to stderr (--quiet: none). Bad input is one line on stderr and exit status 2, before any model
is built.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..benchmark.entries import BATCH, ENTRIES, FAMILIES
from ..benchmark.measure import DTYPES
from ..benchmark.report import print_report, write_json, write_plot
from ..benchmark.runner import run as run_benchmark
from ..benchmark.settings import DEFAULT_LENGTHS, NAIVE_LENGTH, QUICK_LENGTHS, Settings, check_settings
from ..cli import ArgumentParser, run_cli
from ..errors import WavflowError

PROG = "wavflow benchmark"


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Time WaveNet (naive, cached, batched), WaveGlow and the IAF student "
                       "on one mel across audio lengths (design.md section 6).")
    p.add_argument("--lengths", default=None, help="comma-separated audio lengths in seconds "
                   f"(default {','.join(f'{v:g}' for v in DEFAULT_LENGTHS)}; --quick: "
                   f"{','.join(f'{v:g}' for v in QUICK_LENGTHS)})")
    p.add_argument("--models", default=None, help="comma-separated rows to run (default: all): "
                   + ", ".join(e.name for e in ENTRIES))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="precision: with bf16/fp16, WaveGlow "
                   "and the student are cast to it (weights and mel; WaveGlow keeps its flow state in fp32) and the "
                   "WaveNet rows run under torch.autocast; the cached WaveNet's compiled CPU loop always computes "
                   "in fp32, and so does NVIDIA's algorithm on a CPU. bf16 is refused on a device without native "
                   "bf16 (a CPU needs avx512_bf16 or amx_bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); the cached "
                   "WaveNet splits a batch over as many worker threads")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row after the warm-up; the median is "
                   "quoted (at least 3)")
    p.add_argument("--cpu-time", action="store_true", help="add a samples/CPU-s column: samples per second of "
                   "the process's CPU time (all threads), which a shared machine's load disturbs less than the "
                   "wall clock (the JSON always has it)")
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="FAMILY=PATH",
                   help="benchmark trained models: waveglow=PATH wavenet=PATH student=PATH (any subset)")
    for family in FAMILIES:
        p.add_argument(f"--{family}", metavar="PATH", default=None, help=f"{family} checkpoint (same as "
                       f"--checkpoint {family}=PATH)")
    p.add_argument("--config", nargs="+", default=[], metavar="PRESET|FAMILY=PRESET",
                   help="configs for models without a checkpoint (random weights): 'paper' (default) or 'tiny' "
                   "for all, or FAMILY=NAME where NAME is paper, another preset of the config class (e.g. "
                   "student=parallel_wavenet), or a YAML file: a training recipe or a mapping of config keys")
    p.add_argument("--mel", default=None, help="mel .npy (80 x F) or an audio file to take the mel from "
                   "(default: the example mel that ships with wavflow, LJ002-0020)")
    p.add_argument("--naive-length", type=float, default=None, metavar="SECONDS",
                   help=f"the one length naive WaveNet runs at, with the cached WaveNet beside it (default "
                   f"{NAIVE_LENGTH:g} s; --quick: the shortest length): it costs O(T * receptive field)")
    p.add_argument("--naive-all", action="store_true", help="also run naive WaveNet at every length of the sweep "
                   "(slow: minutes per second of audio at paper size on a CPU)")
    p.add_argument("--ar-max", type=float, default=None, metavar="SECONDS",
                   help="run the cached and batched WaveNet rows only at lengths up to this (default: every "
                   "length); on a GPU their per-sample kernel launches make long lengths take minutes")
    p.add_argument("--cap", nargs="+", default=[], metavar="MODEL=SECONDS",
                   help="run a row only at lengths up to SECONDS, e.g. --cap wavenet_batched=1 (16 utterances of "
                   "4 s take minutes per run on 2 CPU cores)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"utterances in the batched WaveNet row (default {BATCH})")
    p.add_argument("--quick", action="store_true", help="tiny configs, short lengths, smaller matmul probe: "
                   "under a minute on 2 CPU cores (what CI runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the sampling noise")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows (and the run's settings) as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG: wall time vs audio length, log-log")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: Sequence[str] | None, prog: str = PROG) -> Settings:
    """The command line checked into Settings; nothing is built and torch is left alone."""
    return check_settings(build_parser(prog).parse_args(argv))


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv`, run the benchmark, print the table and write --json and --plot."""
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(argv, prog)
    log = (lambda msg: None) if settings.quiet else (lambda msg: print(f"[benchmark] {msg}", file=sys.stderr,
                                                                       flush=True))
    for out in (settings.json, settings.plot):  # refuse an unwritable output before minutes of timing
        if out is not None and Path(out).parent.exists() is False:
            raise WavflowError(f"{out}: its directory does not exist")
    rows, meta = run_benchmark(settings, log, command=" ".join([prog, *map(str, argv)]))
    print_report(settings, rows, meta)
    if settings.json is not None:
        write_json(settings.json, rows, meta)
    if settings.plot is not None:
        write_plot(settings.plot, rows, meta)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow benchmark`: bad input is one line on stderr and exit status 2."""
    run_cli(prog, lambda args: run(args, prog), argv)
