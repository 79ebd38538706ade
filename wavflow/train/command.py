"""`train()`, training for Python, and what the command line (`wavflow train`, wavflow.commands.train) shares with
it: the process start time --max-minutes counts from."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import RunConfig, default_out_dir, load_config
from .loop import Trainer

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
