"""What every `python -m wavflow.X` command shares: one-line errors and exit status 2 for bad input.

Only command lines import this module."""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import WavflowError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the full usage stays behind --help), and an option is
    spelled out in full: a prefix (`--hop` for `--hop-length`) is an unknown option, not a silent guess."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def number(kind: type, *, minimum: float | None = None, above: float | None = None,
           name: str | None = None) -> Callable[[str], object]:
    """An argparse `type`: a finite `kind` (int or float) that is >= `minimum` or > `above`.

    argparse reports a rejected value as "invalid NAME value: 'TEXT'", NAME being `name` or a description such
    as "positive integer" or "non-negative float".
    """
    def parse(text: str) -> object:
        value = kind(text)  # ValueError: argparse names the flag and the text
        if not math.isfinite(value) or (minimum is not None and value < minimum) \
                or (above is not None and not value > above):
            raise ValueError(text)
        return value

    if name is None:
        bound = ("positive " if above == 0 else "non-negative " if minimum == 0 else "")
        name = bound + {int: "integer", float: "float"}.get(kind, kind.__name__)
    parse.__name__ = name
    return parse


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> NoReturn:
    """Run `main(argv)` and turn the errors a user can cause into one line and exit status 2.

    A WavflowError or an OS error about a path the user gave is the user's to fix, so no traceback is shown;
    any other exception is a bug in wavflow and keeps its traceback (set WAVFLOW_DEBUG=1 to see it for the
    former too).
    """
    debug = os.environ.get("WAVFLOW_DEBUG") == "1"
    try:
        code = main(argv)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        raise SystemExit(130) from None
    except BrokenPipeError:
        # the reader of stdout left (`... --list-models | head`): stop quietly, as a Unix tool does; stdout goes
        # to /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None
    except WavflowError as e:
        if debug:
            raise
        fail(prog, str(e))
    except OSError as e:
        # An OS error about a named path (missing, not writable, disk full, read-only file system) is the
        # user's to fix; one without a path is not, and keeps its traceback.
        if debug or e.filename is None:
            raise
        what = e.strerror or type(e).__name__
        fail(prog, f"{e.filename}: {what}" if e.filename else str(e))
    raise SystemExit(code or 0)


# ----------------------------------------------------------------------------------------------------------------
# Inputs and outputs of the file-to-file commands (mel, synthesize): everything is resolved and checked before
# the first output is written, so a bad argument never leaves half a run behind.

def expand_inputs(paths: Sequence[str | os.PathLike], suffixes: Sequence[str], what: str) -> list[Path]:
    """The files to process: each path as given, a directory standing for its files ending in one of `suffixes`
    (sorted by name, not recursive). Whether a file exists and parses is left to its loader."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes and q.is_file())
            if not found:
                raise WavflowError(f"{p}: directory holds no {what} files ({', '.join(suffixes)})")
            files += found
        else:
            files.append(p)
    return files


def output_paths(inputs: Sequence[Path], out: str | os.PathLike | None, suffix: str,
                 default_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where each input's result goes, as `<stem><suffix>`.

    `out` ending in `suffix` (and not an existing directory) names the output file of a single input; any other
    `out` is a directory. Without `out` the files go to `default_dir`, or next to their inputs when that is None.
    Two inputs that would write the same file are refused.
    """
    if out is not None and Path(out).suffix.lower() == suffix and not Path(out).is_dir():
        if len(inputs) != 1:
            raise WavflowError(f"-o {out} names one file but {len(inputs)} inputs were given; give a directory")
        targets = [Path(out)]
    elif out is not None or default_dir is not None:
        directory = Path(out if out is not None else default_dir)  # type: ignore[arg-type]
        targets = [directory / (p.stem + suffix) for p in inputs]
    else:
        targets = [p.with_suffix(suffix) for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, targets, strict=True):
        if dst.is_dir():
            raise WavflowError(f"{dst}: is a directory, cannot write the output for {src} there")
        key = Path(os.path.abspath(dst))
        if key in seen:
            raise WavflowError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    return targets
