"""`wavflow train CONFIG.yaml [--out-dir DIR] [--resume | --init CKPT] [--max-minutes M] [key=value ...]`.

Also `python -m wavflow.train` and `torchrun -m wavflow.train` (wavflow/train/__main__.py), which is how a
distributed run starts: every process runs this `main`. The training itself, its configuration, outputs and exit
statuses: wavflow.train.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..cli import ArgumentParser, number, run_cli
from ..train.command import process_start_time
from ..train.config import default_out_dir, load_config
from ..train.loop import Trainer, TrainingDiverged
from ..train.runtime import EXIT_DIVERGED, PROG, Runtime

# PROG is the trainer's own name ("wavflow.train"), which its progress lines carry: a run started without a prog
# (python -m wavflow.train, torchrun, tests) names itself as it always has. `wavflow train` passes its own.


def build_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Train a wavflow model (WaveGlow, WaveNet teacher, IAF "
                            "student) as a YAML file describes; under torchrun, on every process.",
                            epilog="Overrides: section.key=value (e.g. train.max_steps=100 data.root=PATH "
                                   "model_config.n_flows=8); values are read as YAML. Exit status: 0 done (or the "
                                   "--max-minutes budget ended the run), 1 loss "
                                   "became NaN/inf, 2 bad config or data, 130/143 stopped by SIGINT/SIGTERM "
                                   "after saving.")
    parser.add_argument("config", help="YAML run description (recipes/ljspeech/conf/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings applied over the file")
    parser.add_argument("--out-dir", help="output directory (default: train.out_dir, else exp/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output directory from its last.pt (starts afresh if none)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="start from this checkpoint's weights (a shipped model, best.pt, last.pt, an NVIDIA "
                             "WaveGlow file) with a fresh optimizer at step 0; its architecture and mel settings "
                             "are used, and a config that contradicts them is refused")
    parser.add_argument("--max-minutes", type=number(float, above=0, name="--max-minutes"), metavar="M",
                        help="wall-clock budget from process start (start-up, compilation, validation included); "
                             "the run validates, saves best.pt and last.pt, and exits 0 before it ends "
                             "(sets train.max_minutes)")
    return parser


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv` and train in this process (one of a torchrun job's); returns the exit status."""
    args = build_parser(prog).parse_intermixed_args(argv)  # overrides may come before or after the options
    started = process_start_time()
    overrides = list(args.overrides) + ([f"train.max_minutes={args.max_minutes!r}"] if args.max_minutes else [])
    config = load_config(args.config, overrides)
    out = Path(args.out_dir or config.train.out_dir or default_out_dir(args.config))
    runtime = Runtime.from_env()
    runtime.start(config.train.device)
    try:
        trainer = Trainer(config, out, resume=args.resume, runtime=runtime, init=args.init, started_at=started,
                          cpu_started_at=0.0)
        try:
            return trainer.fit()
        except TrainingDiverged as e:
            where = (f"last good checkpoint: {trainer.last_path}" if trainer.last_path.exists()
                     else "no checkpoint was written")
            sys.stderr.write(f"{prog}: error: {e}; stopped without saving ({where}); try a lower train.lr, "
                             f"train.grad_clip, or train.precision=fp32\n")
            return EXIT_DIVERGED
    finally:
        runtime.stop()


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow train`: a bad config or bad data is one line on stderr and exit status 2."""
    run_cli(prog, lambda args: run(args, prog), argv)
