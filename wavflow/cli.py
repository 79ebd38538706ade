"""What every `python -m wavflow.X` command shares: one-line errors and exit status 2 for bad input."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from .errors import WavflowError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the full usage stays behind --help)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
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
        raise SystemExit(130)
    except WavflowError as e:
        if debug:
            raise
        fail(prog, str(e))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        if debug:
            raise
        what = e.strerror or type(e).__name__
        fail(prog, f"{e.filename}: {what}" if e.filename else str(e))
    raise SystemExit(code or 0)
