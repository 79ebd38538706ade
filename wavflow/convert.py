"""`python -m wavflow.convert IN OUT`: any checkpoint wavflow reads -> a native wavflow checkpoint.

    python -m wavflow.convert waveglow_256channels_universal_v5.pt waveglow_universal.pt

IN may be one of NVIDIA's WaveGlow files (the pickled glow.WaveGlow module with fused cond_layer or per-layer
cond_layers, or a DeepLearningExamples {'state_dict', 'config'} file; see wavflow.nvidia) or a native file
(re-written as inference-only: model, config, mel settings, step). IN is read without running any code from it.
OUT holds plain tensors and values only, loads with torch.load(weights_only=True), and is written atomically:
a failure leaves no partial file. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Sequence

from .checkpoint import is_native, model_from_payload, model_payload, read_checkpoint, save_checkpoint
from .cli import ArgumentParser, check_writable_dir, run_cli
from .errors import WavflowError

PROG = "python -m wavflow.convert"


def convert(src: str | Path, dst: str | Path) -> dict:
    """Convert checkpoint `src` to a native wavflow checkpoint at `dst`; returns a summary."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.is_dir():
        raise WavflowError(f"{dst}: is a directory, expected an output file name")
    check_writable_dir(dst.parent)
    obj = read_checkpoint(src)
    if is_native(obj):
        model, step, origin = model_from_payload(obj, str(src)), int(obj.get("step", 0)), "wavflow"
    else:
        from . import nvidia

        model, step, origin = nvidia.model_from_checkpoint(obj, str(src)), nvidia.checkpoint_step(obj), "nvidia"
    save_checkpoint(dst, model_payload(model, step, converted_from=origin))
    return {"model_type": model.model_type, "origin": origin, "step": step,
            "parameters": sum(p.numel() for p in model.parameters())}


def _main(argv: Sequence[str] | None) -> None:
    p = ArgumentParser(prog=PROG, description="Convert a WaveGlow checkpoint (NVIDIA's or wavflow's) to a native "
                                              "wavflow checkpoint, without running code from the input file.")
    p.add_argument("input", help="checkpoint to read (NVIDIA glow.WaveGlow pickle, DeepLearningExamples, wavflow)")
    p.add_argument("output", help="native wavflow checkpoint to write")
    args = p.parse_args(argv)
    info = convert(args.input, args.output)
    print(f"{args.output}: {info['model_type']} from a {info['origin']} checkpoint, "
          f"{info['parameters']:,} parameters, step {info['step']}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    run_cli(PROG, _main, argv)


if __name__ == "__main__":
    main()
