"""WaveNet teacher: a causal dilated-convolution autoregressive vocoder (design.md section 4).

    p(x | mel) = prod_t p(x_t | x_<t, mel),   p(x_t | ...) Gaussian / logistic mixture / mu-law (distributions.py)

Training is teacher-forced and parallel: `forward(audio, mel)` feeds audio shifted right by one sample and
returns, at every t, the parameters of the distribution of x_t. Generation is sequential, three ways:
  naive   recompute the whole receptive field (505 samples for the default) for every new sample; the reference
  cached  each dilated layer keeps a queue of its last (k-1)*d inputs, so one sample costs one matrix-vector
          product per layer; the mel's projections into every layer's gate are computed for a chunk of samples
          before the loop, never per step. On CPU the loop runs compiled (wavflow/kernels.py, float32), over all
          layers and all utterances of a batch, with the output head and the sampler inside; on a GPU the torch
          steps of a chunk of samples are captured once as a CUDA graph and replayed
          (wavenet_generation.py, `CachedSteps`).
  batched either method over several utterances of different lengths (`lengths`); a finished utterance drops
          out of the compiled loop and its output beyond its length is zero.
All methods draw the same noise from the same generator, so they produce the same audio (tests check it).

Source (`source_harmonics` > 0, a Gaussian output; design.md section 9): the WaveGlow's harmonic source, given to
the teacher. A pitch predictor reads F0 and voicing off the mel; the harmonic mean h (harmonics of F0 with
amplitudes from the mel) is added to the Gaussian's mean, and the excitation joins the upsampled conditioning:

    p(x | mel) = prod_t N(x_t; h_t + mu_t(r_<t, mel, e), sigma_t^2),   r = x - h

The stack reads the residual r, so every generation method above generates r unchanged and the audio is r + h
(not clamped again: the sum is what the density scores when it is fed back); the likelihood stays exact (a shift
by h, known from the mel, has unit Jacobian). Training uses the recording's pitch track, phase-locked to it;
inference predicts the pitch and lets the phase run free.

Speed: a cached sample is a fixed, small amount of arithmetic over every weight of the stack. At batch 1 the
compiled loop reads all the weights from cache for every sample, so cache bandwidth bounds it, not arithmetic;
issuing the same work as torch ops per step would instead be bound by per-op dispatch. A batch reuses each
weight row across its utterances and becomes compute-bound. On a GPU the per-sample kernels are many and tiny:
replaying them as one CUDA graph removes the per-kernel launch cost of Python dispatch. The README quotes the
measured figures (`python -m wavflow.benchmark`, design.md section 6).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import Distribution, build_distribution
from ..errors import WavflowError
from ..frontend import MelConfig
from ..layers import MelUpsampler, WaveNetStack, dilations_for, flatten_stack, receptive_field
from ..source import HarmonicSource, SourceTrack
from . import (
    ExportSpec,
    NoiseSpan,
    Streamer,
    Vocoder,
    is_int,
    is_real,
    noise_device,
    progress_bar,
    refuse_options,
    upsample_factors,
    validate_mel,
)
from .wavenet_generation import CachedSteps, CompiledStream, NaiveStream, Stream, TorchStream, WaveNetStreamer

METHODS = ("cached", "naive", "cached_torch")
OUTPUTS = ("gaussian", "mixture", "mulaw")
PHASES = ("recording", "free")


@dataclass
class WaveNetConfig:
    layers: int = 24  # residual layers
    cycles: int = 4  # dilation cycles: dilations 1, 2, ..., 2^(layers/cycles - 1), repeated
    kernel_size: int = 3  # causal conv kernel (2 or 3); receptive field (k-1) * sum(dilations) + 1 = 505
    residual_channels: int = 128
    gate_channels: int = 256  # split into tanh and sigmoid halves: 128 gated units
    skip_channels: int = 128
    upsample_channels: int = 80  # channels of the upsampled mel that every layer projects into its gate
    upsample_factors: tuple[int, ...] | None = None  # product = the mel hop; None: derived from it (256: 4 x 4 x 4 x 4)
    context_kernel: int = 5  # frame-context conv of the upsampler, across mel frames
    output: str = "gaussian"  # "gaussian" | "mixture" (16-bit discretised logistics) | "mulaw" (256-way)
    log_scale_min: float = -9.0  # floor of log sigma (Gaussian) or of each logistic's log scale (mixture)
    mixture_components: int = 10
    mixture_bits: int = 16
    mulaw_channels: int = 256
    # the source (module docstring): off at 0 harmonics, the teacher as published
    source_harmonics: int = 0  # harmonics of F0 in the harmonic mean (48: the CPU WaveGlow's); needs output gaussian
    source_channels: int = 64  # width of the pitch predictor's and the harmonic amplitudes' frame-rate convs
    source_amplitude: float = 0.1  # RMS of the excitation in the conditioning, where voiced
    source_phase: str = "recording"  # training excitation: phase-locked to the recording, or "free" from 0
    pitch_weight: float = 1.0  # weight of the pitch predictor's loss beside the NLL
    infer_temperature: float = 1.0  # sampling temperature when a call names none (a file's: convert --temperature)

    def __post_init__(self) -> None:
        # Every value that cannot build a model is refused here, by name and value, before any layer exists
        # (the trainer's CLI turns the WavflowError into one line); layers.py keeps ValueErrors as a last line
        # of defence. upsample_factors against the mel hop is WaveNet's check (it needs the MelConfig).
        problems = []
        for name in ("layers", "cycles", "residual_channels", "skip_channels", "upsample_channels",
                     "mixture_components"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if is_int(self.layers) and is_int(self.cycles) and self.layers >= 1 and self.cycles >= 1 \
                and self.layers % self.cycles:
            problems.append(f"layers={self.layers} must be a multiple of cycles={self.cycles} (each dilation "
                            f"cycle 1, 2, 4, ... has layers / cycles layers)")
        if not is_int(self.kernel_size) or self.kernel_size < 2:
            problems.append(f"kernel_size={self.kernel_size!r} must be an integer >= 2 (a causal conv needs at "
                            f"least the past sample and the current one)")
        if not is_int(self.gate_channels) or self.gate_channels < 2 or self.gate_channels % 2:
            problems.append(f"gate_channels={self.gate_channels!r} must be an even integer >= 2 (tanh and sigmoid "
                            f"halves)")
        if not is_int(self.context_kernel) or self.context_kernel < 1 or self.context_kernel % 2 == 0:
            problems.append(f"context_kernel={self.context_kernel!r} must be an odd integer >= 1 (a conv centred "
                            f"on each mel frame)")
        factors = self.upsample_factors
        if factors is None:
            pass
        elif not isinstance(factors, (tuple, list)) or not factors \
                or not all(is_int(f) and f >= 1 for f in factors):
            problems.append(f"upsample_factors={factors!r} must be a non-empty list of integers >= 1 (or null: "
                            f"derived from the mel hop)")
        else:
            self.upsample_factors = tuple(int(f) for f in factors)  # YAML and JSON give lists
        if self.output not in OUTPUTS:
            problems.append(f"output={self.output!r} is not a known WaveNet output; known: {', '.join(OUTPUTS)}")
        if not is_real(self.log_scale_min):
            problems.append(f"log_scale_min={self.log_scale_min!r} must be a finite number")
        if not is_int(self.mixture_bits) or not 1 <= self.mixture_bits <= 24:
            problems.append(f"mixture_bits={self.mixture_bits!r} must be an integer from 1 to 24 (2^bits levels "
                            f"in [-1, 1], float32 resolves 24 bits)")
        if not is_int(self.mulaw_channels) or self.mulaw_channels < 2:
            problems.append(f"mulaw_channels={self.mulaw_channels!r} must be an integer >= 2")
        if not is_int(self.source_harmonics) or self.source_harmonics < 0:
            problems.append(f"source_harmonics={self.source_harmonics!r} must be an integer >= 0 (0: no source)")
        elif self.source_harmonics and self.output != "gaussian":
            problems.append(f"source_harmonics={self.source_harmonics} needs output gaussian, not {self.output!r} "
                            f"(the harmonic mean shifts a continuous density; a discrete one's levels would move)")
        if not is_int(self.source_channels) or self.source_channels < 1:
            problems.append(f"source_channels={self.source_channels!r} must be an integer >= 1")
        if self.source_phase not in PHASES:
            problems.append(f"source_phase={self.source_phase!r} is not one of {', '.join(PHASES)}")
        for name in ("source_amplitude", "pitch_weight", "infer_temperature"):
            value = getattr(self, name)
            if not is_real(value) or value < 0:
                problems.append(f"{name}={value!r} must be a number >= 0")
        if problems:
            raise WavflowError(f"invalid WaveNetConfig: {'; '.join(problems)}")

    @classmethod
    def tiny(cls, **overrides) -> WaveNetConfig:
        """A CPU-sized teacher for tests: 8 layers in 2 cycles (receptive field 61), 16/32/16 channels."""
        d = {"layers": 8, "cycles": 2, "residual_channels": 16, "gate_channels": 32, "skip_channels": 16,
             "upsample_channels": 16}
        d.update(overrides)
        return cls(**d)


class WaveNet(nn.Module, HarmonicSource, Vocoder):
    """The WaveNet teacher, a `wavflow.models.Vocoder`. See the module docstring."""

    model_type: ClassVar[str] = "wavenet"
    infer_options: ClassVar[tuple[str, ...]] = ("temperature", "method")
    needs_teacher: ClassVar[bool] = False
    no_bf16: ClassVar[str | None] = "the WaveNet teacher has no bf16 path (its generator is a compiled float32 loop)"
    # Its generators keep float32 sample buffers and queues between the matmuls: half precision is autocast's.
    half_by_cast: ClassVar[bool] = False
    # Noise drawn on the CPU on every device, so a GPU reproduces the CPU's samples (the benchmark's generator).
    cpu_noise: ClassVar[bool] = True
    # The config keys a --init may change (adding a source grows the model, `grown`) and those a --resume may
    # change (the objective's weight: no weight of the model depends on it).
    GROWABLE: ClassVar[tuple[str, ...]] = ("source_harmonics", "source_channels", "source_amplitude", "source_phase",
                                           "pitch_weight")
    OBJECTIVE: ClassVar[tuple[str, ...]] = ("pitch_weight",)
    _NO_EXPORT: ClassVar[str] = ("the WaveNet teacher cannot be exported to ONNX: it is autoregressive (one network "
                                 "pass per audio sample), which a static graph would have to unroll; export a "
                                 "waveglow or a student")

    def __init__(self, config: WaveNetConfig | None = None, mel_config: MelConfig = MelConfig()):
        super().__init__()
        config = WaveNetConfig() if config is None else config  # a fresh one: WaveNetConfig is mutable
        self.config, self.mel_config = config, mel_config
        # The config's own values were checked when it was made (WaveNetConfig.__post_init__); only the fit to
        # the mel is left.
        factors = upsample_factors(config, mel_config)  # derived from the hop when the config leaves them out
        options = {"gaussian": {"log_sigma_min": config.log_scale_min},
                   "mixture": {"components": config.mixture_components, "bits": config.mixture_bits,
                               "log_scale_min": config.log_scale_min},
                   "mulaw": {"channels": config.mulaw_channels}}
        self.dist: Distribution = build_distribution(config.output, **options.get(config.output, {}))
        self.upsampler = MelUpsampler(mel_config.n_mels, config.upsample_channels, factors,
                                      config.context_kernel)
        self.stack = WaveNetStack(1, config.residual_channels, config.gate_channels, config.skip_channels,
                                  config.upsample_channels, config.kernel_size, config.layers, config.cycles)
        # skip sum -> ReLU -> 1x1 -> ReLU -> 1x1 -> distribution parameters
        self.out1 = nn.Conv1d(config.skip_channels, config.skip_channels, 1)
        self.out2 = nn.Conv1d(config.skip_channels, self.dist.num_params, 1)
        # The source (wavflow.source.HarmonicSource): pitch and harmonic amplitudes per mel frame, and the
        # excitation's projection into the conditioning.
        self.build_source(mel_config.n_mels, config.source_harmonics, config.source_channels,
                          config.upsample_channels)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.config.kernel_size, dilations_for(self.config.layers, self.config.cycles))

    # ------------------------------------------------------------------------------------------------------------
    # Teacher forcing

    def conditioning(self, mel: torch.Tensor, length: int, track: SourceTrack | None = None) -> torch.Tensor:
        """mel [B, n_mels, F] -> upsampled conditioning [B, upsample_channels, length] (F * hop >= length); with a
        source, plus the projected excitation of `track` (the source's frames from the mel's first)."""
        validate_mel(mel, self.mel_config, length)
        return self.with_excitation(self.upsampler(mel)[..., :length], track)

    # -- the source ----------------------------------------------------------------------------------------------

    @property
    def needs_pitch(self) -> bool:
        """Training needs the recordings' pitch tracks (the trainer attaches them to the data)."""
        return self.source is not None

    def grown(self, config: WaveNetConfig) -> WaveNet:
        """This teacher with `config`'s source (config may differ only in GROWABLE keys; a source is added, never
        changed): the same weights, the new parts at their zero start, so it computes exactly the likelihood and
        the audio it did."""
        return self.grown_copy(config, self.OBJECTIVE if self.source is not None else self.GROWABLE)

    def head(self, skips: torch.Tensor) -> torch.Tensor:
        """skip sum [B, S, T] -> distribution parameters [B, P, T], in float32 even under autocast: a bf16 mean
        is off by ~1e-3, which is many sigmas of a confident prediction."""
        with torch.autocast(device_type=skips.device.type, enabled=False):
            if skips.dtype in (torch.float16, torch.bfloat16):
                skips = skips.float()
            return self.out2(F.relu(self.out1(F.relu(skips))))

    def forward(self, audio: torch.Tensor, mel: torch.Tensor, track: SourceTrack | None = None) -> torch.Tensor:
        """audio [B, T], mel [B, n_mels, F] -> parameters [B, P, T] of p(x_t | x_<t, mel) at every t.

        With a source the stack reads the residual x - h and the Gaussian's mean includes h; track: the source
        (None: `source_track(mel)`, as the model samples)."""
        T = audio.shape[-1]
        track = self.source_of(mel, track)
        c = self.conditioning(mel, T, track)
        h = self.mean_of(track, T)
        if h is not None:
            audio = audio - h.to(audio.dtype)
        x = F.pad(self.dist.prepare_input(audio), (1, -1))  # shift right: position t sees x[t-1], x[0] sees 0
        params = self.head(self.stack(x.unsqueeze(1), c))
        if h is None:
            return params
        return torch.cat([params[:, :1] + h[:, None].to(params.dtype), params[:, 1:]], 1)

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor, track: SourceTrack | None = None
                       ) -> torch.Tensor:
        """[B] mean log-density per sample in nats, density of amplitude in [-1, 1] (design.md section 2)."""
        return self.dist.log_prob(self(audio, mel, track), audio).mean(dim=-1)

    def training_loss(self, audio: torch.Tensor, mel: torch.Tensor, pitch: tuple[torch.Tensor, torch.Tensor] |
                      None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """NLL in nats per sample, plus, with a source, the pitch predictor's loss. pitch: (f0, voiced) [B, >= F]
        of the recording's pitch track at the mel's frames (the trainer supplies it to a model that needs_pitch)."""
        track, extra, logs = None, audio.new_zeros(()), {}
        if self.source is not None:
            if pitch is None:
                raise WavflowError("a WaveNet with a source trains on pitch tracks of the recordings (the trainer "
                                   "supplies them: wavflow.pitch)")
            f0, voiced = (p[:, : mel.shape[-1]].to(audio.device) for p in pitch)
            track = self.recording_track(audio, mel, f0, voiced)
            pitch_loss, logs = self.source.loss(mel, f0, voiced)
            extra = self.config.pitch_weight * pitch_loss
        nll = -self.log_likelihood(audio, mel, track).mean()
        return nll + extra, {"nll": nll.item(), "bits_per_sample": nll.item() / math.log(2), **logs}

    def remove_weight_norm(self) -> None:
        """No weight norm in the teacher: nothing to fold."""

    def streamer(self, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]) -> Streamer:
        """Generation whose state carries from chunk to chunk (wavenet_generation.WaveNetStreamer)."""
        return WaveNetStreamer(self, mel, noise, options)

    def export_spec(self) -> ExportSpec:
        raise WavflowError(self._NO_EXPORT)

    def export_graph(self) -> nn.Module:
        raise WavflowError(self._NO_EXPORT)

    # ------------------------------------------------------------------------------------------------------------
    # Generation

    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The output distribution's noise [batch, N, num_samples] (N = dist.noise_channels), on the generator's
        device (the CPU without one): the same for every generation method, so they give the same audio."""
        return self.dist.draw_noise(batch, num_samples, generator, device=noise_device(generator))

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
              frames: Sequence[int] | torch.Tensor | None = None, temperature: float | None = None,
              method: str = "cached", **unknown: Any) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop] by `generate` (cached by default); frames: each item's
        length in frames, beyond which its output is zero and no time is spent on it."""
        refuse_options(self, unknown)
        return self.generate(mel, method=method, temperature=temperature, generator=generator, frames=frames,
                             noise=noise)

    @torch.no_grad()
    def generate(self, mel: torch.Tensor, method: str = "cached", temperature: float | None = None,
                 generator: torch.Generator | None = None, lengths: Sequence[int] | torch.Tensor | None = None,
                 frames: Sequence[int] | torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 progress: bool | None = None, threads: int | None = None) -> torch.Tensor:
        """Sample audio [B, F * hop] for mel [B, n_mels, F], one sample at a time.

        method: "cached" (compiled on CPU, torch elsewhere), "naive" (reference), "cached_torch".
        temperature scales sigma / the logistic scales / divides the mu-law logits (0: the mean or the argmax;
        None: config.infer_temperature, the file's default).
        lengths (samples) or frames (mel frames, times hop) per utterance for a padded batch: output beyond each
        length is zero. noise [B, N, F * hop] replaces the draw from `generator` (draw_noise).
        progress: tqdm bar on stderr; None shows it for long runs on a terminal.
        threads: compiled cached generation runs groups of utterances in this many threads (default: torch's
        thread count); one utterance always runs in one thread (the layers are sequential).
        """
        validate_mel(mel, self.mel_config)
        if method not in METHODS:
            raise WavflowError(f"unknown generation method '{method}'; known: {', '.join(METHODS)}")
        temperature = self.config.infer_temperature if temperature is None else temperature
        if not temperature >= 0:
            raise WavflowError(f"temperature must be >= 0, got {temperature}")
        B, T = mel.shape[0], mel.shape[-1] * self.mel_config.hop_length
        lens = self._lengths(B, T, lengths, frames)
        n_noise = self.dist.noise_channels
        if noise is None:
            noise = self.draw_noise(B, T, generator).to(mel.device)
        elif tuple(noise.shape) != (B, n_noise, T):
            raise WavflowError(f"noise has shape {tuple(noise.shape)}, expected {(B, n_noise, T)}")
        if progress is None:
            progress = T * B >= 4 * self.mel_config.sample_rate and sys.stderr.isatty()  # noqa: SIM300  (T, B: sizes)
        was_training = self.training
        self.eval()
        try:
            c = self.upsampler(mel)  # [B, C, T]
            track = self.source_of(mel)
            c = self.with_excitation(c, track)
            if method == "naive":
                audio = self._generate_naive(c, noise, temperature, lens, progress)
            elif method == "cached" and c.device.type == "cpu":
                audio = self._generate_numba(c, noise, temperature, lens, progress, threads=threads)
            else:
                audio = self._generate_cached_torch(c, noise, temperature, lens, progress,
                                                    graph=method == "cached" and c.device.type == "cuda")
            h = self.mean_of(track, T)
            if h is not None:  # the methods generated the residual
                audio = audio + h.to(audio)
        finally:
            self.train(was_training)
        mask = torch.arange(T, device=audio.device)[None, :] < lens.to(audio.device)[:, None]
        return audio * mask

    def _lengths(self, B: int, T: int, lengths, frames) -> torch.Tensor:
        if lengths is not None and frames is not None:
            raise WavflowError("give lengths (samples) or frames (mel frames), not both")
        if frames is not None:
            lengths = torch.as_tensor(frames, dtype=torch.long) * self.mel_config.hop_length
        if lengths is None:
            return torch.full((B,), T, dtype=torch.long)
        lens = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if lens.numel() != B:
            raise WavflowError(f"{lens.numel()} lengths given for a batch of {B} mels")
        if (lens < 0).any() or (lens > T).any():
            raise WavflowError(f"lengths must lie in [0, {T}] (the mel's frames x hop), got {lens.tolist()}")
        return lens

    def _step_params(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Distribution parameters at the last position of a window: x [B, 1, W] (already shifted), c [B, C, W]."""
        return self.head(self.stack(x, c)[..., -1:])

    def _generate_naive(self, c: torch.Tensor, noise: torch.Tensor, temperature: float, lens: torch.Tensor,
                        progress: bool) -> torch.Tensor:
        """For every t, run the full stack over the receptive field [t - RF + 1, t] and sample x_t."""
        B, _, T = c.shape
        rf = self.receptive_field
        x_in = torch.zeros(B, 1, T + 1, device=c.device)  # x_in[t] = x[t - 1]: the shifted input
        T_run = int(lens.max()) if B else 0
        with progress_bar(T_run, progress, "wavenet") as bar:
            for t in range(T_run):
                s = max(0, t - rf + 1)
                params = self._step_params(x_in[..., s: t + 1], c[..., s: t + 1])
                x_in[:, 0, t + 1] = self.dist.sample(params, temperature, noise=noise[..., t: t + 1])[:, 0]
                bar.update(1)
        return x_in[:, 0, 1:]

    # -- cached, torch --------------------------------------------------------------------------------------------

    def _chunk_size(self, B: int) -> int:
        # bound the precomputed conditioning (Tc x B x L x G floats) to ~32 MB
        per_step = B * self.config.layers * self.config.gate_channels * 4
        return max(64, min(4096, (32 << 20) // max(per_step, 1)))

    @torch.no_grad()
    def _generate_cached_torch(self, c: torch.Tensor, noise: torch.Tensor, temperature: float,
                               lens: torch.Tensor, progress: bool, graph: bool = False) -> torch.Tensor:
        """Cached generation in torch, one `CachedSteps.step` per sample. Returns audio [B, T].

        graph (CUDA only): the steps of one chunk are captured once as a CUDA graph and replayed chunk after
        chunk, so a sample costs one replay of its kernels instead of one Python dispatch and launch per op.
        """
        B, _, T = c.shape
        T_run = int(lens.max()) if B else 0
        dev = c.device
        # under autocast the matmuls run in its dtype; the weights are cast once here, not at every step
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else torch.float32
        chunk = min(128, max(T_run, 1)) if graph else self._chunk_size(B)
        with torch.autocast(dev.type, enabled=False):
            steps = CachedSteps(self, B, chunk, temperature, dev, dtype)
            out = torch.zeros(B, T, device=dev)
            replay = steps.capture() if graph and T_run else None
            with progress_bar(T_run, progress, "wavenet") as bar:
                for t0 in range(0, T_run, chunk):
                    t1 = min(t0 + chunk, T_run)
                    steps.load(c, noise, t0, t1)
                    if replay is not None:
                        replay.replay()
                    else:
                        for s in range(t1 - t0):
                            steps.step(s)
                    out[:, t0:t1] = steps.out[: t1 - t0].t()
                    bar.update(t1 - t0)
        return out

    # -- cached, compiled -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _generate_numba(self, c: torch.Tensor, noise: torch.Tensor, temperature: float, lens: torch.Tensor,
                        progress: bool, threads: int | None = None) -> torch.Tensor:
        """Cached generation in one compiled loop over time, layers and utterances (wavflow/kernels.py, float32,
        CPU): groups of utterances run in parallel threads (default: torch's thread count). Returns audio [B, T]."""
        from .. import kernels

        head = (self.out1.weight[:, :, 0], self.out1.bias, self.out2.weight[:, :, 0], self.out2.bias)
        with progress_bar(int(lens.max()) if len(lens) else 0, progress, "wavenet") as bar:
            return kernels.cached_generate(flatten_stack(self.stack), head, self.dist, c, noise, lens, temperature,
                                           self.config.log_scale_min, self._chunk_size(c.shape[0]),
                                           threads or torch.get_num_threads(), bar)

    # -- streams --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generation_stream(self, length: int, method: str = "cached", temperature: float | None = None,
                          device: torch.device | str = "cpu") -> Stream:
        """Generation of one utterance of `length` samples a chunk at a time (wavflow.streaming): the returned
        object's run(c [1, C, n], noise [1, N, n]) -> audio [1, n] takes the next n samples' upsampled mel and
        noise and keeps the state between calls (the layer queues, or the naive method's last receptive field),
        so nothing is recomputed and the chunks equal one `generate` over the utterance (same method)."""
        if method not in METHODS:
            raise WavflowError(f"unknown generation method '{method}'; known: {', '.join(METHODS)}")
        temperature = self.config.infer_temperature if temperature is None else temperature
        if not temperature >= 0:
            raise WavflowError(f"temperature must be >= 0, got {temperature}")
        device = torch.device(device)
        if method == "naive":
            return NaiveStream(self, temperature)
        if method == "cached" and device.type == "cpu":
            return CompiledStream(self, length, temperature)
        return TorchStream(self, length, temperature, device, graph=method == "cached" and device.type == "cuda")
