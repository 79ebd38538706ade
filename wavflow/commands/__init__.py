"""`wavflow COMMAND [ARGS ...]`: every wavflow tool behind one command (also `python -m wavflow COMMAND ...`).

One module per command, each holding its parser and a `main(argv, prog)` that parses and calls the library:

    synthesize.py  mel spectrograms (.npy) to WAV files                 library: wavflow.inference, streaming
    stream.py      one mel, vocoded and written chunk by chunk            library: wavflow.streaming
    mel.py         audio files to mel spectrograms (.npy)                 library: wavflow.mel, frontend
    train.py       training as a YAML recipe describes                    library: wavflow.train
    evaluate.py    held-out likelihood and copy-synthesis quality         library: wavflow.evaluate, metrics
    benchmark.py   the speed of every way wavflow samples audio           library: wavflow.benchmark
    export.py      WaveGlow or the IAF student as an ONNX graph           library: wavflow.export
    convert.py     any checkpoint as a native, optionally half-precision, inference file   library: wavflow.convert

Each is imported only when its command runs, so `wavflow --help` (and a typo) answers without importing torch.
The old entry points (`python -m wavflow.synthesize`, `python -m wavflow.train`, ...) call the same `main` with
their own `prog`, so their help and error lines still name the command the user typed.
"""
from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

# name -> one-line description, in the order `wavflow --help` lists them
COMMANDS = {
    "synthesize": "vocode mel spectrograms (.npy) to WAV files",
    "stream": "vocode one mel chunk by chunk, writing the audio as it is made (a WAV file or raw PCM on stdout)",
    "mel": "compute mel spectrograms (.npy) of audio files",
    "train": "train a WaveGlow, WaveNet teacher or IAF student as a YAML recipe describes",
    "evaluate": "held-out likelihood and copy-synthesis quality of checkpoints, Griffin-Lim as the floor",
    "benchmark": "time every way wavflow samples audio (FLOPs, real-time factor, peak memory)",
    "export": "export WaveGlow or the IAF student to ONNX",
    "convert": "convert any checkpoint wavflow reads to a native inference file (fp32, fp16 or bf16 weights)",
}
PROG = "wavflow"


def help_text() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS ...]", "",
             "Flow-based neural vocoders (WaveGlow, WaveNet teacher, IAF student): mel spectrograms to speech.", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, what in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit", "  --version   show wavflow's version and exit",
              "", f"`{PROG} COMMAND --help` shows a command's options. `python -m wavflow` is the same command."]
    return "\n".join(lines)


def _usage_error(message: str) -> NoReturn:
    # The one-line contract of every wavflow command (wavflow.cli): the full usage stays behind --help.
    sys.stderr.write(f"{PROG}: error: {message}\n")
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run `wavflow COMMAND ARGS...`: the command's own `main` with prog 'wavflow COMMAND'."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        _usage_error(f"no command given; choose one of {', '.join(COMMANDS)} (or --help)")
    name, rest = args[0], args[1:]
    if name in ("-h", "--help"):
        print(help_text())
        raise SystemExit(0)
    if name == "--version":
        from .. import __version__

        print(f"{PROG} {__version__}")
        raise SystemExit(0)
    if name.startswith("-"):  # a command's option before the command: say where options go
        _usage_error(f"unknown option '{name}'; {PROG} itself takes --help or --version, a command's options come "
                     f"after it ({PROG} COMMAND --help)")
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(COMMANDS)}"
        _usage_error(f"unknown command '{name}'; {hint}")
    module = importlib.import_module(f"{__name__}.{name}")
    module.main(rest, prog=f"{PROG} {name}")
    raise SystemExit(0)  # every command's main exits itself; this is never reached
