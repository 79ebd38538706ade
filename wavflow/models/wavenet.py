"""WaveNet teacher: a causal dilated-convolution autoregressive vocoder (design.md section 4).

    p(x | mel) = prod_t p(x_t | x_<t, mel),   p(x_t | ...) Gaussian / logistic mixture / mu-law (distributions.py)

Training is teacher-forced and parallel: `forward(audio, mel)` feeds audio shifted right by one sample and
returns, at every t, the parameters of the distribution of x_t. Generation is sequential, three ways:
  naive   recompute the whole receptive field (505 samples for the default) for every new sample; the reference
  cached  each dilated layer keeps a queue of its last (k-1)*d inputs, so one sample costs one matrix-vector
          product per layer; the mel's projections into every layer's gate are computed for a chunk of samples
          before the loop, never per step. On CPU the loop runs compiled (numba, float32), over all layers and
          all utterances of a batch, with the output head and the sampler inside; on a GPU the torch steps of a
          chunk of samples are captured once as a CUDA graph and replayed (`_CachedSteps`).
  batched either method over several utterances of different lengths (`lengths`); a finished utterance drops
          out of the compiled loop and its output beyond its length is zero.
All methods draw the same noise from the same generator, so they produce the same audio (tests check it).

Speed (tools/wavenet_speed.py): one sample of the default teacher is 3.15 M multiply-adds over 12.6 MB of
float32 weights. At batch 1 the compiled loop streams those weights from L3 for every sample (~0.28 ms at the
~44 GB/s one core gets here), which bounds it near 3,500 samples/s per core; torch ops per step would instead
cost ~200 dispatches (~1 ms). Batches reuse each weight row across utterances and become compute-bound.
On an H100 the same ~170 kernels per sample take ~3.3 ms as Python dispatches and ~0.45 ms as a replayed
CUDA graph (301 vs 2,210 samples/s at batch 1, fp32).
"""
from __future__ import annotations

import math
import numbers
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import Distribution, Gaussian, MixtureOfLogistics, build_distribution
from ..errors import WavflowError
from ..layers import MelUpsampler, WaveNetStack, receptive_field, dilations_for
from ..frontend import MelConfig

METHODS = ("cached", "naive", "cached_torch")
OUTPUTS = ("gaussian", "mixture", "mulaw")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class WaveNetConfig:
    layers: int = 24  # residual layers
    cycles: int = 4  # dilation cycles: dilations 1, 2, ..., 2^(layers/cycles - 1), repeated
    kernel_size: int = 3  # causal conv kernel (2 or 3); receptive field (k-1) * sum(dilations) + 1 = 505
    residual_channels: int = 128
    gate_channels: int = 256  # split into tanh and sigmoid halves: 128 gated units
    skip_channels: int = 128
    upsample_channels: int = 80  # channels of the upsampled mel that every layer projects into its gate
    upsample_factors: tuple[int, ...] = (4, 4, 4, 4)  # product must equal the mel hop (256)
    context_kernel: int = 5  # frame-context conv of the upsampler, across mel frames
    output: str = "gaussian"  # "gaussian" | "mixture" (16-bit discretised logistics) | "mulaw" (256-way)
    log_scale_min: float = -9.0  # floor of log sigma (Gaussian) or of each logistic's log scale (mixture)
    mixture_components: int = 10
    mixture_bits: int = 16
    mulaw_channels: int = 256

    def __post_init__(self) -> None:
        # Every value that cannot build a model is refused here, by name and value, before any layer exists
        # (the trainer's CLI turns the WavflowError into one line); layers.py keeps ValueErrors as a last line
        # of defence. upsample_factors against the mel hop is WaveNet's check (it needs the MelConfig).
        problems = []
        for name in ("layers", "cycles", "residual_channels", "skip_channels", "upsample_channels",
                     "mixture_components"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if _is_int(self.layers) and _is_int(self.cycles) and self.layers >= 1 and self.cycles >= 1 \
                and self.layers % self.cycles:
            problems.append(f"layers={self.layers} must be a multiple of cycles={self.cycles} (each dilation "
                            f"cycle 1, 2, 4, ... has layers / cycles layers)")
        if not _is_int(self.kernel_size) or self.kernel_size < 2:
            problems.append(f"kernel_size={self.kernel_size!r} must be an integer >= 2 (a causal conv needs at "
                            f"least the past sample and the current one)")
        if not _is_int(self.gate_channels) or self.gate_channels < 2 or self.gate_channels % 2:
            problems.append(f"gate_channels={self.gate_channels!r} must be an even integer >= 2 (tanh and sigmoid "
                            f"halves)")
        if not _is_int(self.context_kernel) or self.context_kernel < 1 or self.context_kernel % 2 == 0:
            problems.append(f"context_kernel={self.context_kernel!r} must be an odd integer >= 1 (a conv centred "
                            f"on each mel frame)")
        factors = self.upsample_factors
        if not isinstance(factors, (tuple, list)) or not factors \
                or not all(_is_int(f) and f >= 1 for f in factors):
            problems.append(f"upsample_factors={factors!r} must be a non-empty list of integers >= 1")
        else:
            self.upsample_factors = tuple(int(f) for f in factors)  # YAML and JSON give lists
        if self.output not in OUTPUTS:
            problems.append(f"output={self.output!r} is not a known WaveNet output; known: {', '.join(OUTPUTS)}")
        if not _is_real(self.log_scale_min):
            problems.append(f"log_scale_min={self.log_scale_min!r} must be a finite number")
        if not _is_int(self.mixture_bits) or not 1 <= self.mixture_bits <= 24:
            problems.append(f"mixture_bits={self.mixture_bits!r} must be an integer from 1 to 24 (2^bits levels "
                            f"in [-1, 1], float32 resolves 24 bits)")
        if not _is_int(self.mulaw_channels) or self.mulaw_channels < 2:
            problems.append(f"mulaw_channels={self.mulaw_channels!r} must be an integer >= 2")
        if problems:
            raise WavflowError(f"invalid WaveNetConfig: {'; '.join(problems)}")

    @classmethod
    def tiny(cls, **overrides) -> "WaveNetConfig":
        """A CPU-sized teacher for tests: 8 layers in 2 cycles (receptive field 61), 16/32/16 channels."""
        d = dict(layers=8, cycles=2, residual_channels=16, gate_channels=32, skip_channels=16, upsample_channels=16)
        d.update(overrides)
        return cls(**d)


class WaveNet(nn.Module):
    model_type: ClassVar[str] = "wavenet"

    def __init__(self, config: WaveNetConfig = WaveNetConfig(), mel_config: MelConfig = MelConfig()):
        super().__init__()
        self.config, self.mel_config = config, mel_config
        # The config's own values were checked when it was made (WaveNetConfig.__post_init__); only the fit to
        # the mel is left.
        if math.prod(config.upsample_factors) != mel_config.hop_length:
            raise WavflowError(f"invalid WaveNetConfig: upsample_factors {config.upsample_factors} multiply to "
                               f"{math.prod(config.upsample_factors)}, but the mel hop is {mel_config.hop_length}")
        options = {"gaussian": {"log_sigma_min": config.log_scale_min},
                   "mixture": {"components": config.mixture_components, "bits": config.mixture_bits,
                               "log_scale_min": config.log_scale_min},
                   "mulaw": {"channels": config.mulaw_channels}}
        self.dist: Distribution = build_distribution(config.output, **options.get(config.output, {}))
        self.upsampler = MelUpsampler(mel_config.n_mels, config.upsample_channels, config.upsample_factors,
                                      config.context_kernel)
        self.stack = WaveNetStack(1, config.residual_channels, config.gate_channels, config.skip_channels,
                                  config.upsample_channels, config.kernel_size, config.layers, config.cycles)
        # skip sum -> ReLU -> 1x1 -> ReLU -> 1x1 -> distribution parameters
        self.out1 = nn.Conv1d(config.skip_channels, config.skip_channels, 1)
        self.out2 = nn.Conv1d(config.skip_channels, self.dist.num_params, 1)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.config.kernel_size, dilations_for(self.config.layers, self.config.cycles))

    # ------------------------------------------------------------------------------------------------------------
    # Teacher forcing

    def conditioning(self, mel: torch.Tensor, length: int) -> torch.Tensor:
        """mel [B, n_mels, F] -> upsampled conditioning [B, upsample_channels, length] (F * hop >= length)."""
        self._check_mel(mel)
        if mel.shape[-1] * self.mel_config.hop_length < length:
            raise WavflowError(f"mel of {mel.shape[-1]} frames covers {mel.shape[-1] * self.mel_config.hop_length} "
                               f"samples, fewer than the {length} asked for")
        return self.upsampler(mel)[..., :length]

    def head(self, skips: torch.Tensor) -> torch.Tensor:
        """skip sum [B, S, T] -> distribution parameters [B, P, T], in float32 even under autocast: a bf16 mean
        is off by ~1e-3, which is many sigmas of a confident prediction."""
        with torch.autocast(device_type=skips.device.type, enabled=False):
            if skips.dtype in (torch.float16, torch.bfloat16):
                skips = skips.float()
            return self.out2(F.relu(self.out1(F.relu(skips))))

    def forward(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """audio [B, T], mel [B, n_mels, F] -> parameters [B, P, T] of p(x_t | x_<t, mel) at every t."""
        c = self.conditioning(mel, audio.shape[-1])
        x = F.pad(self.dist.prepare_input(audio), (1, -1))  # shift right: position t sees x[t-1], x[0] sees 0
        return self.head(self.stack(x.unsqueeze(1), c))

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """[B] mean log-density per sample in nats, density of amplitude in [-1, 1] (design.md section 2)."""
        return self.dist.log_prob(self(audio, mel), audio).mean(dim=-1)

    def training_loss(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nll = -self.log_likelihood(audio, mel).mean()
        return nll, {"nll": nll.item(), "bits_per_sample": nll.item() / math.log(2)}

    def remove_weight_norm(self) -> None:
        """No weight norm in the teacher: nothing to fold."""

    # ------------------------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop] by cached generation (options: temperature, method, lengths)."""
        options.setdefault("method", "cached")
        return self.generate(mel, generator=generator, **options)

    @torch.no_grad()
    def generate(self, mel: torch.Tensor, method: str = "cached", temperature: float = 1.0,
                 generator: torch.Generator | None = None, lengths: Sequence[int] | torch.Tensor | None = None,
                 frames: Sequence[int] | torch.Tensor | None = None, noise: torch.Tensor | None = None,
                 progress: bool | None = None, threads: int | None = None) -> torch.Tensor:
        """Sample audio [B, F * hop] for mel [B, n_mels, F], one sample at a time.

        method: "cached" (compiled on CPU, torch elsewhere), "naive" (reference), "cached_torch".
        temperature scales sigma / the logistic scales / divides the mu-law logits (0: the mean or the argmax).
        lengths (samples) or frames (mel frames, times hop) per utterance for a padded batch: output beyond each
        length is zero. noise [B, N, F * hop] replaces the draw from `generator` (distribution.draw_noise).
        progress: tqdm bar on stderr; None shows it for long runs on a terminal.
        threads: compiled cached generation runs groups of utterances in this many threads (default: torch's
        thread count); one utterance always runs in one thread (the layers are sequential).
        """
        self._check_mel(mel)
        if method not in METHODS:
            raise WavflowError(f"unknown generation method '{method}'; known: {', '.join(METHODS)}")
        if not temperature >= 0:
            raise WavflowError(f"temperature must be >= 0, got {temperature}")
        B, T = mel.shape[0], mel.shape[-1] * self.mel_config.hop_length
        lens = self._lengths(B, T, lengths, frames)
        n_noise = self.dist.noise_channels
        if noise is None:
            noise = self.dist.draw_noise(B, T, generator, device="cpu").to(mel.device)
        elif tuple(noise.shape) != (B, n_noise, T):
            raise WavflowError(f"noise has shape {tuple(noise.shape)}, expected {(B, n_noise, T)}")
        if progress is None:
            progress = T * B >= 4 * self.mel_config.sample_rate and sys.stderr.isatty()
        was_training = self.training
        self.eval()
        try:
            c = self.upsampler(mel)  # [B, C, T]
            if method == "naive":
                audio = self._generate_naive(c, noise, temperature, lens, progress)
            elif method == "cached" and c.device.type == "cpu":
                audio = self._generate_numba(c, noise, temperature, lens, progress, threads=threads)
            else:
                audio = self._generate_cached_torch(c, noise, temperature, lens, progress,
                                                    graph=method == "cached" and c.device.type == "cuda")
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

    def _check_mel(self, mel: torch.Tensor) -> None:
        n = self.mel_config.n_mels
        if mel.dim() != 3 or mel.shape[1] != n:
            raise WavflowError(f"mel has shape {tuple(mel.shape)}, expected [batch, {n}, frames]")

    def _progress(self, total: int, enabled: bool):
        from tqdm import tqdm
        return tqdm(total=total, unit="sample", unit_scale=True, disable=not enabled, desc="wavenet",
                    file=sys.stderr, leave=False)

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
        with self._progress(T_run, progress) as bar:
            for t in range(T_run):
                s = max(0, t - rf + 1)
                params = self._step_params(x_in[..., s: t + 1], c[..., s: t + 1])
                x_in[:, 0, t + 1] = self.dist.sample(params, temperature, noise=noise[..., t: t + 1])[:, 0]
                bar.update(1)
        return x_in[:, 0, 1:]

    # -- cached, torch --------------------------------------------------------------------------------------------

    def _flat_weights(self) -> dict[str, torch.Tensor]:
        """The stack as matrices for one-step evaluation, [in, out] so a step is x @ W.

        conv [L, k*R, G]: row j*R + r holds tap j (lag (k-1-j)*d) of input channel r; cond [L, C, G];
        res_skip [L, G/2, R+S]. All layers have equal sizes, so they stack.
        """
        blocks = self.stack.blocks
        k, R = self.config.kernel_size, self.config.residual_channels
        conv = torch.stack([b.conv.weight.permute(2, 1, 0).reshape(k * R, -1) for b in blocks])
        w = {
            "in_w": self.stack.input.weight[:, 0, 0], "in_b": self.stack.input.bias,
            "conv_w": conv, "conv_b": torch.stack([b.conv.bias for b in blocks]),
            "cond_w": torch.stack([b.cond.weight[:, :, 0].t() for b in blocks]),
            "rs_w": torch.stack([b.res_skip.weight[:, :, 0].t() for b in blocks]),
            "rs_b": torch.stack([b.res_skip.bias for b in blocks]),
            "out1_w": self.out1.weight[:, :, 0].t(), "out1_b": self.out1.bias,
            "out2_w": self.out2.weight[:, :, 0].t(), "out2_b": self.out2.bias,
        }
        return {name: v.detach().contiguous() for name, v in w.items()}

    def _cond_chunk(self, w: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """Every layer's gate input from the mel, plus the conv bias, for a chunk: c [B, C, Tc] -> [Tc, B, L, G]."""
        return (torch.einsum("bct,lcg->tblg", c, w["cond_w"]) + w["conv_b"]).contiguous()

    def _chunk_size(self, B: int) -> int:
        # bound the precomputed conditioning (Tc x B x L x G floats) to ~32 MB
        per_step = B * self.config.layers * self.config.gate_channels * 4
        return max(64, min(4096, (32 << 20) // max(per_step, 1)))

    @torch.no_grad()
    def _generate_cached_torch(self, c: torch.Tensor, noise: torch.Tensor, temperature: float,
                               lens: torch.Tensor, progress: bool, forced: torch.Tensor | None = None,
                               graph: bool = False) -> torch.Tensor:
        """Cached generation in torch, one `_CachedSteps.step` per sample. Returns audio [B, T].

        graph (CUDA only): the steps of one chunk are captured once as a CUDA graph and replayed chunk after
        chunk, so a sample costs ~170 kernel replays instead of ~170 Python dispatches and launches.
        forced [B, T]: feed these samples instead of the drawn ones and return the parameters [B, P, T]
        (step-by-step teacher forcing, which tests compare with `forward`).
        """
        B, _, T = c.shape
        T_run = int(lens.max()) if B else 0
        dev = c.device
        # under autocast the matmuls run in its dtype; the weights are cast once here, not at every step
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else torch.float32
        chunk = min(128, max(T_run, 1)) if graph else self._chunk_size(B)
        with torch.autocast(dev.type, enabled=False):
            steps = _CachedSteps(self, B, chunk, temperature, dev, dtype)
            out = torch.zeros(B, T, device=dev)
            params_out = torch.zeros(B, self.dist.num_params, T, device=dev) if forced is not None else None
            if forced is not None:
                forced = self.dist.prepare_input(forced).float()
            replay = steps.capture() if graph and T_run else None
            with self._progress(T_run, progress) as bar:
                for t0 in range(0, T_run, chunk):
                    t1 = min(t0 + chunk, T_run)
                    steps.load(c, noise, t0, t1)
                    if replay is not None:
                        replay.replay()
                    else:
                        for s in range(t1 - t0):
                            params = steps.step(s)
                            if forced is not None:
                                params_out[:, :, t0 + s] = params
                                steps.x_prev.copy_(forced[:, t0 + s])
                    out[:, t0:t1] = steps.out[: t1 - t0].t()
                    bar.update(t1 - t0)
        return params_out if forced is not None else out

    # -- cached, compiled -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _generate_numba(self, c: torch.Tensor, noise: torch.Tensor, temperature: float, lens: torch.Tensor,
                        progress: bool, forced: torch.Tensor | None = None,
                        threads: int | None = None) -> torch.Tensor:
        """Cached generation in one compiled loop over time, layers and utterances (float32, CPU).

        Utterances are sorted by length so the ones still running are a prefix of the batch; with more than
        one torch thread the batch is split into independent groups that run in parallel threads (the kernel
        releases the GIL). Returns audio [B, T] (or with `forced`, the parameters [B, P, T]).
        """
        cfg, dist = self.config, self.dist
        B, _, T = c.shape
        w = {n: v.float() for n, v in self._flat_weights().items()}
        # the compiled loop wants [out, in] matrices (see _matmul_acc)
        np_w = {n: (v.transpose(-1, -2) if n in ("conv_w", "rs_w", "out1_w", "out2_w") else v).contiguous().numpy()
                for n, v in w.items() if n not in ("cond_w", "conv_b")}
        P = dist.num_params
        if isinstance(dist, Gaussian):
            kind, table = 0, np.zeros(1, np.float32)
        elif isinstance(dist, MixtureOfLogistics):
            kind, table = 1, np.zeros(1, np.float32)
        else:
            kind, table = 2, dist.values.numpy().astype(np.float32)
        dil = np.asarray(self.stack.dilations, dtype=np.int64)
        qlen = (cfg.kernel_size - 1) * dil
        qoff = np.concatenate([[0], np.cumsum(qlen)[:-1]]).astype(np.int64)
        order = torch.argsort(lens, descending=True, stable=True)
        lens_s = lens[order].numpy().astype(np.int64)
        noise_s = noise[order].float().cpu().numpy()
        noise_s = np.ascontiguousarray(noise_s.transpose(2, 0, 1))  # [T, B, N]: one step's noise is contiguous
        teacher = forced is not None
        forced_s = (np.ascontiguousarray(dist.prepare_input(forced)[order].float().numpy())
                    if teacher else np.zeros((B, 1), np.float32))
        out = np.zeros((B, T), np.float32)
        params_out = np.zeros((B, P, T), np.float32) if teacher else np.zeros((1, 1, 1), np.float32)
        # per-utterance running state, kept across chunks
        queue = np.zeros((B, int(qlen.sum()), cfg.residual_channels), np.float32)
        x_prev = np.zeros(B, np.float32)
        T_run = int(lens_s[0]) if B else 0
        groups = _split_groups(lens_s, threads or torch.get_num_threads())
        chunk = self._chunk_size(B)
        c_s = c[order].float()
        pool = ThreadPoolExecutor(len(groups)) if len(groups) > 1 else None
        try:
            with self._progress(T_run, progress) as bar:
                for t0 in range(0, T_run, chunk):
                    t1 = min(t0 + chunk, T_run)
                    cond = self._cond_chunk(w, c_s[..., t0:t1]).reshape(t1 - t0, B, -1).numpy()

                    def run(g: tuple[int, int]) -> None:
                        b0, b1 = g
                        if lens_s[b0] <= t0:
                            return
                        # contiguous copies: one compiled specialisation serves any grouping
                        _cached_loop(t0, t1, np.ascontiguousarray(cond[:, b0:b1]),
                                     np.ascontiguousarray(noise_s[t0:t1, b0:b1]), lens_s[b0:b1], x_prev[b0:b1],
                                     queue[b0:b1], out[b0:b1], teacher, forced_s[b0:b1] if teacher else forced_s,
                                     params_out[b0:b1] if teacher else params_out,
                                     np_w["in_w"], np_w["in_b"], np_w["conv_w"], np_w["rs_w"], np_w["rs_b"],
                                     np_w["out1_w"], np_w["out1_b"], np_w["out2_w"], np_w["out2_b"],
                                     dil, qoff, cfg.kernel_size, kind, np.float32(temperature),
                                     np.float32(cfg.log_scale_min), table)

                    if pool is None:
                        run(groups[0])
                    else:
                        list(pool.map(run, groups))
                    bar.update(t1 - t0)
        finally:
            if pool is not None:
                pool.shutdown()
        inverse = torch.argsort(order)
        if teacher:
            return torch.from_numpy(params_out)[inverse]
        return torch.from_numpy(out)[inverse]


class _CachedSteps:
    """Cached WaveNet generation as fixed-shape torch steps on fixed buffers, so a CUDA graph can replay them.

    Every layer's past inputs live in one ring, hist [B, L * H, R] with H = (k - 1) * max dilation: layer l's
    input at step t sits in row l * H + t mod H. The step counter t is a device tensor that each step
    increments, so no kernel depends on a Python value that changes from step to step. A step first gathers
    the taps at lags >= 1 of all layers at once (they were written by earlier steps) and projects them with the
    mel conditioning in one batched matmul; only the lag-0 tap has to run layer after layer. Skip outputs are
    kept per layer and projected in one matmul at the end; the output head runs in float32 as in `head`.

    load() copies a chunk of conditioning [N, L, B, G] and noise [N, B, n, 1] into the buffers; step(s) reads
    position s of them and writes out[s] [B].
    """

    def __init__(self, model: "WaveNet", B: int, chunk: int, temperature: float, device: torch.device,
                 dtype: torch.dtype):
        cfg = model.config
        k, R, G = cfg.kernel_size, cfg.residual_channels, cfg.gate_channels
        dil = model.stack.dilations
        L, H = len(dil), (k - 1) * max(dil)
        self.model, self.B, self.L, self.H, self.k, self.R, self.Gh = model, B, L, H, k, R, G // 2
        self.temperature, self.dtype = temperature, dtype
        blocks = model.stack.blocks

        def put(t: torch.Tensor, dt: torch.dtype = dtype) -> torch.Tensor:
            return t.detach().to(device=device, dtype=dt).contiguous()

        res_scale, skip_scale = math.sqrt(0.5), math.sqrt(1.0 / L)
        # conv taps j = 0 .. k-2 look (k - 1 - j) * d steps back; rows j * R + r of w_past
        self.w_past = put(torch.stack([b.conv.weight[:, :, : k - 1].permute(2, 1, 0).reshape((k - 1) * R, G)
                                       for b in blocks]))  # [L, (k-1) R, G]
        self.w_now = put(torch.stack([b.conv.weight[:, :, k - 1].t() for b in blocks]))  # [L, R, G]
        self.cond_w = put(torch.stack([b.cond.weight[:, :, 0].t() for b in blocks]))  # [L, C, G]
        self.conv_b = put(torch.stack([b.conv.bias for b in blocks]))  # [L, G]
        rs_w = torch.stack([b.res_skip.weight[:, :, 0].t() for b in blocks])  # [L, G/2, R + S]
        rs_b = torch.stack([b.res_skip.bias for b in blocks])  # [L, R + S]
        self.res_w, self.res_b = put(res_scale * rs_w[:, :, :R]), put(res_scale * rs_b[:, :R])
        self.skip_w = put(skip_scale * rs_w[:, :, R:])  # [L, G/2, S]
        self.skip_b = put(skip_scale * rs_b[:, R:].sum(0), torch.float32)
        self.in_w, self.in_b = put(model.stack.input.weight[:, 0, 0]), put(model.stack.input.bias)
        self.out1_w, self.out1_b = put(model.out1.weight[:, :, 0].t(), torch.float32), put(model.out1.bias, torch.float32)
        self.out2_w, self.out2_b = put(model.out2.weight[:, :, 0].t(), torch.float32), put(model.out2.bias, torch.float32)
        lags = torch.tensor([[(k - 1 - j) * d for j in range(k - 1)] for d in dil], dtype=torch.long)
        self.lags = lags.reshape(-1).to(device)  # [L (k-1)]
        self.lag_base = (torch.arange(L)[:, None] * H).expand(L, k - 1).reshape(-1).to(device)
        self.row_base = (torch.arange(L) * H).to(device)  # [L]
        n = model.dist.noise_channels
        self.hist = torch.zeros(B, L * H, R, device=device, dtype=dtype)
        self.h = torch.zeros(L, B, R, device=device, dtype=dtype)  # h[l]: layer l's input at this step
        self.gates = torch.zeros(L, B, self.Gh, device=device, dtype=dtype)
        self.x_prev = torch.zeros(B, device=device, dtype=dtype)
        self.t = torch.zeros((), dtype=torch.long, device=device)
        self.cond = torch.zeros(chunk, L, B, G, device=device, dtype=dtype)
        self.noise = torch.zeros(chunk, B, n, 1, device=device)
        self.out = torch.zeros(chunk, B, device=device)
        self.chunk = chunk

    def reset(self) -> None:
        for buf in (self.hist, self.h, self.gates, self.x_prev, self.t, self.out):
            buf.zero_()

    def load(self, c: torch.Tensor, noise: torch.Tensor, t0: int, t1: int) -> None:
        """Conditioning of samples [t0, t1) from the upsampled mel c [B, C, T], with the conv bias, and their noise."""
        n = t1 - t0
        torch.add(torch.einsum("bct,lcg->tlbg", c[..., t0:t1].to(self.dtype), self.cond_w), self.conv_b[:, None],
                  out=self.cond[:n])
        self.noise[:n].copy_(noise[..., t0:t1].permute(2, 0, 1)[..., None])
        if n < self.chunk:  # a replayed graph runs the whole chunk; the extra steps' output is never read
            self.cond[n:].zero_()
            self.noise[n:].fill_(0.5)

    def step(self, s: int) -> torch.Tensor:
        """One sample at chunk position s: writes out[s] and the state; returns the parameters [B, P]."""
        B, L, H, k, R, Gh = self.B, self.L, self.H, self.k, self.R, self.Gh
        rows = torch.remainder(self.t - self.lags, H) + self.lag_base
        past = self.hist.index_select(1, rows).view(B, L, (k - 1) * R).transpose(0, 1)  # [L, B, (k-1) R]
        z_all = torch.baddbmm(self.cond[s], past, self.w_past)  # [L, B, G]
        torch.addcmul(self.in_b, self.x_prev[:, None], self.in_w[None, :], out=self.h[0])
        for l in range(L):
            z = torch.addmm(z_all[l], self.h[l], self.w_now[l])
            torch.mul(torch.tanh(z[:, :Gh]), torch.sigmoid(z[:, Gh:]), out=self.gates[l])
            if l + 1 < L:  # the last layer's residual output is never used
                torch.addmm(self.h[l], self.gates[l], self.res_w[l], beta=math.sqrt(0.5), out=self.h[l + 1])
                self.h[l + 1].add_(self.res_b[l])
        skips = torch.bmm(self.gates, self.skip_w).sum(0).float() + self.skip_b
        a = torch.relu(torch.addmm(self.out1_b, torch.relu(skips), self.out1_w))
        params = torch.addmm(self.out2_b, a, self.out2_w)
        x = self.model.dist.sample(params[:, :, None], self.temperature, noise=self.noise[s])[:, 0]
        self.out[s].copy_(x)
        self.x_prev.copy_(x)
        self.hist.index_copy_(1, self.row_base + torch.remainder(self.t, H), self.h.transpose(0, 1))
        self.t.add_(1)
        return params

    def capture(self) -> "torch.cuda.CUDAGraph":
        """Record the `chunk` steps of one chunk as a CUDA graph, after a warm-up that leaves the state at zero."""
        side = torch.cuda.Stream(self.t.device)
        side.wait_stream(torch.cuda.current_stream(self.t.device))
        with torch.cuda.stream(side):  # first calls create cuBLAS handles and workspaces, which capture forbids
            for s in range(min(3, self.chunk)):
                self.step(s)
        torch.cuda.current_stream(self.t.device).wait_stream(side)
        self.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for s in range(self.chunk):
                self.step(s)
        return graph


def _split_groups(lens_sorted: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Split a length-sorted batch into up to `threads` contiguous groups of about equal work (sum of lengths)."""
    B = len(lens_sorted)
    n = max(1, min(threads, B))
    if n == 1:
        return [(0, B)]
    total = float(lens_sorted.sum())
    bounds, acc, start = [], 0.0, 0
    for b in range(B):
        acc += lens_sorted[b]
        if len(bounds) < n - 1 and acc >= total * (len(bounds) + 1) / n and b + 1 < B:
            bounds.append((start, b + 1))
            start = b + 1
    bounds.append((start, B))
    return bounds


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def _exp(x):
    """e^x in float32 to ~1e-7 relative, in plain arithmetic so the gate loop vectorises (libm's expf does
    not): x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial, 2^n built in the exponent
    bits. Clamped to [-87, 87], where float32 neither overflows nor goes subnormal."""
    x = min(max(x, np.float32(-87.0)), np.float32(87.0))
    n = np.float32(math.floor(x * np.float32(1.4426950408889634) + np.float32(0.5)))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # ln2 in two parts: r stays exact
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _matmul_acc(W, X, Z, n):
    """Z[b, o] += sum_i W[o, i] X[b, i] for b < n; W [out, in].

    Four outputs per pass over X[b]: five loads feed four multiply-adds (one output per pass needs two loads
    per multiply-add), and four rows of W stay in L1 while they serve every utterance of the batch.
    """
    n_out, n_in = W.shape
    o = 0
    while o + 4 <= n_out:
        for b in range(n):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for i in range(n_in):
                x = X[b, i]
                a0 += W[o, i] * x
                a1 += W[o + 1, i] * x
                a2 += W[o + 2, i] * x
                a3 += W[o + 3, i] * x
            Z[b, o] += a0
            Z[b, o + 1] += a1
            Z[b, o + 2] += a2
            Z[b, o + 3] += a3
        o += 4
    while o < n_out:
        for b in range(n):
            a0 = np.float32(0.0)
            for i in range(n_in):
                a0 += W[o, i] * X[b, i]
            Z[b, o] += a0
        o += 1


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _cached_loop(t0, t1, cond, noise, lens, x_prev, queue, out, teacher, forced, params_out,
                 in_w, in_b, conv_w, rs_w, rs_b, out1_w, out1_b, out2_w, out2_b,
                 dil, qoff, k, kind, temperature, log_scale_min, table):
    """Steps t0..t1-1 of cached generation for a length-sorted group of utterances.

    cond [Tc, B, L*G] (mel projections + conv bias), noise [Tc, B, N], queue [B, sum_l (k-1) d_l, R] (state),
    x_prev [B] (state), out [B, T]. Weights are [out, in]: conv_w [L, G, k*R] (column j*R + r is tap j, lag
    (k-1-j) d, of channel r), rs_w [L, R+S, G/2], out1_w [S, S], out2_w [P, S].
    """
    B = out.shape[0]
    L, G, KR = conv_w.shape
    R = KR // k
    Gh = G // 2
    S = out1_w.shape[0]
    P = out2_w.shape[0]
    res_scale = np.float32(math.sqrt(0.5))
    skip_scale = np.float32(math.sqrt(1.0 / L))
    taps = np.zeros((B, KR), np.float32)
    z = np.zeros((B, G), np.float32)
    gated = np.zeros((B, Gh), np.float32)
    rs = np.zeros((B, R + S), np.float32)
    h = np.zeros((B, R), np.float32)
    skips = np.zeros((B, S), np.float32)
    a0 = np.zeros((B, S), np.float32)
    a1 = np.zeros((B, S), np.float32)
    params = np.zeros((B, P), np.float32)
    probs = np.zeros(P, np.float64)
    active = B
    for t in range(t0, t1):
        while active > 0 and lens[active - 1] <= t:
            active -= 1
        if active == 0:
            break
        tc = t - t0
        for b in range(active):
            for r in range(R):
                h[b, r] = in_w[r] * x_prev[b] + in_b[r]
            for s in range(S):
                skips[b, s] = 0.0
        for l in range(L):
            d = dil[l]
            ql = (k - 1) * d
            base = qoff[l]
            slot = t % ql
            for b in range(active):
                # gather the taps, then push the current input where the oldest one (lag (k-1) d) was
                for j in range(k - 1):
                    src = base + (t - (k - 1 - j) * d) % ql
                    for r in range(R):
                        taps[b, j * R + r] = queue[b, src, r]
                for r in range(R):
                    taps[b, (k - 1) * R + r] = h[b, r]
                    queue[b, base + slot, r] = h[b, r]
                for g in range(G):
                    z[b, g] = cond[tc, b, l * G + g]
            _matmul_acc(conv_w[l], taps, z, active)
            for b in range(active):
                for u in range(Gh):  # tanh(a) sigmoid(b), with tanh(a) = 2 / (1 + e^-2a) - 1
                    th = np.float32(2.0) / (np.float32(1.0) + _exp(np.float32(-2.0) * z[b, u])) - np.float32(1.0)
                    gated[b, u] = th / (np.float32(1.0) + _exp(-z[b, Gh + u]))
                for o in range(R + S):
                    rs[b, o] = rs_b[l, o]
            _matmul_acc(rs_w[l], gated, rs, active)
            for b in range(active):
                for r in range(R):
                    h[b, r] = (h[b, r] + rs[b, r]) * res_scale
                for s in range(S):
                    skips[b, s] += rs[b, R + s]
        # output head: ReLU -> 1x1 -> ReLU -> 1x1
        for b in range(active):
            for s in range(S):
                a0[b, s] = max(skips[b, s] * skip_scale, np.float32(0.0))
                a1[b, s] = out1_b[s]
            for p in range(P):
                params[b, p] = out2_b[p]
        _matmul_acc(out1_w, a0, a1, active)
        for b in range(active):
            for s in range(S):
                a1[b, s] = max(a1[b, s], np.float32(0.0))
        _matmul_acc(out2_w, a1, params, active)
        for b in range(active):
            x = _sample(params[b], noise[tc, b], kind, temperature, log_scale_min, table, probs)
            out[b, t] = x
            if teacher:
                for p in range(P):
                    params_out[b, p, t] = params[b, p]
                x = forced[b, t]
            x_prev[b] = x


@numba.njit(cache=True, nogil=True)
def _pick(probs, n, u):
    """Inverse CDF: first index whose running sum of probs exceeds u (the torch sampler's rule)."""
    acc = np.float32(0.0)
    for i in range(n):
        acc = np.float32(acc + np.float32(probs[i]))
        if acc > u:
            return i
    return n - 1


@numba.njit(cache=True, nogil=True)
def _sample(p, noise, kind, temperature, log_scale_min, table, probs):
    """One draw from the distribution with parameters p [P] and noise [N]; mirrors wavflow.distributions."""
    if kind == 0:  # Gaussian: mu + sigma * temperature * eps
        ls = max(p[1], log_scale_min)
        x = p[0] + math.exp(ls) * temperature * noise[0]
    elif kind == 1:  # logistic mixture: component by inverse CDF, then the logistic's inverse CDF
        K = p.shape[0] // 3
        m = p[0]
        for i in range(K):
            m = max(m, p[i])
        tot = 0.0
        for i in range(K):
            probs[i] = math.exp(p[i] - m)
            tot += probs[i]
        for i in range(K):
            probs[i] = probs[i] / tot
        c = _pick(probs, K, noise[0])
        ls = max(p[2 * K + c], log_scale_min)
        u = noise[1]
        x = p[K + c] + math.exp(ls) * temperature * (math.log(u) - math.log1p(-u))
    else:  # mu-law: level by inverse CDF of softmax(logits / temperature), or argmax at temperature 0
        n = p.shape[0]
        best = 0
        for i in range(n):
            if p[i] > p[best]:
                best = i
        if temperature == 0:
            return table[best]
        m = p[best]
        tot = 0.0
        for i in range(n):
            probs[i] = math.exp((p[i] - m) / temperature)
            tot += probs[i]
        for i in range(n):
            probs[i] = probs[i] / tot
        return table[_pick(probs, n, noise[0])]
    return min(max(x, -1.0), 1.0)
