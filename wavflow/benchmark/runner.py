"""The run: warm every row up, time the rows of one length round-robin, and turn the times into table rows
(`run`: the whole benchmark, which wavflow.commands.benchmark prints and writes with report.py).

Protocol (design.md section 6). Weight norm is folded into the weights first, as for any inference. At each
length every parallel model is warmed up once at that length (allocator and oneDNN/cuDNN plans are
shape-specific); an autoregressive generator does the same work per sample at any length, so it is warmed up
once on a short clip (which also compiles the numba loop; naive WaveNet: its first 64 samples). Then the rows
are timed round-robin, `--repeats` times (>= 3), and the median is quoted: interleaving spreads a neighbour's
load over all rows alike. Every call uses the same seed, so every run does the same work.

FLOPs per sample: the parallel models are counted over their warm-up call at that length (counting adds
dispatch overhead, so it never happens in a timed call). Naive WaveNet is counted over its own calls stopped
after a few samples and extrapolated exactly (`Runner.naive_flops`). The cached generator's numba loop is
invisible to a counter, so it is credited with the count of the teacher-forced torch forward `model(audio, mel)`
over the same length: the same matmuls per sample and the same mel upsampling (`Runner.teacher_forced_flops`).
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from ..frontend import MelConfig
from .entries import REFERENCE, Entry, row_precision
from .inputs import ModelUnderTest, default_mel, frames_for, load_model_under_test, mel_batch
from .measure import DTYPES, Memory, Peak, count_flops, machine_peak, precision_context, synchronize, time_call
from .report import add_speedups, device_description, waveglow_backends
from .results import Row
from .settings import Settings

AR_WARMUP_SECONDS = 0.05  # the one warm-up of each autoregressive generator


class Runner:
    """Holds the models, the mel and the clock; times every row of one length round-robin."""

    def __init__(self, settings: Settings, log: Callable[[str], None]):
        self.s = settings
        self.log = log
        self.device = settings.device
        self.memory = Memory(self.device)
        self.mel, self.mel_source = default_mel(settings.mel)
        self.models: dict[str, ModelUnderTest] = {}
        for family in dict.fromkeys(e.family for e in settings.entries):
            # a bad checkpoint fails here, before any output
            self.models[family] = load_model_under_test(family, settings)
        for family, m in self.models.items():
            log(f"{family}: {m.source}, {m.parameters:,} parameters")
        self.warm: set[str] = set()
        self._fp32_copies: dict[str, torch.nn.Module] = {}

    def cast(self, entry: Entry) -> bool:
        """Whether the row runs on weights and mel cast to --dtype (rather than fp32, or fp32 under autocast)."""
        return (entry.half_by_cast and self.s.dtype != "fp32"
                and row_precision(entry, self.device, self.s.dtype) == self.s.dtype)

    def model(self, entry: Entry) -> torch.nn.Module:
        """The row's model: the family's, or for a row that computes in fp32 in a half run (NVIDIA's algorithm
        on a CPU) a float32 copy of the same weights, made once."""
        model = self.models[entry.family].model
        if entry.half_by_cast and self.s.dtype != "fp32" and not self.cast(entry):
            if entry.family not in self._fp32_copies:
                self._fp32_copies[entry.family] = copy.deepcopy(model).float()
            model = self._fp32_copies[entry.family]
        return model

    def precision(self, entry: Entry | None = None):
        if entry is not None and entry.half_by_cast:
            return nullcontext()  # weights already in the dtype they compute in (load_model_under_test, `model`)
        return precision_context(self.device, self.s.dtype)

    def generator(self, entry: Entry | None = None) -> torch.Generator:
        # The same noise on every run: each timed call does exactly the same work. A family that draws its noise
        # on the CPU whatever the device (Vocoder.cpu_noise, so a GPU reproduces CPU output) needs a CPU generator.
        device = "cpu" if entry is not None and self.models[entry.family].model.cpu_noise else self.device
        return torch.Generator(device=device).manual_seed(self.s.seed)

    def batch(self, entry: Entry) -> int:
        return self.s.batch if entry.batch > 1 else 1

    def mel_for(self, entry: Entry, seconds: float) -> torch.Tensor:
        mel = mel_batch(self.mel, frames_for(seconds), self.batch(entry)).to(self.device)
        return mel.to(DTYPES[self.s.dtype]) if self.cast(entry) else mel

    def call(self, entry: Entry, mel: torch.Tensor) -> torch.Tensor:
        model = self.model(entry)
        with torch.no_grad(), self.precision(entry):
            return entry.call(model, mel, self.generator(entry))

    def check_audio(self, entry: Entry, audio: torch.Tensor, mel: torch.Tensor) -> None:
        expected = (mel.shape[0], mel.shape[-1] * MelConfig().hop_length)
        if tuple(audio.shape) != expected:
            raise RuntimeError(f"{entry.name} returned audio of shape {tuple(audio.shape)}, expected {expected}")
        if not torch.isfinite(audio.float()).all():
            self.log(f"warning: {entry.name} returned non-finite audio (its timing is kept)")

    def warm_up(self, entry: Entry, mel: torch.Tensor) -> tuple[float, str]:
        """Warm the row up and return its FLOPs per sample and how they were counted (module docstring)."""
        model = self.model(entry)
        # one-off costs of the first call (WaveGlow times its backends once per shape class) are not counted
        model.prepare_sampling(mel.shape[-1] * model.mel_config.hop_length, mel.device)
        if entry.flops == "call":
            audio, flops = count_flops(lambda: self.call(entry, mel))
            synchronize(self.device)
            self.check_audio(entry, audio, mel)
            return flops / audio.numel(), "counted over the call"
        if entry.flops == "graph":  # onnxruntime is invisible to the counter: the graph it runs, in torch
            from .onnx_rows import graph_flops_call

            self.check_audio(entry, self.call(entry, mel), mel)
            with torch.no_grad():
                audio, flops = count_flops(lambda: graph_flops_call(model, mel, self.generator(entry)))
            return flops / audio.numel(), "counted over the exported graph in torch"
        if entry.name not in self.warm:
            short = mel[..., :frames_for(AR_WARMUP_SECONDS)]
            if entry.flops == "naive":  # every naive step runs the same code: 64 of them warm it up
                model = self.models[entry.family].model
                with torch.no_grad(), self.precision(entry):
                    model.generate(short, method="naive", generator=self.generator(entry),
                                   lengths=[64] * short.shape[0], progress=False)
            else:
                self.check_audio(entry, self.call(entry, short), short)
            synchronize(self.device)
            self.warm.add(entry.name)
        if entry.flops == "naive":
            return self.naive_flops(entry, mel), "counted over naive calls, linear past the receptive field"
        return self.teacher_forced_flops(entry, mel), "teacher-forced torch forward"

    def naive_flops(self, entry: Entry, mel: torch.Tensor) -> float:
        """FLOPs per sample of naive generation over this mel, counted over the generator's own calls.

        Step t runs the stack over the window of the last w_t = min(t + 1, R) samples (R the receptive field)
        and the output head on the newest, so its cost is a * w_t + b, on top of the mel upsampling U done once.
        Counting is slow (about 5x the call), so instead of counting T steps this counts the calls that stop
        after 1, 2, 3, 4 and 8 samples (`lengths`): three give U, a and b, the other two must agree exactly,
        and then the total for T samples is U + a * sum_t w_t + b * T. Should they disagree (a generator of
        another shape), the calls stopping after R and R + 16 samples are counted: every step past R costs
        the same. A test checks both against counting every step.
        """
        model = self.models[entry.family].model
        B, T = mel.shape[0], mel.shape[-1] * model.mel_config.hop_length
        R = int(getattr(model, "receptive_field", T))

        def counted(n: int) -> int:
            with torch.no_grad(), self.precision(entry):
                return count_flops(lambda: model.generate(mel, method="naive", generator=self.generator(entry),
                                                          lengths=[n] * B, progress=False))[1]

        def window_sum(n: int) -> int:  # sum over t < n of min(t + 1, R)
            return n * (n + 1) // 2 if n <= R else R * (R + 1) // 2 + (n - R) * R

        if T <= 16:
            return counted(T) / (B * T)
        if R > 8:
            c1, c2, c3, c4, c8 = (counted(n) for n in (1, 2, 3, 4, 8))
            a = (c3 - c2) - (c2 - c1)
            b = (c2 - c1) - 2 * a
            u = c1 - a - b
            if c4 - c3 == 4 * a + b and c8 == u + a * window_sum(8) + b * 8:
                return (u + a * window_sum(T) + b * T) / (B * T)
        m = 16
        if T <= R + m:  # noqa: SIM300  (T, R: lengths, not constants)
            return counted(T) / (B * T)
        first, second = counted(R), counted(R + m)
        return (first + (T - R) * (second - first) / m) / (B * T)

    def teacher_forced_flops(self, entry: Entry, mel: torch.Tensor) -> float:
        """FLOPs per sample of WaveNet's teacher-forced forward on one utterance of this length.

        The cached generator performs these very matmuls step by step (causal conv taps, conditioning
        projections, residual, skip, output head; the mel upsampler once up front), so this is its count.
        """
        model = self.models[entry.family].model
        mel = mel[:1]
        samples = mel.shape[-1] * model.mel_config.hop_length
        audio = torch.rand(1, samples, generator=self.generator(), device=self.device) * 1.6 - 0.8
        with torch.no_grad(), self.precision(entry):
            _, flops = count_flops(lambda: model(audio, mel))
        return flops / samples

    def time_once(self, entry: Entry, mel: torch.Tensor) -> tuple[float, float, int]:
        """One timed call: (wall seconds, process CPU seconds, peak working memory in bytes)."""
        self.memory.start()
        audio, timing = time_call(lambda: self.call(entry, mel), self.device)
        peak = self.memory.stop()
        self.check_audio(entry, audio, mel)
        return timing.wall_s, timing.cpu_s, peak

    def run_length(self, seconds: float, entries: Sequence[Entry], peaks: dict[str, Peak]) -> list[Row]:
        hop, sr = MelConfig().hop_length, MelConfig().sample_rate
        mels = {e.name: self.mel_for(e, seconds) for e in entries}
        flops = {}
        for e in entries:
            self.log(f"{seconds:g} s  warm-up {e.name}")
            flops[e.name] = self.warm_up(e, mels[e.name])
        times: dict[str, list[float]] = {e.name: [] for e in entries}
        cpu_times: dict[str, list[float]] = {e.name: [] for e in entries}
        mem_peaks: dict[str, int] = {e.name: 0 for e in entries}
        for r in range(self.s.repeats):
            for e in entries:
                elapsed, cpu, peak = self.time_once(e, mels[e.name])
                times[e.name].append(elapsed)
                cpu_times[e.name].append(cpu)
                mem_peaks[e.name] = max(mem_peaks[e.name], peak)
                self.log(f"{seconds:g} s  {e.name} run {r + 1}/{self.s.repeats}: {elapsed:.3f} s")
        rows = []
        for e in entries:
            loaded = self.models[e.family]
            batch, frames = mels[e.name].shape[0], mels[e.name].shape[-1]
            samples = batch * frames * hop
            median = statistics.median(times[e.name])
            per_sample, method = flops[e.name]
            sps = samples / median
            audio_s = samples / sr
            gflops = per_sample * sps / 1e9
            precision = row_precision(e, self.device, self.s.dtype)
            peak_gflops = peaks["fp32" if precision.startswith("fp32") else self.s.dtype].gflops
            rows.append(Row(model=e.name, label=e.label, family=e.family, source=loaded.source,
                            parameters=loaded.parameters, length_s=frames * hop / sr, batch=batch, samples=samples,
                            times_s=times[e.name], median_s=median, samples_per_s=sps,
                            cpu_times_s=cpu_times[e.name],
                            samples_per_cpu_s=samples / max(statistics.median(cpu_times[e.name]), 1e-9),
                            rtf=median / audio_s, x_real_time=audio_s / median, speedup_vs_cached=None,
                            speedup_ref_length_s=None, flops_per_sample=per_sample, flops_method=method,
                            gflops=gflops, pct_peak=100.0 * gflops / peak_gflops, peak_gflops=peak_gflops,
                            peak_mem_bytes=mem_peaks[e.name], dtype=precision, note=self.note(e, batch)))
        return rows

    def note(self, entry: Entry, batch: int) -> str:
        if entry.naive:
            return "naive: O(T x receptive field), run at one short length"
        if batch > 1:
            return f"{batch} utterances, aggregate samples/s"
        return ""


def plan(settings: Settings) -> list[tuple[float, list[Entry]]]:
    """(length, rows) in the order they run: every row at every sweep length, except naive WaveNet, which runs at
    --naive-length (with the cached WaveNet beside it, so their ratio is taken at one length) and, with
    --naive-all, at every sweep length too."""
    naive_at = {settings.naive_length} | (set(settings.lengths) if settings.naive_all else set())
    out = []
    for seconds in sorted(set(settings.lengths) | {settings.naive_length}):
        entries = []
        for e in settings.entries:
            if e.naive:
                keep = seconds in naive_at
            elif e.name in settings.caps and seconds > settings.caps[e.name] + 1e-9:
                keep = False
            elif seconds in settings.lengths:
                keep = True
            else:  # the extra naive length: only the reference goes with it
                keep = e.name == REFERENCE
            if keep:
                entries.append(e)
        if seconds not in settings.lengths and not any(e.naive for e in entries):
            continue  # naive not asked for: no extra length
        if entries:
            out.append((seconds, entries))
    return out


def machine_peaks(settings: Settings) -> dict[str, Peak]:
    """The roof in each precision the rows compute in: --dtype, and fp32 for the rows of a half run that
    compute in fp32 (the numba loop; NVIDIA's algorithm on a CPU)."""
    peaks = {settings.dtype: machine_peak(settings.device, DTYPES[settings.dtype], settings.quick)}
    if settings.dtype != "fp32" and any(row_precision(e, settings.device, settings.dtype).startswith("fp32")
                                        for e in settings.entries):
        peaks["fp32"] = machine_peak(settings.device, torch.float32, settings.quick)
    return peaks


def run_meta(settings: Settings, runner: Runner, peaks: dict[str, Peak], command: str) -> dict:
    """The run's settings and machine, as the JSON's "meta" (read before the run hands back --threads)."""
    return {
        "machine": device_description(settings.device),
        "device": str(settings.device),
        "dtype": settings.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if settings.device.type == "cuda" else None,
        "peak_gflops": peaks[settings.dtype].gflops,
        "peak_gflops_by_dtype": {k: p.gflops for k, p in peaks.items()},
        "peak_gflops_by_backend": {k: p.by_backend for k, p in peaks.items()},
        "waveglow_backends": waveglow_backends(),
        "repeats": settings.repeats,
        "lengths_s": list(settings.lengths),
        "mel": runner.mel_source,
        "models": {f: {"source": m.source, "parameters": m.parameters} for f, m in runner.models.items()},
        "memory": runner.memory.kind,
        "quick": settings.quick,
        "command": command,
    }


def run(settings: Settings, log: Callable[[str], None], command: str) -> tuple[list[Row], dict]:
    """The whole benchmark: every row of `plan(settings)` at its lengths, with the speed-up column, and the run's
    record (`run_meta`; `command` is the command line it records). --threads holds for the run only."""
    threads = torch.get_num_threads()
    if settings.threads is not None:
        # Here, not in check_settings: checking arguments changes nothing, and the run gives the count back.
        torch.set_num_threads(settings.threads)
    try:
        runner = Runner(settings, log)
        log(f"measuring the {settings.dtype} peak on {settings.device} (torch.mm and 1x1 convolution)")
        peaks = machine_peaks(settings)
        rows: list[Row] = []
        for seconds, entries in plan(settings):
            rows += runner.run_length(seconds, entries, peaks)
        add_speedups(rows)
        meta = run_meta(settings, runner, peaks, command)
    finally:
        torch.set_num_threads(threads)
    return rows, meta
