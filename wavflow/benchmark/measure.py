"""What one benchmark call is measured with: the clocks, the FLOP counter, peak memory and the matmul peak.

design.md section 6 is the protocol; this module is how each quantity is read.

- Time: time.perf_counter around the call, read after torch.cuda.synchronize() on a GPU; the process's CPU
  seconds (time.process_time, every thread of the process) are read around the same call. On a machine shared
  with other jobs the wall figure drops with the load while CPU seconds per sample show what the code does with
  the cycles it gets.
- FLOPs: COUNTED with torch.utils.flop_counter's per-op formulas (matmuls and convolutions; element-wise work
  such as tanh, exp and sampling is not counted), plus the in-place and matrix-vector products its table leaves
  out (`FlopCount`).
- Peak memory: working memory of the call above what was resident before it (weights excluded).
  GPU: torch.cuda.max_memory_allocated() - memory_allocated() before the call (tensors only, not the caching
  allocator's reserve). CPU: growth of the resident set, VmHWM - VmRSS from /proc/self/status, with the
  high-water mark reset (/proc/self/clear_refs) and freed heap returned to the OS (malloc_trim) before the call:
  it counts every allocation (torch, numpy, numba), not only tensors. Where /proc cannot be reset it falls back
  to ru_maxrss growth, which only shows new process-wide highs, and the JSON says so (`Memory.kind`).
- Peak: the machine's own roof in the precision a row computes in, "% peak" divides by it (`machine_peak`):
  the best of its backends at large shapes, in the same run (design.md section 6): a square torch.mm (the BLAS:
  MKL on x86, cuBLAS) and the same product as a 1x1 convolution (oneDNN on a CPU, cuDNN on a GPU). A roof that
  one backend alone sets can sit far below what another reaches on the same machine.
"""
from __future__ import annotations

import ctypes
import gc
import math
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_context(device: torch.device, dtype: str):
    """torch.autocast in `dtype`, or nothing for fp32 (used only for the rows that are not cast, see entries)."""
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


# ----------------------------------------------------------------------------------------------------------------
# Clocks

@dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float    # CPU seconds of the whole process (all its threads) during the call


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, Timing]:
    """Run fn() once: (its result, wall and process CPU seconds), the GPU synchronised before each clock read."""
    synchronize(device)
    # The CPU clock is read outside the wall-clock interval, so reading it adds nothing to the wall figure.
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return out, Timing(wall, cpu)


# ----------------------------------------------------------------------------------------------------------------
# FLOPs

def _mv_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * a.shape[0] * a.shape[1]


def _addbmm_flops(mats1: torch.Tensor, mats2: torch.Tensor) -> int:
    return 2 * mats1.shape[0] * mats1.shape[1] * mats1.shape[2] * mats2.shape[2]


# Matrix-vector and summed batched products, which torch's table leaves out: (op, formula over its two factors).
_EXTRA_FLOPS = {
    torch.ops.aten.mv: lambda args: _mv_flops(args[0], args[1]),
    torch.ops.aten.addmv: lambda args: _mv_flops(args[1], args[2]),
    torch.ops.aten.addbmm: lambda args: _addbmm_flops(args[1], args[2]),
    torch.ops.aten.dot: lambda args: 2 * args[0].numel(),
}


class FlopCount(TorchDispatchMode):
    """Sum of the FLOPs of every matmul and convolution dispatched while active.

    The per-op formulas are torch.utils.flop_counter's (those of FlopCounterMode), applied also to the in-place
    variants (addmm_, baddbmm_: FlopCounterMode counts them as zero, and the fast WaveGlow and student paths
    accumulate with them), plus matrix-vector products. No module tracking: counting stays cheap per op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        name = packet.__name__
        if name.endswith("_") and not name.startswith("_"):  # in place: same arithmetic as the plain op
            packet = getattr(torch.ops.aten, name[:-1], packet)
        formula = flop_registry.get(packet)
        if formula is not None:
            plain_kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            self.total += int(formula(*args, **plain_kwargs, out_val=out))
        elif packet in _EXTRA_FLOPS:
            self.total += int(_EXTRA_FLOPS[packet](args))
        return out


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn(): (its result, FLOPs of the matmuls and convolutions it ran)."""
    counter = FlopCount()
    with counter:
        out = fn()
    return out, counter.total


# ----------------------------------------------------------------------------------------------------------------
# Memory

class Memory:
    """Peak working memory of one call: start() before it, stop() after it (module docstring: what is read)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else self._cpu_kind()
        self._libc = None
        if device.type == "cpu":
            with suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    @staticmethod
    def _cpu_kind() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return "cpu peak RSS growth (VmHWM reset)"
        except OSError:
            return "cpu ru_maxrss growth (process-wide high-water mark)"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {key}")

    def _maxrss(self) -> int:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)  # freed heap back to the OS, so the growth below is this call's
        if "VmHWM" in self.kind:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status("VmRSS")
        else:
            self.base = self._maxrss()

    def stop(self) -> int:
        # Clamped at 0: the resident set can shrink during a call (pages of freed tensors returned).
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        peak = self._status("VmHWM") if "VmHWM" in self.kind else self._maxrss()
        return max(0, peak - self.base)


# ----------------------------------------------------------------------------------------------------------------
# The roof

PEAK_BACKENDS = ("torch.mm", "conv1d 1x1")


@dataclass(frozen=True)
class Peak:
    gflops: float                    # the best of by_backend: the roof
    by_backend: dict[str, float]     # GFLOP/s of each backend's best run


def machine_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> Peak:
    """The roof the rows are held to: the best GFLOP/s of any backend (PEAK_BACKENDS) on a large square product
    [n, n] x [n, n] on `device` in `dtype`, each backend timed several times, taking turns, its best run kept."""
    n = (8192 if not quick else 4096) if device.type == "cuda" else (1024 if quick else 2048)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    weight, signal = a[:, :, None], b[None]  # conv1d: [n out, n in, 1] over [1, n in, n steps], the same product
    calls = {"torch.mm": lambda: torch.mm(a, b), "conv1d 1x1": lambda: torch.nn.functional.conv1d(signal, weight)}
    best = dict.fromkeys(calls, math.inf)
    with torch.no_grad():
        for i in range(3 if quick else 5):
            for name, call in calls.items():
                synchronize(device)
                t0 = time.perf_counter()
                call()
                synchronize(device)
                if i:  # the first call pays for thread start-up and kernel selection
                    best[name] = min(best[name], time.perf_counter() - t0)
    by_backend = {name: 2.0 * n ** 3 / t / 1e9 for name, t in best.items()}
    return Peak(max(by_backend.values()), by_backend)
