"""Deprecated: `python -m wavflow.train.ship CHECKPOINT OUT.pt` is `wavflow convert CHECKPOINT OUT.pt --dtype fp16`
(wavflow.convert), which it now runs, fp16 still its default; `ship()` is `wavflow.convert.convert`.

Kept so that scripts written for it keep working; new code calls the convert command or function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..convert import convert


def ship(source: str | Path, out: str | Path, dtype: str = "fp16", max_mib: float | None = None) -> dict[str, Any]:
    """Deprecated name of `wavflow.convert.convert`, with fp16 as the default dtype."""
    return convert(source, out, dtype, max_mib)


if __name__ == "__main__":
    from wavflow.commands.convert import main

    main(prog="python -m wavflow.train.ship", dtype="fp16")
