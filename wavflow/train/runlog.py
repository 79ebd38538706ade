"""What a run reports: log.jsonl (one JSON object a line) and TensorBoard, written by rank 0 alone, and its
progress on stderr (a tqdm bar on a terminal, a line per log record otherwise).

Training steps gather into a window; closing it writes one record of their means over every process, with the
rates (steps/s, audio samples/s) and the process's audio samples and CPU seconds so far. The run's last record is
its summary: how it ended, its wall, training and CPU seconds, and its throughput.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .runtime import Runtime

LOG = "log.jsonl"


class RunLog:
    """The log of the run in `out_dir` on this process of `runtime` (collectives on `device`)."""

    def __init__(self, out_dir: Path, runtime: Runtime, device: torch.device, cpu_started_at: float = 0.0):
        self.out_dir, self.runtime, self.device = out_dir, runtime, device
        self.cpu_started_at = cpu_started_at  # run/cpu_seconds is the process's CPU time since then
        self.writer: Any = None  # a SummaryWriter, on rank 0 with train.tensorboard
        self.bar: Any = None     # the tqdm bar, on rank 0 when stderr is a terminal
        self.lines = False       # progress as plain lines instead
        self.max_steps = 0
        self.window: dict[str, float] = {}  # sums over the window's steps
        self.steps = 0
        self.tick = time.perf_counter()
        self.batch_samples = 0   # audio samples in the last step's batch on this process
        self.samples = 0         # audio samples of every window closed so far, over every process

    @property
    def tensorboard(self) -> bool:
        return self.writer is not None

    def open_tensorboard(self, step: int) -> None:
        """Rank 0: TensorBoard in out_dir/tb; purge_step drops the events a killed run logged after its last
        checkpoint (at `step`)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=step or None)

    def open_progress(self, max_steps: int, step: int, enabled: bool) -> None:
        """Rank 0 with train.progress: a bar from `step` to `max_steps` on a terminal, plain lines elsewhere."""
        self.max_steps = max_steps
        if not (self.runtime.main and enabled):
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=step, unit="step", dynamic_ncols=True)
        else:
            self.lines = True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def write(self, record: dict[str, Any]) -> None:
        """One record (its "step" included) to log.jsonl, and its numbers to TensorBoard; rank 0 only."""
        if not self.runtime.main:
            return
        with open(self.out_dir / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def add_audio(self, tag: str, audio: torch.Tensor, step: int, sample_rate: int) -> None:
        if self.writer is not None:
            self.writer.add_audio(tag, audio, step, sample_rate=sample_rate)

    def start_window(self) -> None:
        self.window, self.steps, self.tick = {}, 0, time.perf_counter()

    def add_step(self, values: dict[str, float], batch_samples: int) -> None:
        """A step's scalars (its "loss" first) into the window; `batch_samples`: audio samples in its batch."""
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0.0) + value
        self.steps += 1
        self.batch_samples = batch_samples
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)

    def close_window(self, step: int, lr: float) -> None:
        """One record of the window's means over every process (a collective: every process calls it at the same
        step), with the learning rate `lr` and the window's rates; then a new window starts."""
        elapsed = time.perf_counter() - self.tick
        world = self.runtime.world_size
        window = self.runtime.all_mean(self.window, self.device)
        self.samples += self.steps * self.batch_samples * world
        # run/samples and run/cpu_seconds so far, as the summary gives them at the end: the account of a process
        # that is killed before its summary
        record = {"step": step, **{f"train/{key}": value / self.steps for key, value in window.items()},
                  "train/lr": lr, "train/steps_per_s": self.steps / elapsed,
                  "train/samples_per_s": self.steps * self.batch_samples * world / elapsed,
                  "run/samples": self.samples, "run/cpu_seconds": time.process_time() - self.cpu_started_at}
        if self.device.type == "cuda":
            record["train/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.write(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['train/loss']:.4f}", samples_s=f"{record['train/samples_per_s']:.3g}")
        elif self.lines:
            print(f"step {step}/{self.max_steps}  loss {record['train/loss']:.4f}  "
                  f"|g| {record['train/grad_norm']:.3g}  {record['train/steps_per_s']:.2f} steps/s  "
                  f"{record['train/samples_per_s']:,.0f} samples/s"
                  + (f"  {record['train/threads']:.1f} threads" if "train/threads" in record else ""),
                  file=sys.stderr, flush=True)
        self.start_window()

    def validation(self, step: int, nll: float, loss: float | None, given_pitch: float | None = None) -> None:
        """A validation NLL (and a model with a source's NLL given the recordings' pitch), and the training
        `loss` beside it on the bar."""
        self.write({"step": step, "valid/nll": nll,
                    **({} if given_pitch is None else {"valid/nll_given_pitch": given_pitch})})
        if self.bar is not None:
            self.bar.set_postfix(loss="-" if loss is None else f"{loss:.4f}", valid_nll=f"{nll:.4f}")

    def summary(self, step: int, end: str, steps: int, wall_seconds: float, step_seconds: list[float],
                about: dict[str, Any]) -> None:
        """The run's last record: how it ended (`end`), its `steps` in this run, its wall time, its training and
        CPU seconds, and its throughput in audio samples per second (all steps, and without the first, which
        includes compilation and warm-up); `about` adds the run's settings (batch, device, ...) as run/KEY."""
        world = self.runtime.world_size
        samples = steps * self.batch_samples * world
        train_seconds = sum(step_seconds)
        steady = step_seconds[1:]
        self.write({
            "step": step, "run/end": end, "run/steps": steps,
            "run/wall_seconds": wall_seconds, "run/train_seconds": train_seconds,
            "run/cpu_seconds": time.process_time() - self.cpu_started_at,
            "run/samples": samples,
            "run/samples_per_s": samples / train_seconds if train_seconds else None,
            "run/steady_samples_per_s": (len(steady) * self.batch_samples * world / sum(steady)
                                         if steady and sum(steady) else None),
            **{f"run/{key}": value for key, value in about.items()},
        })
