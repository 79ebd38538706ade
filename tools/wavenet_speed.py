"""Samples/s of WaveNet generation (default config, Gaussian), cached vs naive, batch 1 and batch 16.

    python tools/wavenet_speed.py [--seconds 1.0] [--threads 2] [--naive-seconds 0.1] [--batch 16]

design.md section 6 protocol: one warm-up, median of 3 timed runs. Naive costs the same per sample at any length past the
receptive field (it recomputes 505 positions for every sample), so it is timed on a shorter stretch by default.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from wavflow.models.wavenet import WaveNet, WaveNetConfig


def samples_per_second(model: WaveNet, seconds: float, batch: int, method: str,
                       repeats: int = 3) -> tuple[float, float]:
    """(samples/s by the wall clock, samples per CPU-second of this process), each from the median run.

    On a CPU shared with other jobs the wall figure drops with the load; the CPU-time figure shows what the
    code does with the cycles it gets (it equals the wall figure on an idle machine, single-threaded)."""
    hop, sr = model.mel_config.hop_length, model.mel_config.sample_rate
    frames = max(1, round(seconds * sr / hop))
    mel = torch.randn(batch, model.mel_config.n_mels, frames, generator=torch.Generator().manual_seed(0)) - 5
    model.generate(mel[..., :1], method=method, progress=False)  # warm-up (compiles / loads the numba cache)
    times, cpu = [], []
    for i in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model.generate(mel, method=method, generator=torch.Generator().manual_seed(i), progress=False)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    n = batch * frames * hop
    return n / statistics.median(times), n / statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--naive-seconds", type=float, default=0.1)
    ap.add_argument("--naive-repeats", type=int, default=1, help="naive costs ~500x cached per sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--output", default="gaussian")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = WaveNet(WaveNetConfig(output=args.output)).eval()
    print(f"torch threads {args.threads}, cpu, float32, {args.output} output (wall | per CPU-second)")
    cached = samples_per_second(model, args.seconds, 1, "cached")
    print(f"cached  batch 1   {args.seconds:.2f} s audio: {cached[0]:9.0f} | {cached[1]:9.0f} samples/s", flush=True)
    if args.batch > 1:
        batched = samples_per_second(model, args.seconds, args.batch, "cached")
        print(f"cached  batch {args.batch:<3d} {args.seconds:.2f} s audio: {batched[0]:9.0f} | {batched[1]:9.0f} "
              f"samples/s aggregate", flush=True)
    if args.naive_seconds > 0:
        naive = samples_per_second(model, args.naive_seconds, 1, "naive", repeats=args.naive_repeats)
        print(f"naive   batch 1   {args.naive_seconds:.2f} s audio: {naive[0]:9.1f} | {naive[1]:9.1f} samples/s",
              flush=True)
        print(f"cached / naive: {cached[0] / naive[0]:.0f}x (wall), {cached[1] / naive[1]:.0f}x (CPU time)")


if __name__ == "__main__":
    main()
