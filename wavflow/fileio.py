"""Files in and out: atomic writes (a reader, or a crash, never sees half a file under the final name) and the checks
that a path can be read from or written to, made before any work."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import WavflowError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, durable: bool = False) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path`.

    The temporary file gets the mode any new file gets (mkstemp alone would leave it 0600), and it is removed if
    `write` fails, so an error leaves neither a partial file nor a stray temporary. `durable` also syncs the file
    to disk before the rename and the directory after it, so the new file survives a power cut, not only a crash
    (checkpoints, which a long run cannot afford to lose).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def check_input_file(path: Path, what: str) -> None:
    """Refuse, by name, a path that is not a regular file to read `what` from (a directory, a FIFO that could
    block forever, a device, nothing at all)."""
    if not path.exists():
        raise WavflowError(f"{path}: no such file")
    if path.is_dir():
        raise WavflowError(f"{path}: is a directory, expected {what}")
    if not path.is_file():
        raise WavflowError(f"{path}: not a regular file, expected {what}")


def check_writable_dir(directory: str | os.PathLike) -> None:
    """Refuse, before any work is done, a directory that cannot take new files.

    The directory need not exist yet: its nearest existing ancestor must be a directory in which a file can
    be created. The check creates and removes a temporary file, the only test that holds for root and for
    read-only file systems alike.
    """
    directory = Path(directory)
    d = directory
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise WavflowError(f"{directory}: cannot write there: {d} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".wavflow-write-test.", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise WavflowError(f"{directory}: cannot write there ({e.strerror or e})") from None
