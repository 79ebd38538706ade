"""`wavflow export CHECKPOINT -o model.onnx` (or `--model NAME`): WaveGlow or the IAF student as an ONNX graph.

    wavflow export checkpoints/waveglow-ljspeech-mini.pt -o waveglow.onnx
    wavflow export --model student -o student.onnx

The graph, its inputs and its metadata: wavflow.export. The file is written atomically; bad input is one line
on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..checkpoint import load
from ..cli import ArgumentParser, run_cli
from ..errors import WavflowError

# _check_output and _import_onnx are the library's own refusals (export_onnx runs them too): called here first so
# that a bad output path or a missing onnx package is refused before the checkpoint is loaded.
from ..export import OPSET, _check_output, _import_onnx, check_exportable, export_onnx, verify
from ..resources import SHIPPED, shipped_checkpoint

PROG = "wavflow export"


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description="Export a WaveGlow or IAF student checkpoint to ONNX (weight norm "
                                              "folded, 1x1 inverses precomputed; inputs mel, z and sigma or "
                                              "temperature; output audio; dynamic batch and length).")
    p.add_argument("checkpoint", nargs="?", help="a wavflow checkpoint or an NVIDIA WaveGlow file")
    p.add_argument("--model", choices=SHIPPED, metavar="NAME",
                   help=f"a shipped model by name instead: {', '.join(SHIPPED)} (the WaveNet teacher, autoregressive, "
                        "does not export)")
    p.add_argument("-o", "--output", metavar="OUT", help="the .onnx file to write (default: CHECKPOINT's name "
                                                         "with .onnx, in the current directory)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check that onnxruntime's audio equals PyTorch's (run when onnxruntime is installed)")
    return p


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv`, export and (with onnxruntime) verify; every input is checked before the file is written."""
    p = build_parser(prog)
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.model is None):
        p.error("give a checkpoint file or --model NAME (one of them)")
    source = Path(args.checkpoint) if args.checkpoint is not None else shipped_checkpoint(args.model)
    out = Path(args.output) if args.output is not None else Path(source.stem + ".onnx")
    if not 7 <= args.opset <= 23:
        raise WavflowError(f"--opset {args.opset}: expected an ONNX opset from 7 to 23")
    _check_output(out)
    model = load(source)  # one line for a missing, truncated, code-carrying or foreign file
    check_exportable(model)
    _import_onnx()
    size = export_onnx(model, out, args.opset)
    diff = None if args.no_verify else verify(out, model)
    check = ("" if args.no_verify else " (onnxruntime not installed: not verified)" if diff is None
             else f"; onnxruntime vs PyTorch, same z, 7 and 23 frames: max |diff| {diff:.2g}")
    params = sum(t.numel() for t in model.parameters())
    print(f"wrote {out}: {model.model_type}, {params:,} parameters, {size / 2**20:.1f} MiB{check}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow export`: bad input is one line on stderr and exit status 2, before anything is written."""
    run_cli(prog, lambda args: run(args, prog), argv)
