"""What the benchmark prints and writes: the markdown table, the ratios, the JSON and the plot.

The columns:
- samples/s: audio samples produced per wall second (batched: all utterances together).
  RTF = wall seconds / audio seconds produced (< 1 is faster than real time); x real time = 1 / RTF.
- samples/CPU-s (--cpu-time; always in the JSON): samples per second of the process's CPU time, all threads.
- speed-up: samples/s over the cached WaveNet's at the same length (or its longest, where it was capped).
- MFLOP/sample: counted (measure.py), divided by the audio samples of the call.
- GFLOP/s = FLOPs/sample x samples/s; % peak divides it by the peak this run measured on this device in the
  precision the row computes in: the best of torch.mm and a 1x1 convolution at a large shape (measure.py).
- peak mem: working memory of the call above what was resident before it (measure.py says how it is read).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .entries import ENTRIES, ENTRY_BY_NAME, REFERENCE
from .results import Row
from .settings import Settings


def device_description(device: torch.device) -> str:
    """The device a run timed: the GPU's name, or the CPU's model name and its logical CPUs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def format_table(rows: Sequence[Row], cpu_time: bool = False) -> str:
    header = ["model", "parameters", "MFLOP/sample", "length s", "median s", "samples/s", "RTF", "x real time",
              "speed-up vs cached", "GFLOP/s", "% peak", "peak mem MiB"]
    if cpu_time:
        header.insert(header.index("samples/s") + 1, "samples/CPU-s")
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    for r in rows:
        label = r.label + (" *" if r.note.startswith("naive") else "")
        cells = [label, f"{r.parameters / 1e6:.2f} M", _fmt(r.flops_per_sample / 1e6), f"{r.length_s:.2f}",
                 _fmt(r.median_s), _fmt(r.samples_per_s), _fmt(r.rtf), _fmt(r.x_real_time),
                 _fmt(r.speedup_vs_cached) + ("" if r.speedup_ref_length_s in (None, r.length_s) else " †"),
                 _fmt(r.gflops), _fmt(r.pct_peak, 2), f"{r.peak_mem_bytes / 2**20:.1f}"]
        if cpu_time:
            cells.insert(header.index("samples/CPU-s"), _fmt(r.samples_per_cpu_s))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_speedups(rows: Sequence[Row]) -> None:
    """samples/s over the cached WaveNet's at the same length; where the cached row was capped (--cap, --ar-max),
    over its longest one: its samples/s hardly depends on the length (a fixed cost per sample)."""
    refs = sorted((r for r in rows if r.model == REFERENCE), key=lambda r: r.length_s)
    if not refs:
        return
    for r in rows:
        ref = next((c for c in refs if abs(c.length_s - r.length_s) < 1e-9), None)
        if ref is None and r.length_s > refs[-1].length_s:
            ref = refs[-1]
        if ref is not None:
            r.speedup_vs_cached = r.samples_per_s / ref.samples_per_s
            r.speedup_ref_length_s = ref.length_s


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """The ratios the model issues ask for, where the rows to form them were run."""
    by = {(r.model, round(r.length_s, 3)): r for r in rows}
    out = []
    for r in rows:
        if r.model == "wavenet_naive":
            c = by.get(("wavenet_cached", round(r.length_s, 3)))
            if c is not None:
                out.append(f"WaveNet cached / naive at {r.length_s:.2f} s: {c.samples_per_s / r.samples_per_s:,.1f}x")
    for r in rows:
        if r.model in ("student", "waveglow", "wavenet_batched") and r.speedup_vs_cached is not None:
            against = ("" if r.speedup_ref_length_s == r.length_s
                       else f" (cached WaveNet at {r.speedup_ref_length_s:.2f} s)")
            out.append(f"{r.label} / WaveNet cached at {r.length_s:.2f} s{against}: {r.speedup_vs_cached:,.1f}x")
    for r in rows:
        if r.model == "waveglow_nvidia":
            w = by.get(("waveglow", round(r.length_s, 3)))
            if w is not None:
                ours, theirs = w.label, r.label
                if w.dtype != r.dtype:
                    ours, theirs = f"{ours} ({w.dtype})", f"{theirs} ({r.dtype})"
                out.append(f"{ours} / {theirs} at {r.length_s:.2f} s: {w.samples_per_s / r.samples_per_s:,.2f}x")
    for r in rows:
        if r.model == "waveglow_source":
            w = by.get(("waveglow", round(r.length_s, 3)))
            if w is not None:
                out.append(f"{r.label} at {r.length_s:.2f} s: {100 * w.samples_per_s / r.samples_per_s:.1f}% of "
                           f"the {w.label} row's time, which includes it")
    return out


def waveglow_backends() -> dict[str, dict]:
    """The sampling backend WaveGlow chose for each shape class this run met (wavflow.models.waveglow)."""
    if "wavflow.models.waveglow" not in sys.modules:
        return {}
    from ..models.waveglow_sampling import sampling_backend_choices

    return {k: dataclasses.asdict(v) for k, v in sampling_backend_choices().items()}


def print_report(settings: Settings, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    print(f"wavflow benchmark: {meta['machine']}, device {meta['device']}, {settings.dtype}, "
          f"{meta['torch_threads']} torch threads, torch {meta['torch']}")
    peaks = [f"{meta['peak_gflops_by_dtype'][k]:,.0f} GFLOP/s {k} ("
             + ", ".join(f"{backend} {v:,.0f}" for backend, v in by.items()) + ")"
             for k, by in meta["peak_gflops_by_backend"].items()]
    print(f"peak measured: {'; '.join(peaks)}; mel: {meta['mel']}; median of {settings.repeats} runs after a warm-up")
    for shape, choice in meta["waveglow_backends"].items():
        timed = ", ".join(f"{b} {t * 1e3:,.1f} ms" for b, t in choice["seconds"].items())
        print(f"WaveGlow sampling backend: {choice['backend']} ({choice['how']}{': ' + timed if timed else ''}; "
              f"{shape})")
    if settings.dtype != "fp32":
        print("precision: " + ", ".join(f"{label} {dtype}" for label, dtype in sorted({(r.label, r.dtype)
                                                                                      for r in rows})))
    for family, m in meta["models"].items():
        print(f"{family}: {m['source']}, {m['parameters']:,} parameters")
    print()
    print(format_table(rows, settings.cpu_time))
    print()
    if any(r.note.startswith("naive") for r in rows):
        print("* naive WaveNet recomputes the receptive field for every sample (O(T x receptive field)); it runs at "
              "--naive-length only (--naive-all for every length); past the first receptive field its cost per "
              "sample does not depend on the length, so its ratio to the cached row holds at any length.")
    if any(r.speedup_ref_length_s not in (None, r.length_s) for r in rows):
        print("† over the cached WaveNet at the longest length it ran (capped below): its samples/s hardly depends "
              "on the length.")
    for name, cap in settings.caps.items():
        if any(e.name == name for e in settings.entries):
            print(f"{ENTRY_BY_NAME[name].label} ran only at lengths up to {cap:g} s (--cap / --ar-max).")
    for line in summary_lines(rows):
        print(line)


def write_json(path: str, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))


def write_plot(path: str, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    lengths = sorted({round(r.length_s, 2) for r in rows})
    for entry in ENTRIES:
        mine = sorted((r for r in rows if r.model == entry.name), key=lambda r: r.length_s)
        if not mine:
            continue
        label = mine[0].label
        if mine[0].batch > 1:
            label += f" ({mine[0].batch} utterances per call)"
        if mine[0].note.startswith("naive") and len(mine) == 1:
            label += " (one short length only)"
        ax.plot([r.length_s for r in mine], [r.median_s for r in mine], marker="o", label=label)
    lo, hi = min(lengths), max(lengths)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="real time (wall = audio)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lengths, [f"{float(f'{v:.2g}'):g}" for v in lengths])  # 4.005 s (whole frames) reads 4
    ax.minorticks_off()
    ax.set_xlabel("audio length per utterance (s)")
    ax.set_ylabel("wall time, median (s)")
    ax.set_title(f"wavflow sampling time: {meta['machine']}\n{meta['device']}, {meta['dtype']}, "
                 f"torch threads: {meta['torch_threads']}", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
