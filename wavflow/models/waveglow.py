"""WaveGlow (Prenger, Valle & Catanzaro 2019): a normalising flow from mel-conditioned audio to Gaussian noise
(design.md section 3).

    audio [B, T] --squeeze groups of n_group--> x [B, n_group, T/n_group]
    for each of n_flows flows:  (every n_early_every flows, n_early_size channels leave early into z)
        x <- W_k x                               invertible 1x1 conv, log|det| = G log|det W_k|
        x <- [x_a, exp(log_s) x_b + b]           affine coupling, (b, log_s) = WN_k(x_a, mel)
    z = [early outputs..., x] ~ N(0, sigma^2)

Log-density per audio sample (design.md section 2):
    log p(audio) / T = (-|z|^2 / (2 sigma^2) + sum log_s + sum G log|det W|) / T - 0.5 ln(2 pi sigma^2).
Sampling runs the flows backwards from z ~ N(0, sigma_infer^2), all samples in parallel.

Defaults reproduce NVIDIA's released model (87,879,272 parameters with weight norm), and the module names map
one-to-one onto NVIDIA's (wavflow.nvidia imports their checkpoints):
    upsample                         <- upsample
    convinv.{k}.weight [C, C]        <- convinv.{k}.conv.weight [C, C, 1]
    coupling.{k}.net.<layer>         <- WN.{k}.<layer>   (start, in_layers.{i}, res_skip_layers.{i}, cond_layer, end)

Around the model: its config is waveglow_config.py, its fast sampling plan waveglow_sampling.py, its streamer
waveglow_streaming.py, its ONNX graph waveglow_export.py and growing it a source waveglow_growth.py.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from ..errors import WavflowError
from ..flows import AffineCoupling, Invertible1x1Conv, squeeze, unsqueeze
from ..frontend import MelConfig
from ..losses import stft_loss
from ..source import (
    HarmonicAmplitudes,
    HarmonicSource,
    PitchPredictor,
    SourceTrack,
    harmonic_mean,
)
from ..source import excitation as make_excitation
from . import ExportSpec, NoiseSpan, Streamer, Vocoder, noise_device, refuse_options
from .waveglow_config import WaveGlowConfig
from .waveglow_export import WaveGlowGraph
from .waveglow_growth import GROWABLE, OBJECTIVE, grow
from .waveglow_sampling import BackendChoice, _CouplingPlan, _SamplingPlan, _Workspace, check_backend
from .waveglow_streaming import WaveGlowStreamer

# The energy prior (design.md section 9): ln(frame RMS) - ln(RMS mel magnitude) had median -0.39 over 40
# LJSpeech clips (frames above -40 dBFS); -60 dBFS is below LJSpeech's room noise.
ENERGY_OFFSET = -0.39
ENERGY_FLOOR = 1e-3


def upsample_squeezed(mel: Tensor, weight: Tensor, bias: Tensor, hop: int, n_group: int, num_groups: int,
                      weight_matrix: Tensor | None = None) -> Tensor:
    """conv_transpose1d(mel, weight, bias, stride=hop), cropped to num_groups * n_group samples and squeezed.

    mel [B, C, F], weight [C, C_out, K] with K = n * hop -> [B, C_out * n_group, num_groups].

    Output block b (samples b * hop ... b * hop + hop - 1) is the sum of frames b, b-1, ..., b-n+1 through
    kernel slices 0, 1, ..., n-1, so the transposed conv is one [blocks, n * C] x [n * C, C_out * hop] matmul:
    PyTorch's CPU transposed convolution runs this shape far below the BLAS peak, the matmul near it (in
    training as in sampling). The product is rearranged straight into the squeezed layout the couplings read.
    weight_matrix: the [n * C, C_out * hop] rearranged weight, when the caller has it already.
    """
    b, c, frames = mel.shape
    c_out, k = weight.shape[1], weight.shape[2]
    n, per = k // hop, hop // n_group
    blocks = min(frames + n - 1, -(-num_groups // per))  # only the blocks the crop keeps
    x = F.pad(mel, (n - 1, n - 1))
    context = x.unfold(2, n, 1).flip(-1)[:, :, :blocks]  # [B, C, blocks, n]: frames b, b-1, ..., b-n+1
    context = context.permute(0, 2, 3, 1).reshape(b, blocks, n * c)
    if weight_matrix is None:
        weight_matrix = upsample_matrix(weight, hop)
    out = torch.matmul(context, weight_matrix)  # [B, blocks, C_out * hop]
    out = out.view(b, blocks, c_out, per, n_group).permute(0, 2, 4, 1, 3).reshape(b, c_out * n_group, blocks * per)
    return out[..., :num_groups] + bias.repeat_interleave(n_group)[:, None]


def upsample_matrix(weight: Tensor, hop: int) -> Tensor:
    """ConvTranspose1d weight [C, C_out, n * hop] -> [n * C, C_out * hop], row j * C + c = frame offset j, channel c."""
    c, c_out, k = weight.shape
    return weight.reshape(c, c_out, k // hop, hop).permute(2, 0, 1, 3).reshape(k // hop * c, c_out * hop)


class WN(nn.Module):
    """The coupling network: a non-causal WaveNet-like stack over the groups, conditioned on the squeezed mel.

    x_a [B, n_in, G], mel [B, n_mels * n_group, G] -> [B, 2 * n_in, G] = (shift b, log-scale log_s).
    The end conv starts at zero, so every coupling starts as the identity and training starts from a plain
    sequence of rotations.
    """

    def __init__(self, n_in: int, n_cond: int, n_layers: int = 8, channels: int = 256, kernel_size: int = 3):
        super().__init__()
        self.n_layers = n_layers
        self.channels = channels
        self.start = weight_norm(nn.Conv1d(n_in, channels, 1))
        # One 1x1 conv makes the conditioning of all layers at once (one large matmul instead of n_layers small
        # ones); layer i reads channels [2 * channels * i, 2 * channels * (i + 1)).
        self.cond_layer = weight_norm(nn.Conv1d(n_cond, 2 * channels * n_layers, 1))
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = 2**i
            self.in_layers.append(weight_norm(nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                                                        padding=dilation * (kernel_size - 1) // 2)))
            # The last layer's residual output would feed nothing, so it has a skip output only.
            out = 2 * channels if i < n_layers - 1 else channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(channels, out, 1)))
        self.end = nn.Conv1d(channels, 2 * n_in, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def forward(self, x: Tensor, mel: Tensor) -> Tensor:
        return self.stack(x, self.cond_layer(mel))

    def stack(self, x: Tensor, cond: Tensor) -> Tensor:
        """The layers after the conditioning conv: x [B, n_in, G], cond [B, 2 * channels * n_layers, G]."""
        c = self.channels
        h = self.start(x)
        skip = None
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            a = in_layer(h) + cond[:, 2 * c * i: 2 * c * (i + 1)]
            acts = torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])  # gated activation unit
            rs = res_skip_layer(acts)
            if i < self.n_layers - 1:
                h = h + rs[:, :c]
                rs = rs[:, c:]
            skip = rs if skip is None else skip + rs
        return self.end(skip)


class WaveGlow(nn.Module, Vocoder):
    """WaveGlow vocoder, a `wavflow.models.Vocoder`. See the module docstring for the flow and the likelihood."""

    model_type: ClassVar[str] = "waveglow"
    infer_options: ClassVar[tuple[str, ...]] = ("sigma", "backend")
    needs_teacher: ClassVar[bool] = False

    def __init__(self, config: WaveGlowConfig = WaveGlowConfig(), mel_config: MelConfig = MelConfig()):
        super().__init__()
        hop = mel_config.hop_length
        config = config.resolved(hop)  # n_group and upsample_kernel are numbers from here on (and in checkpoints)
        self.config = config
        self.mel_config = mel_config
        n_mels = mel_config.n_mels
        self.upsample = nn.ConvTranspose1d(n_mels, n_mels, config.upsample_kernel, stride=hop)
        # The source: a pitch predictor on the mel frames, whose excitation joins the conditioning grouped like
        # the audio (n_group more channels), so every coupling can read the harmonics' timing.
        self.source = PitchPredictor(n_mels, config.source_channels) if config.source else None
        n_cond = (n_mels + (1 if config.source else 0)) * config.n_group
        # The source filter reads the grouped excitation as its input and the whole conditioning (mel and
        # excitation) as its gates; its end conv starts at zero, so it starts as the identity.
        self.filter = WN(config.n_group, n_cond, config.wn_layers, config.wn_channels, config.wn_kernel_size) \
            if config.source_filter else None
        # The harmonic mean's amplitudes, per frame from the mel; the output conv starts at zero (no mean).
        self.harmonics = HarmonicAmplitudes(n_mels, config.source_harmonics, config.source_channels) \
            if config.source_harmonics else None
        self.convinv = nn.ModuleList()
        self.coupling = nn.ModuleList()
        for k in range(config.n_flows):
            c = config.remaining_channels(k)
            self.convinv.append(Invertible1x1Conv(c))
            self.coupling.append(AffineCoupling(WN(c // 2, n_cond, config.wn_layers,
                                                   config.wn_channels, config.wn_kernel_size)))
        self._plan: tuple[tuple, _SamplingPlan] | None = None  # folded weights for `infer`, see _sampling_plan
        self.backend: str | None = None  # infer's sampling backend when a call names none (None: measured)

    # ---------------------------------------------------------------- conditioning
    def condition(self, mel: Tensor, num_samples: int, weight_matrix: Tensor | None = None,
                  track: SourceTrack | None = None) -> Tensor:
        """mel [B, n_mels, F] -> upsampled, cropped to num_samples and squeezed: [B, n_mels * n_group, T / n_group].

        Exactly squeeze(self.upsample(mel)[..., :T]), computed as one matmul (see upsample_squeezed). With a
        source, the excitation of `track` (None: `source_track(mel)`) follows, squeezed like the audio:
        [B, (n_mels + 1) * n_group, T / n_group].
        """
        hop, kernel = self.mel_config.hop_length, self.config.upsample_kernel
        if (mel.shape[-1] - 1) * hop + kernel < num_samples:
            raise WavflowError(f"mel of {mel.shape[-1]} frames is too short for {num_samples} samples")
        cond = upsample_squeezed(mel, self.upsample.weight, self.upsample.bias, hop, self.config.n_group,
                                 num_samples // self.config.n_group, weight_matrix)
        if self.source is None:
            return cond
        track = self.source_of(mel, track)
        e = squeeze(self.excitation(track, num_samples)[:, None].to(cond.dtype), self.config.n_group)
        return torch.cat([cond, e], 1)

    @property
    def needs_pitch(self) -> bool:
        """Training needs the recordings' pitch tracks (the trainer attaches them to the data)."""
        return self.source is not None

    # The inference source of a mel (predicted F0 and voicing, the phase running free from 0, the harmonic mean's
    # amplitudes), of given F0 and voicing, the source to use, and a recording's training source: the teacher's
    # and the student's, which read `source`, `harmonics`, `config` and `mel_config`.
    source_track = HarmonicSource.source_track
    track_of = HarmonicSource.track_of
    source_of = HarmonicSource.source_of
    recording_track = HarmonicSource.recording_track
    with_amplitudes = HarmonicSource.with_amplitudes

    def harmonic_mean(self, track: SourceTrack | None, num_samples: int) -> Tensor | None:
        """The audio's harmonic mean [B, num_samples] from the track's amplitudes (None without harmonics)."""
        if self.harmonics is None:
            return None
        return harmonic_mean(track, self.mel_config.hop_length, self.mel_config.sample_rate, num_samples)

    def excitation(self, track: SourceTrack, num_samples: int) -> Tensor:
        """The excitation [B, num_samples] of a track's frames (wavflow.source.excitation)."""
        return make_excitation(track, self.mel_config.hop_length, self.mel_config.sample_rate,
                          self.config.source_amplitude, num_samples)

    def prior_scale(self, mel: Tensor, num_groups: int) -> Tensor | None:
        """The energy prior's std per group of samples, [B, 1, num_groups] (None without the energy prior).

        A frame's scale is its mel's RMS magnitude, exp(0.5 ln mean_f |mel_f|^2 + ENERGY_OFFSET), which tracks the
        frame's waveform RMS (design.md section 9), floored at ENERGY_FLOOR; groups take it log-linearly
        interpolated between frame centres. Every channel of a group shares it, so it commutes with the 1x1
        convolutions and the likelihood stays exact.
        """
        if not self.config.energy_prior:
            return None
        mag = self.mel_config.decompress(mel.to(torch.promote_types(mel.dtype, torch.float32)))
        log_s = 0.5 * torch.log(mag.pow(2).mean(1).clamp_min(1e-20)) + ENERGY_OFFSET  # [B, F]
        log_s = log_s.clamp_min(math.log(ENERGY_FLOOR))
        # Group g's centre, g * n_group + (n_group - 1) / 2 samples, in frames, in integers: a window that starts
        # on a frame gets the same (frame, fraction) pairs as the whole utterance, bit for bit.
        g, hop = self.config.n_group, self.mel_config.hop_length
        centre2 = torch.arange(num_groups, device=mel.device) * 2 * g + g - 1  # twice the centre, in samples
        lo = torch.div(centre2, 2 * hop, rounding_mode="floor")
        frac = (centre2 - lo * 2 * hop).to(mag.dtype) / (2 * hop)
        lo = lo.clamp(max=log_s.shape[-1] - 1)
        hi = (lo + 1).clamp(max=log_s.shape[-1] - 1)
        return torch.exp(log_s[:, lo] * (1 - frac) + log_s[:, hi] * frac)[:, None, :]

    def _is_exit(self, k: int) -> bool:
        return k > 0 and k % self.config.n_early_every == 0

    # ---------------------------------------------------------------- density
    def forward(self, audio: Tensor, mel: Tensor, track: SourceTrack | None = None) -> tuple[Tensor, Tensor]:
        """audio [B, T], mel [B, n_mels, F] -> (z [B, n_group, T // n_group], logdet [B]).

        z holds the early outputs first, in the order they leave, then the last flow's channels (NVIDIA's
        layout). A trailing T mod n_group samples are ignored. logdet = sum log_s + sum G log|det W|.
        track: the source's, for a model with one (None: predicted from the mel, `source_track`); the harmonic
        mean it describes is taken from the audio before the flows.
        """
        g = self.config.n_group
        t = audio.shape[-1] // g * g
        track = self.source_of(mel, track)
        cond = self.condition(mel, t, track=track)
        audio = audio[:, :t]
        mean = self.harmonic_mean(track, t)
        if mean is not None:
            audio = audio - mean.to(audio.dtype)
        x = squeeze(audio[:, None], g)
        logdet = x.new_zeros(x.shape[0])
        if self.filter is not None:
            mean, log_s = self.filter(cond[:, -g:], cond).chunk(2, 1)
            x = (x - mean) * torch.exp(-log_s)
            logdet = logdet - log_s.flatten(1).sum(1)
        outputs = []
        for k in range(self.config.n_flows):
            if self._is_exit(k):
                outputs.append(x[:, : self.config.n_early_size])
                x = x[:, self.config.n_early_size:]
            x, ld_w = self.convinv[k](x)
            x, ld_s = self.coupling[k](x, cond)
            logdet = logdet + ld_w + ld_s
        outputs.append(x)
        return torch.cat(outputs, 1), logdet

    def inverse(self, z: Tensor, mel: Tensor, track: SourceTrack | None = None) -> Tensor:
        """The exact inverse of forward: z [B, n_group, G], mel [B, n_mels, F >= G * n_group / hop]
        -> audio [B, G * n_group]."""
        cfg = self.config
        t = z.shape[-1] * cfg.n_group
        track = self.source_of(mel, track)
        cond = self.condition(mel, t, track=track)
        audio = self._inverse(z, lambda k, x: self.coupling[k].inverse(x, cond), cond)
        mean = self.harmonic_mean(track, t)
        return audio if mean is None else audio + mean.to(audio.dtype)

    def unfilter(self, x: Tensor, cond: Tensor) -> Tensor:
        """Undo the source filter (when there is one): x [B, n_group, G] -> x exp(log_s) + mean."""
        if self.filter is None:
            return x
        mean, log_s = self.filter(cond[:, -self.config.n_group:], cond).chunk(2, 1)
        return x * torch.exp(log_s.to(x.dtype)) + mean.to(x.dtype)

    def _inverse(self, z: Tensor, coupling_inverse, cond: Tensor) -> Tensor:
        cfg = self.config
        exits = [k for k in range(cfg.n_flows) if self._is_exit(k)]
        x = z[:, len(exits) * cfg.n_early_size:]
        for k in reversed(range(cfg.n_flows)):
            x = coupling_inverse(k, x)
            x = self.convinv[k].inverse(x)
            if self._is_exit(k):
                j = exits.index(k)
                x = torch.cat([z[:, j * cfg.n_early_size: (j + 1) * cfg.n_early_size], x], 1)
        return unsqueeze(self.unfilter(x, cond), cfg.n_group)[:, 0]

    def log_likelihood(self, audio: Tensor, mel: Tensor, track: SourceTrack | None = None) -> Tensor:
        """[B] mean log-density per audio sample in nats (audio in [-1, 1], every constant included, design.md
        section 2).

        With a source, the density is conditioned on the mel alone: the source comes from the predicted pitch
        with its phase running free, as in sampling, unless `track` is given (training's).
        With the energy prior, z ~ N(0, sigma^2 s_g^2) per group g: -log s_g per sample joins the log-density.
        """
        z, logdet = self(audio, mel, track)
        n = z.shape[1] * z.shape[2]
        var = self.config.sigma**2
        acc = torch.promote_types(z.dtype, torch.float32)  # sum bf16/fp16 activations in float32
        z = z.to(acc)
        scale = self.prior_scale(mel, z.shape[-1])
        if scale is not None:
            z = z / scale
            logdet = logdet.to(acc) - z.shape[1] * torch.log(scale).flatten(1).sum(1)
        sq = z.pow(2).flatten(1).sum(1)
        return (logdet.to(acc) - 0.5 * sq / var) / n - 0.5 * math.log(2 * math.pi * var)

    def training_loss(self, audio: Tensor, mel: Tensor, pitch: tuple[Tensor, Tensor] | None = None
                      ) -> tuple[Tensor, dict[str, float]]:
        """NLL in nats per sample (NVIDIA's printed loss is this minus 0.5 ln(2 pi sigma^2)), plus, as configured,
        the pitch predictor's loss and the spectral loss on samples (design.md section 9).

        pitch: (f0, voiced) [B, >= F] of the recording's pitch track at the mel's frames, needed with a source:
        the training excitation is made from it (phase-locked to the recording with source_phase "recording").
        """
        cfg = self.config
        track = None
        logs: dict[str, float] = {}
        extra = audio.new_zeros(())
        if self.source is not None:
            if pitch is None:
                raise WavflowError("a WaveGlow with a source trains on pitch tracks of the recordings (the trainer "
                                   "supplies them: wavflow.pitch)")
            f0, voiced = (p[:, : mel.shape[-1]].to(audio.device) for p in pitch)
            track = self.recording_track(audio, mel, f0, voiced)
            pitch_loss, pitch_logs = self.source.loss(mel, f0, voiced)
            extra = extra + cfg.pitch_weight * pitch_loss
            logs.update(pitch_logs)
        nll = -self.log_likelihood(audio, mel, track).mean()
        logs["nll"] = nll.item()
        if cfg.spectral_weight > 0:
            g = cfg.n_group
            t = audio.shape[-1] // g * g
            z = torch.randn((audio.shape[0], g, t // g), device=audio.device, dtype=audio.dtype) * cfg.spectral_sigma
            scale = self.prior_scale(mel, t // g)
            if scale is not None:
                z = z * scale
            sample = self.inverse(z, mel, track)
            sc, logmag = stft_loss(sample.float(), audio[:, :t].float())
            extra = extra + cfg.spectral_weight * (sc + logmag)
            logs["spectral/sc"], logs["spectral/logmag"] = sc.item(), logmag.item()
        return nll + extra, logs

    # ---------------------------------------------------------------- sampling
    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard-normal z [batch, n_group, num_samples / n_group] in forward's layout, float32, on the
        generator's device (the CPU without one)."""
        g = self.config.n_group
        return torch.randn((batch, g, num_samples // g), generator=generator, device=noise_device(generator))

    @torch.no_grad()
    def infer(self, mel: Tensor, *, noise: Tensor | None = None, generator: torch.Generator | None = None,
              frames: Sequence[int] | Tensor | None = None, sigma: float | None = None, backend: str | None = None,
              source_track: SourceTrack | None = None, **unknown: Any) -> Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop]; every item is made to the batch's length (frames is ignored).

        sigma: std of the noise (default config.infer_sigma = 0.6; 0 gives the flow's mode-like output).
        noise: standard-normal z [B, n_group, F * hop / n_group] in forward's layout (scaled by sigma here), for
        reproducible output; otherwise drawn from `generator` (draw_noise). In NVIDIA's infer the last flow's
        channels z[:, -remaining:] are drawn first and the early blocks join from the last exit back to the
        first, so NVIDIA's draws map onto z one-to-one (tests/test_nvidia.py checks equal audio).
        source_track: the source of these frames, for a model with one (None: `source_track(mel)`); a streamer
        passes the whole utterance's track cut to its window, so the excitation's phase runs on across windows.
        Runs on a cached, folded copy of the weights (see _CouplingPlan) on `backend` ("mm", "mm_t" or "conv";
        None: the model's own, `set_backend`, else the one measured fastest for this machine and shape:
        `sampling_backend`); `inverse` is the plain reference. With bf16 or fp16 weights the coupling networks
        compute in that dtype and the flow state in float32: the audio is float32.
        """
        refuse_options(self, unknown)
        cfg = self.config
        sigma = cfg.infer_sigma if sigma is None else float(sigma)
        b, _, n_frames = mel.shape
        t = n_frames * self.mel_config.hop_length
        shape = (b, cfg.n_group, t // cfg.n_group)
        if noise is None:
            noise = self.draw_noise(b, t, generator)
        elif tuple(noise.shape) != shape:
            raise WavflowError(f"noise has shape {tuple(noise.shape)}, expected {shape} for a mel of {n_frames} frames")
        plan = self._sampling_plan()
        # The flow state (z, then the audio) stays in float32 (or wider) whatever the weights' dtype: a bf16 or
        # fp16 model runs its coupling networks in that dtype, the cheap affine and 1x1 updates in float32, so the
        # state is not rounded to 8 or 11 bits twelve times over.
        state_dtype = torch.promote_types(mel.dtype, torch.float32)
        source_track = self.source_of(mel, source_track)
        cond_in = self.condition(mel.to(plan.dtype), t, plan.upsample, track=source_track)
        backend = plan.backend_for(mel.device, t // cfg.n_group, check_backend(backend) or self.backend).backend
        x = torch.empty(shape, device=mel.device, dtype=state_dtype)
        x.copy_(noise).mul_(sigma)  # our own buffer: sampling works in place
        scale = self.prior_scale(mel, shape[-1])
        if scale is not None:
            x.mul_(scale)
        # One utterance at a time: each matmul is already large (G = 2756 columns per second of audio).
        work = _Workspace()
        audio = torch.stack([self._sample_one(plan, x[i], cond_in[i], backend, work) for i in range(b)])
        mean = self.harmonic_mean(source_track, t)
        return audio if mean is None else audio.add_(mean.to(audio.dtype))

    def sampling_backend(self, num_samples: int, device: torch.device | str = "cpu",
                         backend: str | None = None) -> BackendChoice:
        """The backend `infer` uses for an utterance of num_samples on `device` (given `backend`, as infer's),
        chosen now if it is not yet (waveglow_sampling's comment on fast sampling): lets a caller pay for the choice
        outside a timed or counted call."""
        with torch.no_grad():
            return self._sampling_plan().backend_for(torch.device(device), num_samples // self.config.n_group,
                                                     check_backend(backend) or self.backend)

    def set_backend(self, backend: str | None) -> None:
        """`infer`'s backend when a call names none: "mm", "mm_t" or "conv" (None: measure); a one-line
        WavflowError names the choices otherwise."""
        self.backend = check_backend(backend)

    def _sampling_plan(self) -> _SamplingPlan:
        """The weights `infer` multiplies with, folded and laid out for plain matmuls, cached.

        The cache is keyed on every parameter's storage address and version counter, which every in-place
        update through autograd-visible ops bumps (optimizer steps, load_state_dict, .to(), .copy_()); only
        edits through `.data` bypass it, and those bypass autograd's own checks too.
        """
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        if self._plan is None or self._plan[0] != key:
            self._plan = None  # free the old plan before building the new one
            dtype = self.upsample.weight.dtype
            state_dtype = torch.promote_types(dtype, torch.float32)
            with torch.inference_mode(False), torch.no_grad():
                plan = _SamplingPlan(
                    dtype=dtype,
                    upsample=upsample_matrix(self.upsample.weight, self.mel_config.hop_length),
                    couplings=[_CouplingPlan.fold(c.net, dtype) for c in self.coupling],
                    inverses=[torch.linalg.inv(c.weight.detach().double()).to(state_dtype) for c in self.convinv])
            self._plan = (key, plan)
        return self._plan[1]

    def _sample_one(self, plan: _SamplingPlan, x: Tensor, cond_in: Tensor, backend: str = "mm",
                    work: _Workspace | None = None) -> Tensor:
        """Run the flows backwards on one utterance, in place: x [n_group, G] (sigma * z, overwritten),
        cond_in [n_mels * n_group, G] in the plan's dtype -> audio [G * n_group] in x's dtype."""
        cfg = self.config
        start = sum(self._is_exit(k) for k in range(cfg.n_flows)) * cfg.n_early_size
        for k in reversed(range(cfg.n_flows)):
            h = x[start:]  # this flow's channels; the rows above are early noise, waiting to join
            n_a = h.shape[0] // 2
            shift, log_s = plan.couplings[k].run(h[:n_a].to(plan.dtype), cond_in, backend, work)
            h[n_a:].sub_(shift).mul_(log_s.to(x.dtype).neg_().exp_())
            h.copy_(torch.mm(plan.inverses[k], h))
            if self._is_exit(k):
                start -= cfg.n_early_size
        if self.filter is not None:
            x.copy_(self.unfilter(x[None], cond_in[None].to(self.filter.end.weight.dtype))[0])
        return x.t().reshape(-1)

    # ---------------------------------------------------------------- the family as a Vocoder
    def prepare_sampling(self, num_samples: int, device: torch.device | str) -> None:
        """Choose the sampling backend for this length and device now (`sampling_backend`), outside timed calls."""
        self.sampling_backend(num_samples, device)

    def bias_audio(self, mel: Tensor) -> Tensor:
        """The output at sigma 0 [B, F * hop]: what the weights add to any mel, NVIDIA's denoiser's bias."""
        return self.infer(mel, sigma=0.0)

    def streamer(self, mel: Tensor, noise: NoiseSpan, options: dict[str, Any]) -> Streamer:
        """Windows of `infer` reaching past each chunk by the couplings' receptive field (waveglow_streaming)."""
        return WaveGlowStreamer(self, mel, noise, options)

    # ---------------------------------------------------------------- ONNX export (waveglow_export)
    def export_spec(self) -> ExportSpec:
        """Inputs mel, z [B, n_group, G] and sigma; with a source, f0 and voiced [B, F] come out beside the audio."""
        cfg = self.config
        return ExportSpec("sigma", float(cfg.infer_sigma), 2, ("audio", "f0", "voiced") if cfg.source else ("audio",),
                          {"n_group": cfg.n_group, "default_sigma": cfg.infer_sigma, "source": cfg.source,
                           "energy_prior": cfg.energy_prior})

    def export_graph(self) -> nn.Module:
        return WaveGlowGraph(self)

    # With a source: the track of the F0 and voicing an exported graph predicted, and how far those are from the
    # pitch predictor's (the same as the teacher's and the student's: they read only `source` and `track_of`).
    export_options = HarmonicSource.export_options
    export_output_error = HarmonicSource.export_output_error

    # The config keys a --init may change (wavflow.models.waveglow_growth): the source's switches and the objective.
    GROWABLE: ClassVar[tuple[str, ...]] = GROWABLE
    # The config keys a --resume may change: the objective's weights (no weight of the model depends on them).
    OBJECTIVE: ClassVar[tuple[str, ...]] = OBJECTIVE

    def grown(self, config: WaveGlowConfig) -> WaveGlow:
        """This model with `config`'s source switches added, vocoding exactly what it did (waveglow_growth.grow)."""
        return grow(self, config)

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights for inference (state_dict keys become '.weight')."""
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
