"""Where and in what precision a model runs: the device a name stands for, and whether it computes in bf16.

    device = resolve_device("auto")                 # cuda when there is one, else cpu
    check_dtype("bf16", device, model)              # a one-line WavflowError where bf16 would be emulated

Every library module resolves devices here; wavflow.cli re-exports `resolve_device` for the command lines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import WavflowError

if TYPE_CHECKING:  # annotations only: wavflow.models never imports this module
    from .models import Vocoder

# The precisions synthesis runs in (--dtype): the weights' dtype once loaded.
SYNTHESIS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; refuse a device this machine does not have."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WavflowError(f"device '{name}': not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WavflowError(f"device '{name}': CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise WavflowError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise WavflowError(f"device '{name}': only cpu and cuda are supported")
    return device


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes in bf16 natively: a CUDA device that torch says supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 instructions. Without them torch emulates bf16 by converting to float32, which is
    slower than float32 itself."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in _BF16_FLAGS)
    try:  # no /proc: torch's own CPU feature probe
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def check_dtype(dtype: str, device: str | torch.device, model: Vocoder | None = None) -> None:
    """Refuse, in one line, a precision the device or the model's family cannot run natively (--dtype).

    bf16: WaveGlow runs its coupling networks in bf16 with the flow state in float32; the student runs wholly in
    bf16; a family whose `no_bf16` gives a reason (the WaveNet teacher: its CPU generator is a compiled float32
    loop) is refused with it. README "Speed" has the measured quality of each.
    """
    if dtype not in SYNTHESIS_DTYPES:
        raise WavflowError(f"dtype '{dtype}': expected one of {', '.join(SYNTHESIS_DTYPES)}")
    if dtype == "fp32":
        return
    device = torch.device(device)
    if not native_bf16(device):
        what = ("this CPU has neither the avx512_bf16 nor the amx_bf16 instructions" if device.type == "cpu"
                else f"{device} does not support bf16")
        raise WavflowError(f"--dtype {dtype}: {what}, so bf16 would be emulated and slower than fp32; use "
                           f"--dtype fp32")
    if model is not None and model.no_bf16 is not None:
        raise WavflowError(f"--dtype {dtype}: {model.no_bf16}; use --dtype fp32")
