"""CPU sampling speed of the default (87.9M-parameter) WaveGlow: wavflow's `infer` vs NVIDIA's algorithm.

    python benchmarks/waveglow_cpu.py [--seconds 1 2] [--threads 2] [--repeats 3]

Random weights (speed does not depend on them), fp32, weight norm removed for both. "nvidia" replays the op
sequence of NVIDIA/waveglow's glow.py `infer` on the same weights (ConvTranspose1d upsampler, per-flow fused
cond conv, conv1d layers, torch.cat), so the two are compared in one process on one mel. Warm-up once, then
the median of --repeats runs (design.md section 6). On a shared machine, run it a few times: wall-clock figures then
depend on the other jobs, so the CPU seconds the process used per second of audio are printed too (with
--threads 1 they give a per-core throughput that other jobs barely disturb).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from wavflow.models.waveglow import WaveGlow, WaveGlowConfig


def nvidia_infer(model: WaveGlow, mel: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """NVIDIA's glow.py WaveGlow.infer, op for op, reading wavflow's (weight-norm-free) modules."""
    cfg = model.config
    up = model.upsample
    spect = F.conv_transpose1d(mel, up.weight, up.bias, stride=up.stride)
    spect = spect[:, :, : -(up.kernel_size[0] - up.stride[0])]
    spect = spect.unfold(2, cfg.n_group, cfg.n_group).permute(0, 2, 1, 3)
    spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
    n_rem = cfg.remaining_channels(cfg.n_flows - 1)
    audio = sigma * z[:, cfg.n_group - n_rem:]
    e = cfg.n_early_size
    for k in reversed(range(cfg.n_flows)):
        wn = model.coupling[k].net
        n_half = audio.size(1) // 2
        audio_0, audio_1 = audio[:, :n_half], audio[:, n_half:]
        x = wn.start(audio_0)
        output = torch.zeros_like(x)
        cond = wn.cond_layer(spect)
        c = wn.channels
        for i in range(wn.n_layers):
            a = wn.in_layers[i](x) + cond[:, 2 * c * i: 2 * c * (i + 1)]
            acts = torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])
            rs = wn.res_skip_layers[i](acts)
            if i < wn.n_layers - 1:
                x = x + rs[:, :c]
                output = output + rs[:, c:]
            else:
                output = output + rs
        out = wn.end(output)
        s, b = out[:, n_half:], out[:, :n_half]
        audio_1 = (audio_1 - b) / torch.exp(s)
        audio = torch.cat([audio_0, audio_1], 1)
        w_inv = torch.linalg.inv(model.convinv[k].weight.float())[..., None]
        audio = F.conv1d(audio, w_inv)
        if k % cfg.n_early_every == 0 and k > 0:
            j = k // cfg.n_early_every - 1
            audio = torch.cat((sigma * z[:, j * e:(j + 1) * e], audio), 1)
    return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1)


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-nvidia", action="store_true", help="time wavflow only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = WaveGlow(WaveGlowConfig()).eval()
    with torch.no_grad():  # non-trivial couplings (the end convs start at zero)
        for c in model.coupling:
            c.net.end.weight.normal_(0, 0.01)
    model.remove_weight_norm()
    sr, hop = model.mel_config.sample_rate, model.mel_config.hop_length
    print(f"WaveGlow default config, {sum(p.numel() for p in model.parameters()):,} parameters, fp32, "
          f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    for seconds in args.seconds:
        frames = max(1, round(seconds * sr / hop))
        mel = torch.randn(1, model.mel_config.n_mels, frames)
        z = torch.randn(1, model.config.n_group, frames * hop // model.config.n_group)
        n = frames * hop
        with torch.inference_mode():
            ours = model.infer(mel, z=z, sigma=0.6)
            t_ours, c_ours = median_time(lambda: model.infer(mel, z=z, sigma=0.6), args.repeats)
            line = (f"{n / sr:5.2f} s audio: wavflow {n / t_ours:7.0f} samples/s (RTF {t_ours * sr / n:.2f}, "
                    f"{c_ours * sr / n:.2f} CPU-s per audio-s)")
            if not args.no_nvidia:
                ref = nvidia_infer(model, mel, z, 0.6)
                t_ref, c_ref = median_time(lambda: nvidia_infer(model, mel, z, 0.6), args.repeats)
                diff = (ours - ref).abs().max().item()
                line += (f" | nvidia-style {n / t_ref:7.0f} samples/s (RTF {t_ref * sr / n:.2f}, "
                         f"{c_ref * sr / n:.2f} CPU-s per audio-s) | speed-up x{t_ref / t_ours:.2f} wall, "
                         f"x{c_ref / c_ours:.2f} CPU | max |diff| {diff:.1e}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
