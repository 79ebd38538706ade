"""`python -m wavflow.train.ship CHECKPOINT OUT.pt [--dtype fp16|bf16|fp32] [--max-mib M]`: a checkpoint to ship.

Writes the inference checkpoint of a training run's file (best.pt, last.pt, step-N.pt) or of any checkpoint
wavflow reads (an NVIDIA WaveGlow file is converted): the model, its config, mel settings, step, validation NLL,
teacher hash and --init record are kept; the training state (optimizer, grad scaler, random streams, sampler
position) is dropped; the weights are stored in half precision by default (fp16: 10 mantissa bits; bf16 keeps
float32's range with 7). Loading upcasts them to float32 (wavflow.checkpoint), so a model runs in float32 whatever
the file holds, on the weights rounded once. Half precision halves the file: 16 MiB holds about 8.3M parameters.

The file is checked before it is written: it must load as a model, and with --max-mib it must not exceed that size
(nothing is written otherwise). The last line printed is `OUT: TYPE, N parameters as DTYPE, X MiB, sha256 H`.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import (WEIGHT_DTYPES, file_sha256, inference_payload, is_native, model_from_payload,
                          model_payload, read_checkpoint, save_checkpoint)
from ..cli import ArgumentParser, number, run_cli
from ..errors import WavflowError

PROG = "python -m wavflow.train.ship"


def ship(source: str | Path, out: str | Path, dtype: str = "fp16", max_mib: float | None = None) -> dict:
    """Write the inference checkpoint of `source` to `out` with `dtype` weights; returns what it wrote
    (path, model_type, parameters, dtype, bytes, sha256)."""
    source, out = Path(source), Path(out)
    if dtype not in WEIGHT_DTYPES:
        raise WavflowError(f"--dtype {dtype}: expected one of {', '.join(WEIGHT_DTYPES)}")
    if out.is_dir():
        raise WavflowError(f"{out}: is a directory, expected the output file name")
    if not out.parent.is_dir():
        raise WavflowError(f"{out}: directory {out.parent} does not exist")
    obj = read_checkpoint(source)
    if not is_native(obj):
        from ..nvidia import checkpoint_step, model_from_checkpoint

        obj = model_payload(model_from_checkpoint(obj, str(source)), checkpoint_step(obj))
    model_from_payload(obj, str(source))  # a file that does not load as a model is refused before anything
    payload = inference_payload(obj, dtype, str(source))
    model = model_from_payload(payload, str(out))  # and the half-precision one loads too
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    size = buffer.tell()
    if max_mib is not None and size > max_mib * 2**20:
        raise WavflowError(f"{out}: would be {size / 2**20:.2f} MiB, more than --max-mib {max_mib:g}; nothing written")
    save_checkpoint(out, payload)
    return {"path": str(out), "model_type": payload["model_type"],
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype, "bytes": out.stat().st_size,
            "sha256": file_sha256(out)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Write a checkpoint for shipping: the model without training "
                            "state, its weights in half precision (upcast to float32 on load).")
    parser.add_argument("checkpoint", help="any checkpoint wavflow reads (best.pt, last.pt, a shipped model, NVIDIA)")
    parser.add_argument("out", help="the inference checkpoint to write")
    parser.add_argument("--dtype", default="fp16", choices=list(WEIGHT_DTYPES),
                        help="weight precision in the file (default fp16)")
    parser.add_argument("--max-mib", type=number(float, above=0, name="--max-mib"), default=None,
                        help="refuse to write a file larger than this many MiB")
    args = parser.parse_args(argv)
    info = ship(args.checkpoint, args.out, args.dtype, args.max_mib)
    print(f"{info['path']}: {info['model_type']}, {info['parameters']:,} parameters as {info['dtype']}, "
          f"{info['bytes'] / 2**20:.2f} MiB, sha256 {info['sha256']}", file=sys.stdout, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(PROG, main)
