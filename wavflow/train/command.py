"""`python -m wavflow.train CONFIG.yaml [--out-dir DIR] [--resume | --init CKPT] [--max-minutes M] [key=value ...]`,
and `train()` for Python."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..cli import ArgumentParser, number
from .config import RunConfig, default_out_dir, load_config
from .loop import Trainer, TrainingDiverged
from .runtime import EXIT_DIVERGED, PROG, Runtime

IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process started (seconds since the epoch), so that --max-minutes counts interpreter start-up and
    imports too: from /proc on Linux; elsewhere the first import of wavflow.train, a little later."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks after boot
        if 0 <= age < 86400 * 365:
            return time.time() - age
    except (OSError, ValueError, IndexError):
        pass
    return IMPORTED_AT


def train(config: RunConfig | str | os.PathLike, out_dir: str | os.PathLike | None = None, resume: bool = False,
          overrides: Sequence[str] = (), model: torch.nn.Module | None = None,
          init: str | os.PathLike | None = None) -> Trainer:
    """Train in this process (one process, no torchrun) and return the finished Trainer.

    `trainer.losses` holds every step's loss, `trainer.valid_history` (step, NLL) pairs, `trainer.model` the
    model. `model` replaces the one the config would build (its config must still be the config's); `init` starts
    from a checkpoint's weights and architecture, as --init does. train.max_minutes counts from this call.
    """
    started = time.time()
    config_path = None
    if not isinstance(config, RunConfig):
        config_path = str(config)
        config = load_config(config, overrides)
    out = Path(out_dir or config.train.out_dir or default_out_dir(config_path))
    trainer = Trainer(config, out, resume=resume, model=model, init=init, started_at=started)
    code = trainer.fit()
    trainer.exit_code = code
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Train a wavflow model (WaveGlow, WaveNet teacher, IAF "
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
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    started = process_start_time()
    overrides = list(args.overrides) + ([f"train.max_minutes={args.max_minutes!r}"] if args.max_minutes else [])
    config = load_config(args.config, overrides)
    out = Path(args.out_dir or config.train.out_dir or default_out_dir(args.config))
    runtime = Runtime.from_env()
    runtime.start(config.train.device)
    try:
        trainer = Trainer(config, out, resume=args.resume, runtime=runtime, init=args.init, started_at=started)
        try:
            return trainer.fit()
        except TrainingDiverged as e:
            where = (f"last good checkpoint: {trainer.last_path}" if trainer.last_path.exists()
                     else "no checkpoint was written")
            sys.stderr.write(f"{PROG}: error: {e}; stopped without saving ({where}); try a lower train.lr, "
                             f"train.grad_clip, or train.precision=fp32\n")
            return EXIT_DIVERGED
    finally:
        runtime.stop()
