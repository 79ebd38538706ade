"""The adaptive thread governor (train.adaptive_threads): more threads while the other cores are idle, one the
moment another process wants a core, no switching back and forth on a machine that is busy on and off.

The machine is simulated: a wall clock, the busy CPU-seconds /proc/stat would show and this process's CPU time
all advance as the test says, so every decision is checked exactly.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from wavflow.train.threads import ThreadGovernor, read_busy_seconds


class Machine:
    """Two cores; `others` cores busy with other processes; this process busy on `threads` cores while it steps."""

    def __init__(self, others: float = 0.0):
        self.now = 0.0
        self.busy = 1000.0
        self.own = 0.0
        self.others = others
        self.set_calls: list[int] = []

    def governor(self, **kw) -> ThreadGovernor:
        return ThreadGovernor(2, cores=2, busy_seconds=lambda: self.busy, own_seconds=lambda: self.own,
                              clock=lambda: self.now, set_threads=self.set_calls.append, **kw)

    def step(self, gov: ThreadGovernor, seconds: float) -> int:
        self.now += seconds
        own = seconds * gov.threads
        self.own += own
        self.busy += own + self.others * seconds
        return gov.after_step(seconds)


def run(machine: Machine, gov: ThreadGovernor, seconds: float, steps: int) -> list[int]:
    return [machine.step(gov, seconds) for _ in range(steps)]


def test_an_idle_core_is_taken_after_one_window():
    m = Machine(others=0.05)
    gov = m.governor(period=10.0)
    assert gov.threads == 1 and m.set_calls == [1]
    counts = run(m, gov, 0.8, 12)   # 9.6 s: the window is not over
    assert set(counts) == {1}
    assert m.step(gov, 0.8) == 2    # 10.4 s: the other core was idle
    assert m.set_calls == [1, 2]
    # Steps twice as fast on two threads: it stays there.
    assert set(run(m, gov, 0.45, 100)) == {2}
    assert gov.changes == 1


def test_a_busy_machine_keeps_one_thread():
    m = Machine(others=0.9)
    gov = m.governor(period=10.0)
    assert set(run(m, gov, 0.8, 200)) == {1}
    assert gov.changes == 0 and m.set_calls == [1]


def test_one_stalled_step_goes_back_to_one_thread_at_once_and_waits_before_trying_again():
    m = Machine(others=0.0)
    gov = m.governor(period=10.0, hold=3)
    run(m, gov, 0.8, 13)
    assert gov.threads == 2
    run(m, gov, 0.45, 5)
    assert gov.threads == 2
    # Another process takes a core: the next two-thread step stalls behind the starved thread.
    m.others = 1.0
    assert m.step(gov, 12.0) == 1
    # It left: still one thread for `hold` windows, then two again.
    m.others = 0.0
    counts = run(m, gov, 0.8, 13 * 3)
    assert set(counts) == {1}
    assert m.step(gov, 0.8) == 1     # the window is not over yet
    counts = run(m, gov, 0.8, 13)
    assert counts[-1] == 2
    assert gov.changes == 3


def test_threads_that_do_not_pay_are_given_up():
    m = Machine(others=0.0)
    gov = m.governor(period=10.0)
    run(m, gov, 0.8, 13)
    assert gov.threads == 2
    # Two threads no faster than 0.8 x one thread, with no other process to blame: back to one.
    counts = run(m, gov, 0.7, 15)
    assert counts[-1] == 1


def test_others_measured_on_two_threads_send_it_back():
    m = Machine(others=0.0)
    gov = m.governor(period=10.0)
    run(m, gov, 0.8, 13)
    assert gov.threads == 2
    m.others = 0.5  # half a core taken, not enough to stall a step past `slow`
    counts = run(m, gov, 0.5, 25)
    assert counts[-1] == 1


def test_without_proc_stat_it_keeps_one_thread(tmp_path):
    calls: list[int] = []
    gov = ThreadGovernor(2, cores=2, busy_seconds=lambda: None, set_threads=calls.append)
    assert not gov.enabled and calls == [1]
    for _ in range(100):
        assert gov.after_step(0.1) == 1


def test_read_busy_seconds(tmp_path: Path):
    import os

    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {hz} {2 * hz} {3 * hz} 999999 888888 {4 * hz} {5 * hz} {6 * hz} 0 0\ncpu0 1 2 3\n")
    assert read_busy_seconds(stat) == pytest.approx(21.0)
    assert read_busy_seconds(tmp_path / "missing") is None
    (tmp_path / "bad").write_text("intr 1 2 3\n")
    assert read_busy_seconds(tmp_path / "bad") is None
