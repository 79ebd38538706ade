"""`python -m wavflow.train CONFIG.yaml [--out-dir DIR] [--resume] [key=value ...]`, and `train()` for Python."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..cli import ArgumentParser
from .config import RunConfig, default_out_dir, load_config
from .loop import Trainer, TrainingDiverged
from .runtime import EXIT_DIVERGED, PROG, Runtime


def train(config: RunConfig | str | os.PathLike, out_dir: str | os.PathLike | None = None, resume: bool = False,
          overrides: Sequence[str] = (), model: torch.nn.Module | None = None) -> Trainer:
    """Train in this process (one process, no torchrun) and return the finished Trainer.

    `trainer.losses` holds every step's loss, `trainer.valid_history` (step, NLL) pairs, `trainer.model` the
    model. `model` replaces the one the config would build (its config must still be the config's).
    """
    config_path = None
    if not isinstance(config, RunConfig):
        config_path = str(config)
        config = load_config(config, overrides)
    out = Path(out_dir or config.train.out_dir or default_out_dir(config_path))
    trainer = Trainer(config, out, resume=resume, model=model)
    code = trainer.fit()
    trainer.exit_code = code
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Train a wavflow model (WaveGlow, WaveNet teacher, IAF "
                            "student) as a YAML file describes; under torchrun, on every process.",
                            epilog="Overrides: section.key=value (e.g. train.max_steps=100 data.root=PATH "
                                   "model_config.n_flows=8); values are read as YAML. Exit status: 0 done, 1 loss "
                                   "became NaN/inf, 2 bad config or data, 130/143 stopped by SIGINT/SIGTERM "
                                   "after saving.")
    parser.add_argument("config", help="YAML run description (recipes/ljspeech/conf/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings applied over the file")
    parser.add_argument("--out-dir", help="output directory (default: train.out_dir, else exp/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output directory from its last.pt (starts afresh if none)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    config = load_config(args.config, args.overrides)
    out = Path(args.out_dir or config.train.out_dir or default_out_dir(args.config))
    runtime = Runtime.from_env()
    runtime.start(config.train.device)
    try:
        trainer = Trainer(config, out, resume=args.resume, runtime=runtime)
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
