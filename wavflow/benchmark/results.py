"""What one row of the benchmark measured (`Row`): made by runner.py, printed and written by report.py.

A module of its own so that both import it and neither imports the other's way back: the runner imports the
report (the speed-up column, the run's record), the report imports only this.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    model: str
    label: str
    family: str
    source: str
    parameters: int
    length_s: float               # per utterance
    batch: int
    samples: int                  # produced per call (all utterances)
    times_s: list[float]
    median_s: float
    samples_per_s: float
    cpu_times_s: list[float]      # process CPU seconds of the same calls as times_s
    samples_per_cpu_s: float      # samples / median CPU seconds
    rtf: float                    # wall s / audio s produced
    x_real_time: float
    speedup_vs_cached: float | None
    speedup_ref_length_s: float | None    # length of the cached row divided by (differs where it was capped)
    flops_per_sample: float
    flops_method: str
    gflops: float
    pct_peak: float               # of peak_gflops
    peak_gflops: float            # the machine's measured peak (best backend) in the precision this row computes in
    peak_mem_bytes: int
    dtype: str
    note: str = ""
