"""Parallel sampling speed of the default (ClariNet-size) IAF student vs the WaveNet teacher's cached generation.

    python benchmarks/student_speed.py [--seconds 1 4] [--threads 2] [--device cpu|cuda] [--teacher-seconds 0.1]

Random weights (speed does not depend on them; the flows' zero-initialised output convs get small random
weights so no work is skipped), fp32, batch 1, one mel input shared by both models in one process (design.md section 6):
warm-up once, then the median of --repeats runs, synchronising the GPU before reading the clock. The teacher
(design.md section 4 default, Gaussian) generates --teacher-seconds of audio with its cached method; its per-sample cost does
not depend on the length, so its samples/s is compared with the student's at every length. Also prints the
student's samples per CPU-second (process time), which on a machine shared with other jobs says more about the
code than wall-clock time does.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from wavflow.models.student import IAFStudent, StudentConfig
from wavflow.models.wavenet import WaveNet, WaveNetConfig

TARGET = 22050  # samples/s: real time at 22.05 kHz (issue 5's CPU target at 4 s of audio)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--teacher-seconds", type=float, default=0.1, help="0: skip the teacher")
    p.add_argument("--layout", choices=["clarinet", "parallel_wavenet"], default="clarinet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = StudentConfig() if args.layout == "clarinet" else StudentConfig.parallel_wavenet()
    student = IAFStudent(config).eval()
    with torch.no_grad():
        for f in student.flows:
            f.out.weight.normal_(0, 0.01)
    student.to(device)
    n_params = sum(p.numel() for p in student.parameters())
    print(f"student ({args.layout}): {n_params:,} parameters, {len(config.flow_layers)} flows x "
          f"{config.flow_layers} layers, {config.residual_channels} channels; device {device}, "
          f"torch threads {torch.get_num_threads()}, fp32, batch 1")
    hop, sr = student.mel_config.hop_length, student.mel_config.sample_rate

    teacher_rate = None
    if args.teacher_seconds > 0:
        teacher = WaveNet(WaveNetConfig()).eval().to(device)
        frames = max(1, round(args.teacher_seconds * sr / hop))
        mel_t = torch.randn(1, 80, frames, device=device) - 5
        method = "cached"
        with torch.inference_mode():
            wall, _ = timed(lambda: teacher.generate(mel_t, method=method, progress=False), device, args.repeats)
        teacher_rate = frames * hop / wall
        print(f"teacher (design.md section 4 default, Gaussian) cached generation: {frames * hop} samples in {wall:.3f} s "
              f"-> {teacher_rate:,.0f} samples/s")

    for seconds in args.seconds:
        frames = max(1, round(seconds * sr / hop))
        mel = torch.randn(1, 80, frames, device=device) - 5
        g = torch.Generator(device="cpu").manual_seed(0)
        with torch.inference_mode():
            wall, cpu = timed(lambda: student.infer(mel, generator=g), device, args.repeats)
        n = frames * hop
        line = (f"student {seconds:g} s ({n} samples): {wall:.3f} s -> {n / wall:,.0f} samples/s, RTF {wall / (n / sr):.3f}, "
                f"{n / cpu:,.0f} samples per CPU-second; real time = {TARGET:,}/s: x{n / wall / TARGET:.2f}")
        if teacher_rate:
            line += f"; x{n / wall / teacher_rate:,.0f} the cached teacher"
        if device.type == "cuda":
            line += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
