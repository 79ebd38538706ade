"""Adaptive CPU threads (train.adaptive_threads): train on every core the rest of the machine leaves idle, and on
one thread the moment it wants a core back.

A small model's step on two threads takes about half the wall time of one, but only while both cores are free: a
training run at low priority (`nice`) that shares a core with other work waits at every step for the thread the
scheduler starves, and one step can take ten times longer than on one thread. So the governor

- measures, over windows of `period` seconds on one thread, how many cores the *other* processes kept busy
  (/proc/stat's busy time less this process's own CPU time), and takes `1 + free cores` threads (at most
  `most`) when at least one core stayed idle;
- goes back to one thread after any step on several threads that took longer than `slow` times the median
  one-thread step (another process took a core mid-step), and after a window in which the other processes used
  more than `busy` of a core or the median step took more than `gain` times the one-thread median (the threads
  did not pay).

Thread counts change only between steps. The reductions of a step may split differently on another thread
count, so a run that changes threads is not bit-for-bit reproducible on resume. After going back to one thread
the governor waits `hold` windows before it tries more again, so a machine that is busy on and off does not make
it switch at every window. Where /proc/stat cannot be read (not Linux) it keeps one thread, the choice that never
stalls.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")


def read_busy_seconds(path: Path = PROC_STAT) -> float | None:
    """CPU-seconds every core of the machine has spent busy since boot (user, nice, system, irq, softirq,
    steal), from the first line of /proc/stat; None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: idle and iowait are the only idle columns
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks[:3]) + sum(ticks[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Sets torch's intra-op threads between 1 and `most` from what the other processes leave idle.

    Call `after_step(seconds)` after each training step with its wall time; `threads` is the count in use.
    `busy_seconds`, `own_seconds` and `clock` are injectable for tests (the machine's busy CPU-seconds, this
    process's CPU-seconds, a wall clock); `set_threads` defaults to torch.set_num_threads.
    """

    def __init__(self, most: int, period: float = 10.0, slow: float = 1.5, busy: float = 0.25, gain: float = 0.8,
                 hold: int = 6, cores: int | None = None,
                 busy_seconds: Callable[[], float | None] = read_busy_seconds,
                 own_seconds: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.most = max(1, most)
        self.period, self.slow, self.busy, self.gain, self.hold = period, slow, busy, gain, hold
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.cores = cores
        self._busy_seconds, self._own_seconds, self._clock, self._set = busy_seconds, own_seconds, clock, set_threads
        self.enabled = self.most > 1 and busy_seconds() is not None
        self.threads = 1
        self._set(1)
        self.one_thread = deque(maxlen=50)  # the latest one-thread step times
        self.window: list[float] = []       # this window's step times
        self.changes = 0                    # how often the count changed
        self.waiting = 0                    # windows still to wait before trying more threads
        self._start_window()

    def _start_window(self) -> None:
        self.window = []
        self._t0, self._busy0, self._own0 = self._clock(), self._busy_seconds(), self._own_seconds()

    def _switch(self, threads: int) -> None:
        if threads < self.threads:
            self.waiting = self.hold
        if threads != self.threads:
            self.threads = threads
            self._set(threads)
            self.changes += 1
        self._start_window()

    def others(self, wall: float) -> float | None:
        """Cores the other processes kept busy over the window (of `wall` seconds) so far."""
        busy = self._busy_seconds()
        if busy is None or self._busy0 is None or wall <= 0:
            return None
        return max(0.0, (busy - self._busy0) - (self._own_seconds() - self._own0)) / wall

    def after_step(self, seconds: float) -> int:
        """Record a step's wall time; returns the thread count for the next step."""
        if not self.enabled:
            return self.threads
        self.window.append(seconds)
        if self.threads == 1:
            self.one_thread.append(seconds)
        elif self.one_thread and seconds > self.slow * statistics.median(self.one_thread):
            self._switch(1)  # another process took a core in the middle of the step
            return self.threads
        wall = self._clock() - self._t0
        if wall < self.period:
            return self.threads
        others = self.others(wall)
        if others is None:
            self._start_window()
            return self.threads
        if self.threads == 1:
            if self.waiting:
                self.waiting -= 1
                self._start_window()
                return self.threads
            free = self.cores - 1 - others
            self._switch(min(self.most, 1 + int(free + 0.2)) if others < self.busy else 1)
        elif others > self.busy or (self.one_thread and statistics.median(self.window)
                                    > self.gain * statistics.median(self.one_thread)):
            self._switch(1)
        else:
            self._start_window()
        return self.threads
