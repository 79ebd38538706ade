"""Where a training process runs: its place in a torchrun job, its device, its random streams, the signals that
stop it and its exit status.

A plain `python -m wavflow.train` is a world of one process: every collective below is then a no-op, so the
trainer calls them unconditionally and reads the same in both cases.
"""
from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..device import resolve_device
from ..errors import WavflowError

PROG = "wavflow.train"
EXIT_DIVERGED = 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class Runtime:
    """This process's place in a (possibly one-process) run, and the collectives across its processes."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Runtime:
        # torchrun sets these; a plain `python -m wavflow.train` is a world of one.
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def start(self, device: str) -> None:
        """Join the process group: GPUs talk over NCCL, CPU processes over gloo."""
        if not self.distributed:
            return
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend)

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Each value summed over the processes, in float64; the collective runs on `device` (NCCL needs a GPU)."""
        if not self.distributed:
            return list(values)
        sums = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        return sums.tolist()

    def all_mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Each value averaged over the processes (logged figures cover every process's batches)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        sums = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        return dict(zip(keys, (sums / self.world_size).tolist(), strict=True))

    def any(self, flags: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Flags (0/1, on the CPU) set on any process."""
        if not self.distributed:
            return flags
        flags = flags.to(device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags.cpu()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


class StopSignals:
    """SIGINT and SIGTERM, while installed (`with`), ask the run to stop after the step in progress: `signum` is the
    signal received (None until one is; another process's stop may set it too), `announce(signum)` runs on the
    first, and a second SIGINT aborts at once (KeyboardInterrupt)."""

    def __init__(self, announce: Callable[[int], None]):
        self.signum: int | None = None
        self.announce = announce
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        self._previous = {signum: signal.signal(signum, self._handle) for signum in EXIT_SIGNAL}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker (forked with this handler): the main process decides when to stop
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now; last.pt is still the previous complete file
        self.signum = signum
        self.announce(signum)


def pick_device(name: str, runtime: Runtime) -> torch.device:
    """train.device as a torch device (wavflow.device.resolve_device); under torchrun each process takes the GPU
    of its local rank."""
    try:
        device = resolve_device(name)
    except WavflowError as e:
        raise WavflowError(f"train.device: {e}") from None
    if device.type == "cuda" and (runtime.distributed or device.index is None):
        device = torch.device("cuda", runtime.local_rank if runtime.distributed else torch.cuda.current_device())
    return device


def choose_kernels(deterministic: bool, device: torch.device) -> None:
    """train.deterministic: kernels that give the same bits every run (bit-for-bit resume on GPU), else the
    fastest ones cuDNN finds."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: the fastest kernels are found once


# ----------------------------------------------------------------------------------------------------------------
# Random streams: what a bit-for-bit resume must capture and put back (design.md section 7, "rng")

def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from, as plain tensors and numbers (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_process(seed: int, rank: int, offset: int = 0) -> None:
    """Per-process streams for the steps themselves (e.g. a student's noise), distinct across ranks."""
    seed_everything(seed + 1_000_003 * rank + offset + 1)


@contextmanager
def separate_rng(device: torch.device) -> Iterator[None]:
    """Run a block (validation, audio samples) without moving the training run's random streams."""
    devices = [device] if device.type == "cuda" else []
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        yield
    random.setstate(py)
    np.random.set_state(npy)
