"""Parallel WaveNet / ClariNet student: inverse autoregressive flows distilled from a WaveNet teacher
(design.md section 5).

Noise z_0 [B, T] goes through K flows. Flow k is a causal WaveNet over its input shifted right by one step, so
its (mu_k[t], log s_k[t]) sees z_{k-1}[<t] only, and

    z_k = z_{k-1} * s_k + mu_k.

Composing the flows per step, from M = 0, S = 1:   M <- M * s_k + mu_k,   log S <- log S + log s_k,   so that

    x = z_0 * S + M,

and x_t given x[<t] is a single Gaussian (or logistic) with known (M_t, S_t): the whole utterance comes out of
ONE parallel pass, and the student's log-density of its own sample is sum_t [log p0(z_t) - log S_t].

Distillation (training_loss): the student samples x from noise, the frozen teacher runs once, in parallel, on x
(teacher forcing) and gives its per-step distribution p_t; the loss is the per-step KL(q_t || p_t) (closed form
for a Gaussian teacher, Monte Carlo cross-entropy minus analytic entropy for a logistic-mixture teacher) plus a
multi-resolution STFT loss between x and the real audio, without which students learn to whisper.

Real audio goes the other way, x -> z_0, one step at a time (`invert`): slow but exact, so the student gets a
held-out log-likelihood on the shared scale of design.md section 2 too.

Source (`source_harmonics` > 0; design.md section 9): the teacher's harmonic source, taken over from a teacher
with one when distillation starts (`attach_teacher`). The excitation joins the conditioning and the harmonic
mean h is added to the flows' output, x = z_0 * S + M + h: still one Gaussian per step, with mean M + h, which
the KL matches against the teacher's mean (its own h included).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WavflowError
from ..frontend import MelConfig
from ..layers import MelUpsampler, WaveNetStack, flatten_stack
from ..losses import (
    STFT_RESOLUTIONS,
    base_entropy,
    base_log_prob,
    gaussian_cross_entropy,
    gaussian_reverse_kl,
    log_scale_regularizer,
    log_spectral_distance,
    mixture_reverse_kl,
    sample_base,
    stft_loss,
)
from ..source import HarmonicSource, SourceTrack
from . import (
    ExportSpec,
    NoiseSpan,
    Streamer,
    Vocoder,
    int_tuple,
    is_int,
    is_real,
    noise_device,
    one_thread,
    progress_bar,
    refuse_options,
    upsample_factors,
    validate_mel,
    weights_sha256,
)
from .student_sampling import FlowStream, StudentGraph, StudentStreamer


@dataclass(frozen=True)
class StudentConfig:
    # --- flows: ClariNet's student by default (6 flows x 10 layers, dilations 1..512 in each flow) ---
    flow_layers: tuple[int, ...] = (10, 10, 10, 10, 10, 10)  # WaveNet layers per flow, first flow first
    dilation_cycle: int = 10  # layers per dilation cycle 1, 2, ..., 2^(cycle-1); a 30-layer flow has 3 cycles
    residual_channels: int = 64
    gate_channels: int = 128  # tanh half + sigmoid half: 64 gated units
    skip_channels: int = 64
    kernel_size: int = 3
    base: Literal["gaussian", "logistic"] = "gaussian"  # p0 of z_0, and so the family of x_t given x[<t]
    log_scale_min: float = -7.0  # floor on each flow's log s_k: keeps the inverse (x - mu) / s finite
    # --- mel conditioning: one design.md section 4 upsampler shared by all flows (computed once per utterance) ---
    upsample_channels: int = 80
    upsample_factors: tuple[int, ...] | None = None  # product = the mel hop; None: derived from it (256: 4 x 4 x 4 x 4)
    # --- the source (module docstring): 0 harmonics, none; otherwise the teacher's, which must have one alike ---
    source_harmonics: int = 0  # harmonics of F0 in the harmonic mean
    source_channels: int = 64  # width of the pitch predictor's and the harmonic amplitudes' convs
    source_amplitude: float = 0.1  # RMS of the excitation in the conditioning, where voiced
    infer_temperature: float = 1.0  # sampling temperature when a call names none (a file's: convert --temperature)
    # --- distillation loss ---
    kl_weight: float = 1.0  # per-step KL(student || teacher), nats per sample
    scale_regularizer: float = 4.0  # ClariNet's lambda on (log sigma_teacher - log sigma_student)^2
    mc_samples: int = 4  # Monte Carlo draws per step for a logistic-mixture teacher's cross-entropy
    stft_weight: float = 1.0  # multi-resolution STFT loss (spectral convergence + log-magnitude L1)
    stft_resolutions: tuple[tuple[int, int, int], ...] = STFT_RESOLUTIONS  # (n_fft, hop, win)

    def __post_init__(self) -> None:
        # Every value that cannot build (or train) a student is refused here, by name and value, before any
        # layer exists (the trainer's CLI turns the WavflowError into one line); layers.py keeps ValueErrors as
        # a last line of defence. upsample_factors against the mel hop is IAFStudent's check (it needs the mel).
        problems = []
        for name in ("dilation_cycle", "residual_channels", "skip_channels", "upsample_channels", "mc_samples"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not is_int(self.gate_channels) or self.gate_channels < 2 or self.gate_channels % 2:
            problems.append(f"gate_channels={self.gate_channels!r} must be an even integer >= 2 (tanh and sigmoid "
                            f"halves)")
        if not is_int(self.kernel_size) or self.kernel_size < 2:
            problems.append(f"kernel_size={self.kernel_size!r} must be an integer >= 2 (a causal conv needs at "
                            f"least the past step and the current one)")
        if self.base not in ("gaussian", "logistic"):
            problems.append(f"student base={self.base!r} must be 'gaussian' or 'logistic'")
        if not is_real(self.log_scale_min):
            problems.append(f"log_scale_min={self.log_scale_min!r} must be a finite number")
        for name in ("kl_weight", "scale_regularizer", "stft_weight", "infer_temperature"):
            value = getattr(self, name)
            if not is_real(value) or value < 0:
                problems.append(f"{name}={value!r} must be a finite number >= 0")
        if not is_int(self.source_harmonics) or self.source_harmonics < 0:
            problems.append(f"source_harmonics={self.source_harmonics!r} must be an integer >= 0 (0: no source)")
        if not is_int(self.source_channels) or self.source_channels < 1:
            problems.append(f"source_channels={self.source_channels!r} must be an integer >= 1")
        if not is_real(self.source_amplitude) or self.source_amplitude < 0:
            problems.append(f"source_amplitude={self.source_amplitude!r} must be a number >= 0")
        if is_real(self.kl_weight) and is_real(self.stft_weight) and self.kl_weight == 0 == self.stft_weight:
            problems.append("kl_weight=0 and stft_weight=0 leave nothing to train on")

        # YAML and JSON give nested lists: keep the config hashable and its printout exact
        flow_layers = int_tuple(self.flow_layers)
        if flow_layers is None or not flow_layers or min(flow_layers) < 1:
            problems.append(f"flow_layers={self.flow_layers!r} must be a non-empty list of layer counts >= 1")
        else:
            object.__setattr__(self, "flow_layers", flow_layers)
            cycle = self.dilation_cycle
            if is_int(cycle) and cycle >= 1:
                for n in flow_layers:
                    if n % cycle:
                        problems.append(f"flow_layers={list(flow_layers)}: a flow of {n} layers is not a whole "
                                        f"number of dilation cycles of dilation_cycle={cycle}")
                        break
        factors = int_tuple(self.upsample_factors)
        if self.upsample_factors is None:
            pass
        elif factors is None or not factors or min(factors) < 1:
            problems.append(f"upsample_factors={self.upsample_factors!r} must be a non-empty list of integers >= 1 "
                            f"(or null: derived from the mel hop)")
        else:
            object.__setattr__(self, "upsample_factors", factors)
        resolutions = self.stft_resolutions
        parsed = tuple(int_tuple(r) for r in resolutions) if isinstance(resolutions, (tuple, list)) else None
        if parsed is None or not parsed or any(r is None or len(r) != 3 for r in parsed):
            problems.append(f"stft_resolutions={resolutions!r} must be a non-empty list of [n_fft, hop, win] "
                            f"integer triples")
        else:
            bad = [list(r) for r in parsed if not (r[0] >= 1 and r[1] >= 1 and 1 <= r[2] <= r[0])]
            if bad:
                problems.append(f"stft_resolutions {bad[0]}: each [n_fft, hop, win] needs n_fft >= 1, hop >= 1 "
                                f"and 1 <= win <= n_fft")
            else:
                object.__setattr__(self, "stft_resolutions", parsed)
        if problems:
            raise WavflowError(f"invalid StudentConfig: {'; '.join(problems)}")

    @classmethod
    def parallel_wavenet(cls) -> StudentConfig:
        """van den Oord et al. 2018: 4 flows of 10, 10, 10, 30 layers, logistic base."""
        return cls(flow_layers=(10, 10, 10, 30), base="logistic")

    @classmethod
    def tiny(cls, base: Literal["gaussian", "logistic"] = "gaussian") -> StudentConfig:
        """Two flows of 3 layers, 8 channels: for tests (receptive field 15 samples per flow)."""
        return cls(flow_layers=(3, 3), dilation_cycle=3, residual_channels=8, gate_channels=16, skip_channels=8,
                   base=base, upsample_channels=16,
                   stft_resolutions=((256, 64, 256), (512, 128, 512)))


class IAFFlow(nn.Module):
    """One inverse autoregressive flow: z_prev [B, T], cond [B, C, T] -> (mu [B, T], log s [B, T]).

    A causal WaveNet stack over z_prev shifted right by one, so (mu[t], log s[t]) depend on z_prev[<t] only;
    skip sum -> ReLU -> 1x1 -> ReLU -> 1x1 -> (mu, log s). The last conv starts at zero, so an untrained flow is
    the identity (mu = 0, s = 1) and a deep student starts as a well-conditioned map.
    """

    def __init__(self, config: StudentConfig, layers: int):
        super().__init__()
        if layers % config.dilation_cycle:
            raise WavflowError(f"flow of {layers} layers is not a whole number of dilation cycles of "
                               f"{config.dilation_cycle}")
        self.log_scale_min = config.log_scale_min
        self.stack = WaveNetStack(1, config.residual_channels, config.gate_channels, config.skip_channels,
                                  config.upsample_channels, config.kernel_size, layers, layers // config.dilation_cycle)
        self.hidden = nn.Conv1d(config.skip_channels, config.skip_channels, 1)
        self.out = nn.Conv1d(config.skip_channels, 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def receptive_field(self) -> int:
        return self.stack.receptive_field

    def forward(self, z_prev: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log s) [B, T] in float32 even under autocast: the flows compose them into the (M, log S) whose KL
        to the teacher's float32 head is the loss, and a bf16 mean is off by many sigmas of a sharp step."""
        shifted = F.pad(z_prev, (1, -1)).unsqueeze(1)  # input at t is z_prev[t - 1]: the flow never sees z_prev[t]
        h = F.relu(self.hidden(F.relu(self.stack(shifted, cond))))
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = self.out(h.float() if h.dtype in (torch.float16, torch.bfloat16) else h)
        return h[:, 0], torch.clamp(h[:, 1], min=self.log_scale_min)

    def step_head(self, skips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head of `forward` at one time step: skip sum [B, S] -> (mu [B], log s [B])."""
        h = F.linear(F.relu(F.linear(F.relu(skips), self.hidden.weight[:, :, 0], self.hidden.bias)),
                     self.out.weight[:, :, 0], self.out.bias)
        return h[:, 0], torch.clamp(h[:, 1], min=self.log_scale_min)


class IAFStudent(nn.Module, HarmonicSource, Vocoder):
    """K inverse autoregressive flows with a shared mel upsampler; see the module docstring."""

    model_type: ClassVar[str] = "student"
    infer_options: ClassVar[tuple[str, ...]] = ("temperature",)
    needs_teacher: ClassVar[bool] = True  # distilled: trains only with attach_teacher
    # Real audio goes back through the flows one sample at a time (`invert`): evaluation scores its first seconds.
    sequential_likelihood: ClassVar[bool] = True
    # The config keys a --init may change: adding a source grows the student (`grown`).
    GROWABLE: ClassVar[tuple[str, ...]] = ("source_harmonics", "source_channels", "source_amplitude")

    def __init__(self, config: StudentConfig = StudentConfig(), mel_config: MelConfig = MelConfig()):
        super().__init__()
        # The config's own values were checked when it was made (StudentConfig.__post_init__); only the fit to
        # the mel is left.
        factors = upsample_factors(config, mel_config)  # derived from the hop when the config leaves them out
        self.config = config
        self.mel_config = mel_config
        self.upsampler = MelUpsampler(mel_config.n_mels, config.upsample_channels, factors)
        self.flows = nn.ModuleList(IAFFlow(config, n) for n in config.flow_layers)
        self.build_source(mel_config.n_mels, config.source_harmonics, config.source_channels,
                          config.upsample_channels)  # wavflow.source.HarmonicSource
        self.teacher_sha256: str | None = None  # the teacher file's hash, saved in the student's checkpoints
        self.teacher_weights_sha256: str | None = None  # weights_sha256 of the teacher when it was attached
        self._teacher: list[nn.Module] = []  # a list, so nn.Module does not register (save, move, optimise) it

    # ------------------------------------------------------------------------------------------------------------
    # Conditioning and the parallel pass

    def conditioning(self, mel: torch.Tensor, length: int, track: SourceTrack | None = None) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio-rate conditioning [B, C, length], computed once and shared by every flow;
        with a source, plus the projected excitation of `track`."""
        validate_mel(mel, self.mel_config, length)
        return self.with_excitation(self.upsampler(mel)[..., :length], track)

    def grown(self, config: StudentConfig) -> IAFStudent:
        """This student with `config`'s source added (config may differ only in GROWABLE keys): the same weights,
        the new parts at their zero start, so it computes what it did until it takes a teacher's source."""
        return self.grown_copy(config, () if self.source is not None else self.GROWABLE)

    def flow(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All flows in parallel: z_0 [B, T], cond [B, C, T] -> (x [B, T], M [B, T], log S [B, T])."""
        x = z
        mean = torch.zeros_like(z)
        log_scale = torch.zeros_like(z)
        for f in self.flows:
            mu, log_s = f(x, cond)
            s = torch.exp(log_s)
            x = x * s + mu
            mean = mean * s + mu
            log_scale = log_scale + log_s
        return x, mean, log_scale

    # Time rows per block of `fast_flow` on a CPU. A block's working set for one layer (gate, input, output,
    # gated units, skips and conditioning rows: about 2 KB a row at the default sizes) should stay in the
    # last-level cache, which a whole utterance's does not; smaller blocks lose more to per-op dispatch (about
    # 15 ops per layer per block) and thinner GEMMs than they gain in locality. Chosen by measuring the
    # benchmark's lengths (python -m wavflow.benchmark; the README has the figures).
    FAST_BLOCK: ClassVar[int] = 8192

    @torch.no_grad()
    def fast_flow(self, z: torch.Tensor, cond: torch.Tensor, block: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`flow` for inference, same result to rounding: z_0 [B, T], cond [B, C, T] -> (x, M, log S) [B, T].

        Time-major [T, C] activations, so every 1x1 and dilated conv is one GEMM over a block of rows with no
        im2col copy: the dilated conv reads its taps as row-shifted views of the layer's input buffer and
        accumulates them with addmm_ into the gate input. Constant factors are folded into the weights:
        tanh(a) = 2 sigmoid(2a) - 1, so one sigmoid covers both gate halves (torch's tanh is much slower than
        its sigmoid on CPU); the residual sqrt(1/2) (as the scale of the residual input), skip sqrt(1/L) and
        the gate's 2 go into the 1x1 convs; skip biases are summed once per flow.

        Each flow runs in time blocks of `block` rows, every layer over one block before the next block
        (default: FAST_BLOCK on a CPU, where whole-utterance [T, 128] gate buffers fall out of cache and the
        rate drops with length; the whole utterance elsewhere, as GPU kernels want big shapes). Layer i keeps
        the last P_i = (kernel_size - 1) * d_i rows of its input from the previous block (zeros before the
        first: the causal left padding) and puts them in front of the block's rows before its taps read them,
        so blocking recomputes nothing and changes only the GEMM shapes. That state is a FlowStream, which a
        stream keeps from one chunk to the next (flow_stream).
        """
        B, T = z.shape
        if block is None:
            block = self.FAST_BLOCK if z.device.type == "cpu" else max(T, 1)
        if block < 1:
            raise WavflowError(f"fast_flow block of {block} rows: expected at least 1")
        return FlowStream(self, B, z.dtype, z.device, max(1, min(block, T))).run(z, cond)

    @torch.no_grad()
    def flow_stream(self, batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    block: int | None = None) -> FlowStream:
        """`fast_flow` a chunk of time at a time (wavflow.streaming): FlowStream.run(z [B, n], cond [B, C, n])
        takes the next n steps and returns their (x, M, log S); chunks equal one `fast_flow` over their
        concatenation. block: rows per block (default: FAST_BLOCK on a CPU, the whole chunk elsewhere)."""
        if block is None and torch.device(device).type == "cpu":
            block = self.FAST_BLOCK
        if block is not None and block < 1:
            raise WavflowError(f"fast_flow block of {block} rows: expected at least 1")
        return FlowStream(self, batch, dtype, device, block)

    def sample(self, mel: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               z: torch.Tensor | None = None, source_track: SourceTrack | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One parallel pass: mel [B, n_mels, F] -> (x, M, log S), each [B, F * hop]; x is not clipped.

        z [B, F * hop] is the base noise (None: draw_noise from `generator`); temperature scales it, so
        x = temperature * z * S + M. source_track: the source, for a student with one (None: `source_track(mel)`).
        """
        length = mel.shape[-1] * self.mel_config.hop_length
        if z is None:
            z = self.draw_noise(mel.shape[0], length, generator)
        elif z.shape != (mel.shape[0], length):
            raise WavflowError(f"noise of shape {tuple(z.shape)}: expected {(mel.shape[0], length)} for this mel")
        z = z.to(mel.device, mel.dtype)
        return self._sample(z * temperature, mel, fast=not torch.is_grad_enabled(), track=source_track)

    def _sample(self, z: torch.Tensor, mel: torch.Tensor, fast: bool, track: SourceTrack | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_0 [B, T] -> (x, M, log S) [B, T] through the flows (`fast_flow` or `flow`), the harmonic mean added to
        x and M."""
        length = z.shape[-1]
        track = self.source_of(mel, track)
        cond = self.conditioning(mel, length, track)
        x, mean, log_scale = (self.fast_flow if fast else self.flow)(z, cond)
        h = self.mean_of(track, length)
        if h is None:
            return x, mean, log_scale
        h = h.to(x.dtype)
        return x + h, mean + h, log_scale

    def log_likelihood_of_own_sample(self, z: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """Student log-density of x = flow(z): mean_t [log p0(z_t) - log S_t], nats per sample [B]."""
        return (base_log_prob(z, self.config.base) - log_scale).mean(-1)

    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Base noise z_0 [batch, num_samples] from p0 (config.base), float32, on the generator's device (the CPU
        without one)."""
        return sample_base((batch, num_samples), self.config.base, device=noise_device(generator), generator=generator)

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
              frames: Sequence[int] | torch.Tensor | None = None, temperature: float | None = None,
              source_track: SourceTrack | None = None, **unknown: Any) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop] in [-1, 1], one parallel pass from the base noise [B, F * hop]
        (`noise`, or drawn from `generator`) at `temperature` (None: config.infer_temperature, the file's default).
        frames is not needed: the whole batch costs one pass. source_track: for a student with a source (None:
        predicted from the mel)."""
        refuse_options(self, unknown)
        temperature = self.config.infer_temperature if temperature is None else temperature
        x, _, _ = self.sample(mel, temperature=temperature, generator=generator, z=noise, source_track=source_track)
        return x.clamp(-1.0, 1.0)

    def remove_weight_norm(self) -> None:
        """No weight norm in the student: nothing to fold."""

    def streamer(self, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]) -> Streamer:
        """Causal flows whose context carries from chunk to chunk (student_sampling.StudentStreamer)."""
        return StudentStreamer(self, mel, noise, options)

    def export_spec(self) -> ExportSpec:
        """Inputs mel, the base noise z [B, T] and the temperature (default the file's); with a source, f0 and
        voiced [B, F] come out beside the audio."""
        outputs = ("audio", "f0", "voiced") if self.source is not None else ("audio",)
        return ExportSpec("temperature", float(self.config.infer_temperature), 1, outputs,
                          {"base_noise": self.config.base, "source": self.source is not None})

    def export_graph(self) -> nn.Module:
        return StudentGraph(self)

    # ------------------------------------------------------------------------------------------------------------
    # Step-by-step evaluation: the exact inverse x -> z, and a reference for the parallel pass

    def _sequential(self, values: torch.Tensor, cond: torch.Tensor, invert: bool, chunk: int = 1024,
                    progress: bool = False, compiled: bool | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step-by-step pass. invert=False: values = z_0 -> (x, M, log S). invert=True: values = x -> (z_0, M, log S).

        At step t every flow's (mu, s) needs only its input at t - 1, already known: forwards, flows run first to
        last; inverting, last to first, each peeling z_{k-1}[t] = (z_k[t] - mu_k[t]) / s_k[t] off its output.
        Each layer keeps a ring of its past inputs, so a step costs O(layers), not O(receptive field). compiled
        (default for float32, on any device: per-step work is far too small for a GPU) runs the loop compiled
        on the CPU (wavflow/kernels.py), without the per-op dispatch of the torch loop, its reference.
        """
        if compiled is None:
            compiled = values.dtype == torch.float32
        with progress_bar(values.shape[-1], progress, "student inversion" if invert else "student steps") as bar:
            if compiled:
                from .. import kernels

                heads = [(f.hidden.weight[:, :, 0], f.hidden.bias, f.out.weight[:, :, 0], f.out.bias)
                         for f in self.flows]
                out, log_scale = kernels.iaf_sequential([flatten_stack(f.stack) for f in self.flows], heads, values,
                                                        cond, invert, self.config.log_scale_min, chunk, bar)
            else:
                out, log_scale = self._steps_torch(values, cond, invert, chunk, bar)
        z, x = (out, values) if invert else (values, out)
        return out, x - z * torch.exp(log_scale), log_scale  # M from x = z_0 * S + M

    def _steps_torch(self, values: torch.Tensor, cond: torch.Tensor, invert: bool, chunk: int,
                     bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`_sequential`'s loop in plain torch, any dtype and device: (x or z_0 [B, T], log S [B, T])."""
        batch, length = values.shape
        flats = [flatten_stack(f.stack) for f in self.flows]
        steppers = [flat.stepper(batch, values.dtype, values.device) for flat in flats]
        order = list(reversed(range(len(flats)))) if invert else list(range(len(flats)))
        out, log_scale = torch.empty_like(values), torch.empty_like(values)
        prev = [values.new_zeros(batch) for _ in self.flows]  # flow k's input at t - 1, i.e. z_{k-1}[t-1]
        heads = [f.step_head for f in self.flows]
        with one_thread():
            for t0 in range(0, length, chunk):
                # every layer's projection of the conditioning, a chunk at a time: per flow [Tc, L, B, G]
                proj = [torch.einsum("bct,lgc->tlbg", cond[..., t0: t0 + chunk], flat.cond_w) for flat in flats]
                for t in range(t0, min(t0 + chunk, length)):
                    cur, ls = values[:, t], 0
                    for k in order:
                        mu, log_s = heads[k](steppers[k](prev[k], t, proj[k][t - t0]))
                        if invert:
                            cur = (cur - mu) * torch.exp(-log_s)
                            prev[k] = cur  # z_{k-1}[t]
                        else:
                            prev[k] = cur
                            cur = cur * torch.exp(log_s) + mu
                        ls = ls + log_s
                    out[:, t], log_scale[:, t] = cur, ls
                bar.update(min(chunk, length - t0))
        return out, log_scale

    @torch.no_grad()
    def invert(self, audio: torch.Tensor, mel: torch.Tensor,
               progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse, one step at a time: audio [B, T] -> (z_0 [B, T], log S [B, T]). O(T * layers), slow."""
        length = audio.shape[-1]
        track = self.source_of(mel)
        h = self.mean_of(track, length)
        if h is not None:
            audio = audio - h.to(audio.dtype)
        z, _, log_scale = self._sequential(audio, self.conditioning(mel, length, track), invert=True,
                                           progress=progress)
        return z, log_scale

    @torch.no_grad()
    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """[B] mean log-density per audio sample in nats (design.md section 2 scale) of real audio, via the exact
        inversion."""
        z, log_scale = self.invert(audio, mel, progress=progress)
        return self.log_likelihood_of_own_sample(z, log_scale)

    # ------------------------------------------------------------------------------------------------------------
    # Distillation

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def attach_teacher(self, teacher: nn.Module, sha256: str | None = None) -> None:
        """Freeze `teacher` (eval mode, no gradients) and use it in training_loss. It is not a submodule: never
        saved with the student, moved by .to(), or handed to the optimiser. `sha256` (the teacher file's hash)
        is recorded so the student's checkpoint says which teacher it was distilled from; the hash of its
        weights now (`teacher_weights_sha256`, models.weights_sha256) lets a caller check it stayed frozen."""
        name = getattr(getattr(teacher, "dist", None), "name", None)
        if name not in ("gaussian", "mixture"):
            raise WavflowError(f"cannot distil from a teacher with '{name}' output: the student needs a Gaussian "
                               "or logistic-mixture teacher (a mu-law categorical has no density to match)")
        t_mel = getattr(teacher, "mel_config", None)
        if t_mel is not None and t_mel != self.mel_config:
            raise WavflowError(f"teacher mel settings {t_mel} differ from the student's {self.mel_config}")
        if self.source is not None:
            self._take_source(teacher)
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = [teacher]
        self.teacher_sha256 = sha256
        self.teacher_weights_sha256 = weights_sha256(teacher)

    def _take_source(self, teacher: nn.Module) -> None:
        """A student whose harmonic amplitudes are still at their zero start (new, or just grown) takes the
        teacher's pitch predictor and amplitudes: distillation trains the amplitudes further but not the pitch
        predictor (no pitch loss reaches it), so it must come from a teacher that learnt it."""
        if getattr(teacher, "source", None) is None:
            raise WavflowError("a student with a source distils from a teacher with one (its pitch predictor comes "
                               "from the teacher): give a teacher trained with model_config.source_harmonics")
        if any(p.any() for p in self.harmonics.out.parameters()):
            return  # trained: its own
        mine, theirs = self.config, teacher.config
        if (mine.source_harmonics, mine.source_channels) != (theirs.source_harmonics, theirs.source_channels):
            raise WavflowError(f"the student's source (source_harmonics={mine.source_harmonics}, source_channels="
                               f"{mine.source_channels}) must match the teacher's ({theirs.source_harmonics}, "
                               f"{theirs.source_channels}) to take it over")
        with torch.no_grad():
            for name in ("source", "harmonics"):
                getattr(self, name).load_state_dict(getattr(teacher, name).state_dict())

    def distillation_kl(self, mean: torch.Tensor, log_scale: torch.Tensor,
                        params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step (KL(q_t || p_t), scale regulariser), each [B, T], from the student's (M, log S) [B, T] and the
        teacher's distribution parameters [B, P, T] computed on the student's sample."""
        c = self.config
        dist = self.teacher.dist
        if dist.name == "gaussian":
            mu_p, log_sigma_p = dist.mu_log_sigma(params)
            if c.base == "gaussian":
                kl = gaussian_reverse_kl(mean, log_scale, mu_p, log_sigma_p)
                log_std = log_scale
            else:  # logistic student: analytic cross-entropy minus analytic entropy
                kl = (gaussian_cross_entropy(mean, log_scale, mu_p, log_sigma_p, c.base)
                      - base_entropy(log_scale, c.base))
                log_std = log_scale + 0.5 * math.log(math.pi ** 2 / 3)  # the logistic's standard deviation
            reg = log_scale_regularizer(log_std, log_sigma_p, c.scale_regularizer)
        else:
            logits, means, log_scales = dist.split(params)
            kl = mixture_reverse_kl(mean, log_scale, logits, means, log_scales, c.mc_samples, c.base)
            reg = torch.zeros_like(kl)
        return kl, reg

    def training_loss(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """audio [B, T], mel [B, n_mels, F] -> (KL + regulariser + STFT loss, logs). Needs attach_teacher first.

        The student's sample comes from fresh noise; the teacher sees only that sample (teacher forcing over it),
        once. Gradients reach the student through (M, S) and through the teacher's input; none reach the
        teacher's weights (frozen). The real audio enters only through the STFT loss.
        """
        teacher = self.teacher
        if teacher is None:
            raise WavflowError("the student needs a teacher: call attach_teacher(teacher, sha256) (trainer: "
                               "set 'teacher: PATH' in the config)")
        c = self.config
        z = sample_base(audio.shape, c.base, dtype=audio.dtype, device=audio.device)
        x, mean, log_scale = self._sample(z, mel, fast=False)
        params = teacher(x, mel)
        kl, reg = self.distillation_kl(mean, log_scale, params)
        sc, mag = stft_loss(x, audio, c.stft_resolutions)
        loss = c.kl_weight * (kl.mean() + reg.mean()) + c.stft_weight * (sc + mag)
        with torch.no_grad():
            logs = {
                "kl": kl.mean().item(),
                "scale_reg": reg.mean().item(),
                "stft": (sc + mag).item(),
                "stft_sc": sc.item(),
                "stft_mag": mag.item(),
                "student_rms": x.pow(2).mean().sqrt().item(),
                "real_rms": audio.pow(2).mean().sqrt().item(),
                "lsd_db": log_spectral_distance(x, audio).mean().item(),
                "log_scale": log_scale.mean().item(),
            }
        return loss, logs
