"""wavflow checkpoints: plain tensors and plain Python values, written atomically, read without running code.

The native layout, and what the trainer adds to it in last.pt, step-N.pt and best.pt, is design.md section 7:
every value loads under `torch.load(weights_only=True)`. NVIDIA's WaveGlow files are read too (wavflow.nvidia).

Inference checkpoints (best.pt with train.best_dtype, `wavflow convert --dtype fp16`) may store their float32
weights as fp16 or bf16, half the bytes, marked `"weights_dtype": "fp16" | "bf16"`; loading upcasts every such
tensor to the dtype of the model's own tensor (float32), so a model always runs in float32 whatever the file
holds. Training checkpoints (last.pt) always keep float32: the optimizer's state is float32 and resuming must
be exact.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import WavflowError
from .fileio import atomic_write

FORMAT = "wavflow"
VERSION = 1

# The weight precisions an inference checkpoint may store (the "weights_dtype" key; absent means fp32).
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What only the trainer needs to continue a run: left out of an inference checkpoint.
TRAINING_KEYS = ("optimizer", "scaler", "rng", "sampler", "best_valid_nll", "world_size", "rank_weights_sha256")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """torch.save `payload` to `path` through a synced temporary file beside it (wavflow.fileio.atomic_write).

    A crash (even SIGKILL) at any moment leaves either the previous complete file or the new complete file
    under `path`, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f: BinaryIO) -> None:
        torch.save(payload, f)
        f.flush()

    atomic_write(path, write, durable=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file with `torch.load(weights_only=True)`: no code from the file ever runs.

    Returns the raw dictionary (native wavflow layout, or a foreign layout for `wavflow.nvidia` to convert).
    """
    path = Path(path)
    if not path.exists():
        raise WavflowError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise WavflowError(f"{path}: is a directory, expected a checkpoint file")
    if not zipfile.is_zipfile(path) and not _is_legacy_torch_file(path):
        raise WavflowError(f"{path}: not a torch checkpoint (truncated, corrupt, or another kind of file)")
    try:
        from .nvidia import foreign_globals, load_legacy  # NVIDIA's class names, mapped onto inert stand-ins

        if _is_legacy_torch_file(path):
            obj = load_legacy(path)
        else:
            with foreign_globals():
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global it does not know: that is how a code-running payload is stopped.
        # torch's message is a page of advice ending in "weights_only=False"; name only what the file asked for.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it asks to run {found.group(1)}" if found else str(e).strip().splitlines()[-1][:160]
        raise WavflowError(f"{path}: refused to load: unpickling it would need code from outside the tensor "
                           f"allow-list ({what}); wavflow never runs code from a checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise WavflowError(f"{path}: cannot read checkpoint "
                           f"(truncated or corrupt: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise WavflowError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dictionary")
    return obj


# torch.save(..., _use_new_zipfile_serialization=False), the format of torch < 1.6 (NVIDIA's 2018-2019 releases),
# starts with the pickled magic number 0x1950a86a20f9469cfc6c. torch.load(weights_only=True) cannot read the
# pickled modules in it, so wavflow.nvidia.load_legacy reads it through an allow-listed unpickler.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _is_legacy_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_payload(model: torch.nn.Module, step: int = 0, **extra: Any) -> dict[str, Any]:
    """The inference part of a native checkpoint for `model` (a wavflow model with .config and .mel_config)."""
    from .models import config_to_dict

    return {
        "format": FORMAT,
        "version": VERSION,
        "model_type": model.model_type,
        "model_config": config_to_dict(model.config),
        "mel_config": model.mel_config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        **extra,
    }


def cast_weights(state_dict: dict[str, torch.Tensor], weights_dtype: str,
                 source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`state_dict` with every float32, fp16 or bf16 tensor stored as `weights_dtype` (fp32, fp16, bf16); other
    tensors (integer buffers, float64) as they are. fp16 cannot hold a magnitude above 65,504: such a weight is
    refused by name rather than stored as infinity (bf16 has float32's range)."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise WavflowError(f"weights dtype '{weights_dtype}': expected one of {', '.join(WEIGHT_DTYPES)}")
    dtype = WEIGHT_DTYPES[weights_dtype]
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        if t.dtype in WEIGHT_DTYPES.values() and t.dtype != dtype:
            if dtype == torch.float16 and t.numel() and bool((t.abs() > torch.finfo(torch.float16).max).any()):
                raise WavflowError(f"{source}: weight {name} holds magnitudes above fp16's 65504 "
                                   f"(max {t.abs().max().item():.4g}); store it as bf16 or fp32")
            t = t.to(dtype)
        out[name] = t
    return out


def inference_payload(obj: dict[str, Any], weights_dtype: str = "fp32", source: str = "checkpoint") -> dict[str, Any]:
    """A native checkpoint (training or inference) as an inference checkpoint: the training state dropped
    (TRAINING_KEYS), the weights stored as `weights_dtype` and marked so."""
    out = {k: v for k, v in obj.items() if k not in TRAINING_KEYS}
    out["state_dict"] = cast_weights(obj["state_dict"], weights_dtype, source)
    if weights_dtype == "fp32":
        out.pop("weights_dtype", None)
    else:
        out["weights_dtype"] = weights_dtype
    return out


def is_native(obj: dict[str, Any]) -> bool:
    return obj.get("format") == FORMAT


def model_from_payload(obj: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """Build the model a native checkpoint describes and load its weights (strictly)."""
    from .frontend import MelConfig
    from .models import build_model

    for key in ("model_type", "model_config", "mel_config", "state_dict"):
        if key not in obj:
            raise WavflowError(f"{source}: wavflow checkpoint lacks '{key}'")
    # The file is untrusted: a wrong type in any field must be a clear refusal, not a crash deep in a constructor.
    if not isinstance(obj["model_type"], str):
        raise WavflowError(f"{source}: 'model_type' is a {type(obj['model_type']).__name__}, expected a string")
    for key in ("model_config", "mel_config", "state_dict"):
        if not isinstance(obj[key], dict):
            raise WavflowError(f"{source}: '{key}' is a {type(obj[key]).__name__}, expected a dictionary")
    bad = [k for k, v in obj["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WavflowError(f"{source}: 'state_dict' entry {bad[0]!r} is not a named tensor")
    if "weights_dtype" in obj and obj["weights_dtype"] not in WEIGHT_DTYPES:
        raise WavflowError(f"{source}: 'weights_dtype' is {obj['weights_dtype']!r}, expected one of "
                           f"{', '.join(WEIGHT_DTYPES)}")
    if not isinstance(obj.get("version", VERSION), int):
        raise WavflowError(f"{source}: 'version' is not an integer")
    if obj.get("version", VERSION) > VERSION:
        raise WavflowError(f"{source}: checkpoint version {obj['version']} is newer than this wavflow reads "
                           f"({VERSION})")
    try:
        model = build_model(obj["model_type"], obj["model_config"], MelConfig.from_dict(obj["mel_config"]))
    except WavflowError as e:
        raise WavflowError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:  # a config value of the wrong type or range
        raise WavflowError(f"{source}: the stored model config is not valid for a {obj['model_type']} "
                           f"({str(e).splitlines()[0][:200]})") from None
    # Name the first mismatch: torch's own message starts with a line that says only that there is one.
    expected, given = model.state_dict(), obj["state_dict"]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of the wrong shape (e.g. {wrong[0]}: {tuple(given[wrong[0]].shape)} in the file, "
                 f"{tuple(expected[wrong[0]].shape)} expected)" if wrong else ""]
        raise WavflowError(f"{source}: weights do not fit a {obj['model_type']} of the stored config: "
                           f"{', '.join(p for p in parts if p)}")
    # Half-precision weights (an inference checkpoint's weights_dtype) are upcast to the model's own dtype here,
    # explicitly, so what runs is exactly the stored value in float32.
    upcast = {k: v.to(expected[k].dtype) if v.is_floating_point() and v.dtype != expected[k].dtype
              and expected[k].is_floating_point() else v for k, v in given.items()}
    try:
        model.load_state_dict(upcast, strict=True)
    except RuntimeError as e:
        raise WavflowError(f"{source}: weights do not fit a {obj['model_type']} of the stored config "
                           f"({str(e).splitlines()[0][:200]})") from None
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load any checkpoint wavflow understands as a model in eval mode on `device`.

    Native wavflow checkpoints, and NVIDIA's WaveGlow files in their three layouts (see wavflow.nvidia); or a
    shipped model by name ("waveglow", "wavenet", "student": wavflow.resources.MODELS) where no file of that
    name exists. The returned model carries `.config`, `.mel_config` and `.model_type`.
    """
    return _load(_name_or_path(path), device)[0]


def _name_or_path(path: str | os.PathLike) -> str | os.PathLike:
    """`path` itself when it exists (a file named like a shipped model wins), else the shipped checkpoint it
    names. A missing path that looks like a name (no directory, no suffix) is refused with the known names; any
    other missing path is left to read_checkpoint's "no such checkpoint file"."""
    from . import resources

    text = os.fspath(path)
    if Path(text).exists():
        return path
    if text in resources.MODELS:
        return resources.shipped_checkpoint(text)
    if text and os.sep not in text and "/" not in text and not Path(text).suffix:
        raise WavflowError(f"'{text}': no such checkpoint file, nor a shipped model; shipped models: "
                           f"{', '.join(resources.SHIPPED)} (python -m wavflow.synthesize --list-models)")
    return path


def load_with_step(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, int | None]:
    """`load`, and the optimizer steps the file says the model was trained for (None when it does not say)."""
    model, step = _load(path, device)
    return model, None if step is None else int(step)


def _load(path: str | os.PathLike, device: str | torch.device) -> tuple[torch.nn.Module, Any]:
    obj = read_checkpoint(path)
    if is_native(obj):
        model, step = model_from_payload(obj, str(path)), obj.get("step")
    else:
        from . import nvidia

        model, step = nvidia.model_from_checkpoint(obj, str(path)), obj.get("iteration")
    return model.to(device).eval(), step
