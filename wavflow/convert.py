"""Any checkpoint wavflow reads -> a native inference checkpoint, its weights in fp32, fp16 or bf16: `convert()`,
and the command `wavflow convert CHECKPOINT OUT.pt [--dtype fp32|fp16|bf16] [--max-mib M] [--sigma S]
[--temperature T]`
(wavflow.commands.convert; also `python -m wavflow.convert`).

    wavflow convert waveglow_256channels_universal_v5.pt waveglow_universal.pt      # NVIDIA's file, fp32
    wavflow convert exp/waveglow/best.pt waveglow.pt --dtype fp16 --max-mib 16       # a run's file, to ship

CHECKPOINT may be one of NVIDIA's WaveGlow files (the pickled glow.WaveGlow module with fused cond_layer or
per-layer cond_layers, or a DeepLearningExamples {'state_dict', 'config'} file; see wavflow.nvidia), converted,
or a native file: a training run's (best.pt, last.pt, step-N.pt), a shipped model, an earlier conversion. It is
read without running any code from it. OUT keeps the model, its config, mel settings, step, validation NLL,
teacher hash and --init record; the training state (optimizer, grad scaler, random streams, sampler position)
is dropped. Its weights are stored as --dtype: fp16 (10 mantissa bits) or bf16 (float32's range, 7 bits) halve
the file, 16 MiB holding about 8.3M parameters; loading upcasts them to float32 (wavflow.checkpoint), so the
model runs in float32 on the weights rounded once.

OUT is checked before it is written: it must load as a model, and with max_mib it must not exceed that size.
It holds plain tensors and values only, loads with torch.load(weights_only=True), and is written atomically
(missing directories are created): a failure leaves no file behind.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    WEIGHT_DTYPES,
    file_sha256,
    inference_payload,
    is_native,
    model_from_payload,
    model_payload,
    read_checkpoint,
    save_checkpoint,
)
from .errors import WavflowError
from .fileio import check_writable_dir

# A file's default sampling option, as `synthesize` uses it when a call names none: the config key that holds it,
# and the families it belongs to.
DEFAULT_OPTIONS = {"sigma": ("infer_sigma", "no noise scale (sigma is WaveGlow's)"),
                   "temperature": ("infer_temperature", "no sampling temperature (the WaveNet teacher's and the "
                                                        "student's)")}


def convert(source: str | Path, out: str | Path, dtype: str = "fp32", max_mib: float | None = None,
            sigma: float | None = None, temperature: float | None = None) -> dict[str, Any]:
    """Write the inference checkpoint of `source` to `out` with `dtype` weights (module docstring). `sigma`, for a
    model with a noise scale (WaveGlow), becomes the file's default sampling sigma (its config's infer_sigma), and
    `temperature`, for the WaveNet teacher or the student, its default temperature (infer_temperature): what
    `synthesize` uses when a call names none.

    Returns what it wrote: path, model_type, origin ('wavflow' or 'nvidia'), step, parameters, dtype, bytes,
    sha256. Every refusal is a WavflowError raised before anything is written.
    """
    source, out = Path(source), Path(out)
    if dtype not in WEIGHT_DTYPES:
        raise WavflowError(f"--dtype {dtype}: expected one of {', '.join(WEIGHT_DTYPES)}")
    if out.is_dir():
        raise WavflowError(f"{out}: is a directory, expected an output file name")
    check_writable_dir(out.parent)
    obj = read_checkpoint(source)
    origin = "wavflow"
    if not is_native(obj):
        from . import nvidia

        origin = "nvidia"
        obj = model_payload(nvidia.model_from_checkpoint(obj, str(source)), nvidia.checkpoint_step(obj),
                            converted_from=origin)
    loaded = model_from_payload(obj, str(source))  # a file that does not load as a model is refused before anything
    payload = inference_payload(obj, dtype, str(source))
    for option, value in (("sigma", sigma), ("temperature", temperature)):
        if value is None:
            continue
        key, missing = DEFAULT_OPTIONS[option]
        if option not in loaded.infer_options or not hasattr(getattr(loaded, "config", None), key):
            raise WavflowError(f"--{option}: a {payload['model_type']} model has {missing}")
        if not value >= 0:
            raise WavflowError(f"--{option} {value}: expected a number >= 0")
        payload["model_config"] = {**payload["model_config"], key: float(value)}
    model = model_from_payload(payload, str(out))  # and the file as written (its weights rounded) loads too
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    size = buffer.tell()
    if max_mib is not None and size > max_mib * 2**20:
        raise WavflowError(f"{out}: would be {size / 2**20:.2f} MiB, more than --max-mib {max_mib:g}; nothing written")
    save_checkpoint(out, payload)
    return {"path": str(out), "model_type": payload["model_type"], "origin": origin,
            "step": int(payload.get("step", 0)), "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": dtype, "bytes": out.stat().st_size, "sha256": file_sha256(out),
            "sigma": getattr(model.config, "infer_sigma", None),
            "temperature": getattr(model.config, "infer_temperature", None)}


if __name__ == "__main__":
    from wavflow.commands.convert import main

    main(prog="python -m wavflow.convert")  # help and errors name the command as it was typed
