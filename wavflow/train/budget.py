"""The run's time budget (train.max_minutes, --max-minutes): a deadline on the wall clock or on the process's CPU
time (train.budget_clock), and the durations the run measured, from which it judges whether one more step, a
validation and the closing saves still fit before it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from .runtime import Runtime


class BudgetClock:
    """The deadline of a run started at `started_at` (seconds since the epoch) with a budget of `max_minutes`
    (0: none) counted on `clock`, and the longest step, validation and saves measured so far.

    `cpu_started_at` is the process's CPU time when the run started (0: at the process's start).
    `parameters` (the model's size) estimates a save's duration until one is timed; `validates` says whether
    ending the run includes a validation and a best.pt.
    """

    def __init__(self, max_minutes: float, clock: Literal["wall", "cpu"], started_at: float, parameters: int,
                 validates: bool, cpu_started_at: float = 0.0):
        self.max_minutes = max_minutes
        self.cpu = clock == "cpu"
        # The wall clock counts from `started_at`, the CPU clock from `cpu_started_at`: 0 (the process's start) for
        # the command line, the CPU time already spent when a run starts inside a longer-lived process.
        start = cpu_started_at if self.cpu else started_at
        self.deadline = start + 60.0 * max_minutes if max_minutes else None
        self.parameters = parameters
        self.validates = validates
        self.step_seconds: list[float] = []  # each step's wall time in this process
        self.longest: dict[str, float] = {}  # "valid", "best", "last": the longest such duration so far

    def now(self) -> float:
        """What the budget counts: wall-clock time, or this process's CPU time, which a busy machine does not
        eat into."""
        return time.process_time() if self.cpu else time.time()

    @contextmanager
    def timing(self, what: Literal["step", "valid", "best", "last"]) -> Iterator[None]:
        """Measure the block's wall time as a step (kept in `step_seconds`), a validation, a best.pt or a
        last.pt save (the longest kept); a block that raises is not counted."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if what == "step":
            self.step_seconds.append(seconds)
        else:
            self.longest[what] = max(self.longest.get(what, 0.0), seconds)

    def step_estimate(self) -> float:
        """The next step's duration: the longest of the last few (the first, which compiles, once others exist)."""
        times = self.step_seconds[1:] or self.step_seconds
        return max(times[-5:]) if times else 0.0

    def reserve(self) -> float:
        """What ending the run costs: a validation, best.pt and last.pt, measured, or estimated from the model's
        size (float32 weights and Adam's two moments, synced to disk at a conservative 100 MB/s) until a save has
        been timed."""
        last = self.longest.get("last", 1.0 + 12 * self.parameters / 100e6)
        best = self.longest.get("best", 0.5 + 4 * self.parameters / 100e6)
        valid = self.longest.get("valid", 0.0) + best if self.validates else 0.0
        return valid + last

    def out_of_time(self, runtime: Runtime, device: torch.device) -> bool:
        """Would one more step leave too little time to validate and save before the deadline? Every process
        must agree (a collective on `device`): the run stops when any of them is late. Durations are measured in
        wall time, which is never shorter than CPU time, so a CPU-time budget is kept too. False without a
        budget, on every process alike."""
        if self.deadline is None:
            return False
        # The margin leaves the process time to exit (interpreter and CUDA teardown) inside the budget.
        margin = 1.0 + 0.01 * 60.0 * self.max_minutes
        late = self.now() + self.step_estimate() + 1.25 * self.reserve() + margin > self.deadline
        return bool(runtime.any(torch.tensor([1.0 if late else 0.0]), device)[0])
