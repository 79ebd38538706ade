"""WaveGlow (Prenger, Valle & Catanzaro 2019): a normalising flow from mel-conditioned audio to Gaussian noise
(design.md section 3).

    audio [B, T] --squeeze groups of n_group--> x [B, n_group, T/n_group]
    for each of n_flows flows:  (every n_early_every flows, n_early_size channels leave early into z)
        x <- W_k x                               invertible 1x1 conv, log|det| = G log|det W_k|
        x <- [x_a, exp(log_s) x_b + b]           affine coupling, (b, log_s) = WN_k(x_a, mel)
    z = [early outputs..., x] ~ N(0, sigma^2)

Log-density per audio sample (design.md section 2): log p(audio) / T = (-|z|^2 / (2 sigma^2) + sum log_s + sum G log|det W|) / T
- 0.5 ln(2 pi sigma^2). Sampling runs the flows backwards from z ~ N(0, sigma_infer^2), all samples in parallel.

Defaults reproduce NVIDIA's released model (87,879,272 parameters with weight norm), and the module names map
one-to-one onto NVIDIA's (wavflow.nvidia imports their checkpoints):
    upsample                         <- upsample
    convinv.{k}.weight [C, C]        <- convinv.{k}.conv.weight [C, C, 1]
    coupling.{k}.net.<layer>         <- WN.{k}.<layer>   (start, in_layers.{i}, res_skip_layers.{i}, cond_layer, end)
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from ..errors import WavflowError
from ..flows import AffineCoupling, Invertible1x1Conv, squeeze, unsqueeze
from ..frontend import MelConfig
from . import is_int, is_real, noise_device, refuse_options


@dataclass(frozen=True)
class WaveGlowConfig:
    n_flows: int = 12  # flow steps, each an invertible 1x1 conv then an affine coupling
    n_group: int = 8  # audio samples squeezed into the channels of one time step
    n_early_every: int = 4  # every this many flows, n_early_size channels go straight to z ...
    n_early_size: int = 2  # ... so the flows see 8, 6, 4 channels (the later ones are cheaper)
    wn_layers: int = 8  # dilated conv layers in each coupling network (dilations 1, 2, 4, ..., 2^(layers-1))
    wn_channels: int = 256  # residual channels of the coupling network (the paper's best model has 512)
    wn_kernel_size: int = 3  # non-causal: the coupling sees past and future groups
    upsample_kernel: int = 1024  # ConvTranspose1d mel upsampler, stride = hop length; 1024 = 4 frames of context
    sigma: float = 1.0  # std of the Gaussian prior on z while training and scoring
    infer_sigma: float = 0.6  # default std of z when sampling (lower = cleaner but flatter speech)

    def __post_init__(self) -> None:
        # Every value that cannot build a model is refused here, by name and value, before any layer exists
        # (the trainer's CLI turns the WavflowError into one line). Checks that need the mel (n_group and
        # upsample_kernel against the hop length) are WaveGlow's.
        problems = []
        for name in ("n_flows", "n_early_every", "wn_layers", "wn_channels", "upsample_kernel"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if not is_int(self.n_group) or self.n_group < 2 or self.n_group % 2:
            problems.append(f"n_group={self.n_group!r} must be an even integer >= 2 (each coupling splits the "
                            f"channels in halves)")
        if not is_int(self.n_early_size) or self.n_early_size < 0 or self.n_early_size % 2:
            problems.append(f"n_early_size={self.n_early_size!r} must be an even integer >= 0 (the channels left "
                            f"must split in halves)")
        if not is_int(self.wn_kernel_size) or self.wn_kernel_size < 1 or self.wn_kernel_size % 2 == 0:
            problems.append(f"wn_kernel_size={self.wn_kernel_size!r} must be an odd integer >= 1 (a centred, "
                            f"non-causal conv)")
        if not problems:
            last = self.remaining_channels(self.n_flows - 1)
            if last < 2:
                problems.append(f"n_early_every={self.n_early_every} and n_early_size={self.n_early_size} leave "
                                f"fewer than 2 channels for the last flows (flow {self.n_flows - 1} of "
                                f"n_flows={self.n_flows} would get {last} of n_group={self.n_group})")
        if not is_real(self.sigma) or not self.sigma > 0:
            problems.append(f"sigma={self.sigma!r} must be a finite number > 0")
        if not is_real(self.infer_sigma) or not self.infer_sigma >= 0:
            problems.append(f"infer_sigma={self.infer_sigma!r} must be a finite number >= 0")
        if problems:
            raise WavflowError(f"invalid WaveGlowConfig: {'; '.join(problems)}")

    def remaining_channels(self, k: int) -> int:
        """Channels flow k works on (n_group minus the early outputs taken before it)."""
        return self.n_group - (k // self.n_early_every) * self.n_early_size

    @classmethod
    def tiny(cls) -> "WaveGlowConfig":
        """A few-thousand-parameter coupling stack for tests: 4 flows (8, 8, 6, 6 channels), WN 2 x 16."""
        return cls(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=2, wn_channels=16)


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
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = in_layer(h) + cond[:, 2 * c * i: 2 * c * (i + 1)]
            acts = torch.tanh(a[:, :c]) * torch.sigmoid(a[:, c:])  # gated activation unit
            rs = res_skip_layer(acts)
            if i < self.n_layers - 1:
                h = h + rs[:, :c]
                rs = rs[:, c:]
            skip = rs if skip is None else skip + rs
        return self.end(skip)


class WaveGlow(nn.Module):
    """WaveGlow vocoder, a `wavflow.models.Vocoder`. See the module docstring for the flow and the likelihood."""

    model_type: ClassVar[str] = "waveglow"
    infer_options: ClassVar[tuple[str, ...]] = ("sigma",)

    def __init__(self, config: WaveGlowConfig = WaveGlowConfig(), mel_config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self.mel_config = mel_config
        hop = mel_config.hop_length
        if hop % config.n_group:
            raise WavflowError(f"invalid WaveGlowConfig: n_group {config.n_group} must divide the hop length {hop}")
        if config.upsample_kernel < hop or config.upsample_kernel % hop:
            raise WavflowError(f"invalid WaveGlowConfig: upsample_kernel {config.upsample_kernel} must be a "
                               f"multiple of the hop length {hop}")
        n_mels = mel_config.n_mels
        self.upsample = nn.ConvTranspose1d(n_mels, n_mels, config.upsample_kernel, stride=hop)
        self.convinv = nn.ModuleList()
        self.coupling = nn.ModuleList()
        for k in range(config.n_flows):
            c = config.remaining_channels(k)
            self.convinv.append(Invertible1x1Conv(c))
            self.coupling.append(AffineCoupling(WN(c // 2, n_mels * config.n_group, config.wn_layers,
                                                   config.wn_channels, config.wn_kernel_size)))
        self._plan: tuple[tuple, _SamplingPlan] | None = None  # folded weights for `infer`, see _sampling_plan

    # ---------------------------------------------------------------- conditioning
    def condition(self, mel: Tensor, num_samples: int, weight_matrix: Tensor | None = None) -> Tensor:
        """mel [B, n_mels, F] -> upsampled, cropped to num_samples and squeezed: [B, n_mels * n_group, T / n_group].

        Exactly squeeze(self.upsample(mel)[..., :T]), computed as one matmul (see upsample_squeezed).
        """
        hop, kernel = self.mel_config.hop_length, self.config.upsample_kernel
        if (mel.shape[-1] - 1) * hop + kernel < num_samples:
            raise WavflowError(f"mel of {mel.shape[-1]} frames is too short for {num_samples} samples")
        return upsample_squeezed(mel, self.upsample.weight, self.upsample.bias, hop, self.config.n_group,
                                 num_samples // self.config.n_group, weight_matrix)

    def _is_exit(self, k: int) -> bool:
        return k > 0 and k % self.config.n_early_every == 0

    # ---------------------------------------------------------------- density
    def forward(self, audio: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        """audio [B, T], mel [B, n_mels, F] -> (z [B, n_group, T // n_group], logdet [B]).

        z holds the early outputs first, in the order they leave, then the last flow's channels (NVIDIA's
        layout). A trailing T mod n_group samples are ignored. logdet = sum log_s + sum G log|det W|.
        """
        g = self.config.n_group
        t = audio.shape[-1] // g * g
        cond = self.condition(mel, t)
        x = squeeze(audio[:, None, :t], g)
        logdet = x.new_zeros(x.shape[0])
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

    def inverse(self, z: Tensor, mel: Tensor) -> Tensor:
        """The exact inverse of forward: z [B, n_group, G], mel [B, n_mels, F >= G * n_group / hop] -> audio [B, G * n_group]."""
        cfg = self.config
        t = z.shape[-1] * cfg.n_group
        cond = self.condition(mel, t)
        return self._inverse(z, lambda k, x: self.coupling[k].inverse(x, cond))

    def _inverse(self, z: Tensor, coupling_inverse) -> Tensor:
        cfg = self.config
        exits = [k for k in range(cfg.n_flows) if self._is_exit(k)]
        x = z[:, len(exits) * cfg.n_early_size:]
        for k in reversed(range(cfg.n_flows)):
            x = coupling_inverse(k, x)
            x = self.convinv[k].inverse(x)
            if self._is_exit(k):
                j = exits.index(k)
                x = torch.cat([z[:, j * cfg.n_early_size: (j + 1) * cfg.n_early_size], x], 1)
        return unsqueeze(x, cfg.n_group)[:, 0]

    def log_likelihood(self, audio: Tensor, mel: Tensor) -> Tensor:
        """[B] mean log-density per audio sample in nats (audio in [-1, 1], every constant included, design.md section 2)."""
        z, logdet = self(audio, mel)
        n = z.shape[1] * z.shape[2]
        var = self.config.sigma**2
        acc = torch.promote_types(z.dtype, torch.float32)  # sum bf16/fp16 activations in float32
        sq = z.to(acc).pow(2).flatten(1).sum(1)
        return (logdet.to(acc) - 0.5 * sq / var) / n - 0.5 * math.log(2 * math.pi * var)

    def training_loss(self, audio: Tensor, mel: Tensor) -> tuple[Tensor, dict[str, float]]:
        """-mean log_likelihood: NLL in nats per sample. NVIDIA's printed loss is this minus 0.5 ln(2 pi sigma^2)."""
        loss = -self.log_likelihood(audio, mel).mean()
        return loss, {"nll": loss.item()}

    # ---------------------------------------------------------------- sampling
    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard-normal z [batch, n_group, num_samples / n_group] in forward's layout, float32, on the
        generator's device (the CPU without one)."""
        g = self.config.n_group
        return torch.randn((batch, g, num_samples // g), generator=generator, device=noise_device(generator))

    @torch.no_grad()
    def infer(self, mel: Tensor, *, noise: Tensor | None = None, generator: torch.Generator | None = None,
              frames: Sequence[int] | Tensor | None = None, sigma: float | None = None, **unknown: Any) -> Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop]; every item is made to the batch's length (frames is ignored).

        sigma: std of the noise (default config.infer_sigma = 0.6; 0 gives the flow's mode-like output).
        noise: standard-normal z [B, n_group, F * hop / n_group] in forward's layout (scaled by sigma here), for
        reproducible output; otherwise drawn from `generator` (draw_noise). In NVIDIA's infer the last flow's
        channels z[:, -remaining:] are drawn first and the early blocks join from the last exit back to the
        first, so NVIDIA's draws map onto z one-to-one (tests/test_nvidia.py checks equal audio).
        Runs on a cached, folded copy of the weights (see _CouplingPlan) on the backend measured fastest for
        this machine and shape (`sampling_backend`); `inverse` is the plain reference. With bf16 or fp16
        weights the coupling networks compute in that dtype and the flow state in float32: the audio is float32.
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
        cond_in = self.condition(mel.to(plan.dtype), t, plan.upsample)
        backend = plan.backend_for(mel.device, t // cfg.n_group).backend
        x = torch.empty(shape, device=mel.device, dtype=state_dtype)
        x.copy_(noise).mul_(sigma)  # our own buffer: sampling works in place
        # One utterance at a time: each matmul is already large (G = 2756 columns per second of audio).
        work = _Workspace()
        return torch.stack([self._sample_one(plan, x[i], cond_in[i], backend, work) for i in range(b)])

    def sampling_backend(self, num_samples: int, device: torch.device | str = "cpu") -> "BackendChoice":
        """The backend `infer` uses for an utterance of num_samples on `device`, chosen now if it is not yet
        (the module comment on fast sampling): lets a caller pay for the choice outside a timed or counted call."""
        with torch.no_grad():
            return self._sampling_plan().backend_for(torch.device(device), num_samples // self.config.n_group)

    def _sampling_plan(self) -> "_SamplingPlan":
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

    def _sample_one(self, plan: "_SamplingPlan", x: Tensor, cond_in: Tensor, backend: str = "mm",
                    work: "_Workspace | None" = None) -> Tensor:
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
        return x.t().reshape(-1)

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights for inference (state_dict keys become '.weight')."""
        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


# -------------------------------------------------------------------- fast sampling
# `infer` runs the arithmetic of WN.stack + AffineCoupling.inverse, regrouped so nearly all the work is a few
# large matmuls (tests pin every backend to the plain `inverse`):
# - each layer's gate starts as its slice of the conditioning conv, one [2 * channels, n_cond] x [n_cond, G]
#   matmul into a buffer reused by every layer, and the in_layer accumulates into it (its bias folded into the
#   conditioning bias);
# - a dilated conv is k matmuls of its tap weights with shifted views of a zero-margined buffer (no im2col copy,
#   no padding per layer), or one convolution;
# - the skip 1x1 convs feed only the (linear) end conv, so end o skip_i is one [2 * n_b, channels] matrix per
#   layer, and each layer's residual and folded skip outputs come from one matmul into a buffer holding both;
# - the residual stream is kept without its biases (start bias + residual biases so far, a constant B_i per
#   layer): a conv of a constant is the constant W_ij B_i per tap wherever the tap lands inside the signal, so
#   it joins the conditioning bias, minus the few edge columns where zero padding is read instead;
# - without its bias the first layer's input is start_w x_a, of rank n_a, so its taps are folded to
#   W_0j start_w: a [2 * channels, n_a] matmul replaces a [2 * channels, channels] one;
# - the gate tanh(a) sigmoid(b) is computed as 2 (sigmoid(2a) - 1/2) sigmoid(b): one sigmoid call over the
#   whole gate instead of a tanh and a sigmoid (torch's CPU tanh costs more than its sigmoid: the gate takes
#   about half the time), with the 2 inside folded into the tanh half's weights and biases and the 2 outside
#   into the residual/skip weights (multiplying by 2 is exact in floating point);
# - buffers are reused across the couplings of a call (`_Workspace`): a fresh tensor of tens of megabytes per
#   coupling paid its page faults every time.
#
# The same arithmetic runs on one of three backends (SAMPLING_BACKENDS), whose speed depends on the machine:
#   mm      channels-first [C, G]: BLAS matmuls (torch.mm / addmm_, MKL on x86) with the weights on the left
#   mm_t    time-major [G, C]: the same matmuls transposed (activations on the left, the weights as transposed
#           views), which BLAS blocks differently
#   conv    channels-first oneDNN convolutions (conv1d): the conditioning and residual/skip 1x1 convolutions and
#           each dilated convolution as one call
# On a CPU the backend is chosen by timing all three on the model's own coupling the first time a plan meets a
# shape class (config, dtype, threads, length bucket), once per process (`backend_for`); the choice is kept in
# `sampling_backend_choices()` for the benchmark to report. On a GPU it is `mm` (cuBLAS), not measured.
# WAVFLOW_WAVEGLOW_BACKEND=mm|mm_t|conv skips the measurement (bit-identical output across processes: backends
# differ in the last bits of float rounding).

SAMPLING_BACKENDS = ("mm", "mm_t", "conv")
BACKEND_ENV = "WAVFLOW_WAVEGLOW_BACKEND"
TUNE_GROUPS = 2048  # the longest probe (groups of n_group samples): every length from here on shares one choice


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    how: str                                   # "measured", "forced by WAVFLOW_WAVEGLOW_BACKEND", "cuda default"
    seconds: dict[str, float] = field(default_factory=dict)  # best probe time per backend, where measured


_backend_choices: dict[tuple, BackendChoice] = {}


def sampling_backend_choices() -> dict[str, BackendChoice]:
    """Every backend choice this process made, keyed by a readable shape class."""
    return {_describe_key(k): v for k, v in _backend_choices.items()}


def _describe_key(key: tuple) -> str:
    device, dtype, threads, probe, shape = key
    return f"{device} {str(dtype).replace('torch.', '')} {threads} threads, probe {probe} groups, coupling {shape}"


@dataclass
class _CouplingPlan:
    BLOCK: ClassVar[int] = 4096  # time rows per block of the mm_t backend: bounds its gate buffer (its docstring)

    channels: int
    n_a: int
    kernel: int
    dilations: list[int]
    cond_w: Tensor  # [2 * channels * layers, n_cond]
    cond_b: Tensor  # [2 * channels * layers]: cond + in_layer biases + the in_layers' response to the B_i
    start_w: Tensor  # [channels, n_a]
    first_w: Tensor  # layer 0: [k, 2 * channels, n_a], tap j = W_0j start_w
    taps_w: list[Tensor]  # layers 1...: [k, 2 * channels, channels], tap j = W_ij
    edges: list[list[tuple[int, Tensor]]]  # per layer: (offset != 0, W_ij B_i [2 * channels]) to undo at the edges
    res_skip: list[Tensor]  # per layer: [channels + 2 * n_b, channels] (residual, end o skip); last: [2 * n_b, channels]
    out_b: Tensor  # [2 * n_b]: end bias + end o (sum of skip biases)
    margin: int  # largest tap offset

    def offsets(self, i: int) -> list[int]:
        return [(j - (self.kernel - 1) // 2) * self.dilations[i] for j in range(self.kernel)]

    @classmethod
    def fold(cls, net: WN, dtype: torch.dtype | None = None) -> "_CouplingPlan":
        """The folded weights of `net`, computed in at least float32 and stored in `dtype` (default: the net's)."""
        c, n_layers = net.channels, net.n_layers
        dtype = dtype or net.end.weight.dtype
        acc = torch.promote_types(net.end.weight.dtype, torch.float32)

        def w(t: Tensor) -> Tensor:
            return t.detach().to(acc)

        # the gate's tanh half, pre-multiplied by 2 (module comment): rows [0, c) of each layer's 2c rows
        gate_scale = torch.cat([torch.full((c,), 2.0), torch.ones(c)]).to(device=net.end.weight.device, dtype=acc)
        end_w = w(net.end.weight[:, :, 0])
        start_w = w(net.start.weight[:, :, 0])
        stream_b = w(net.start.bias)  # B_i: the bias the residual stream carries into layer i
        skip_b = end_w.new_zeros(c)
        cond_b, taps_w, edges, res_skip, dilations = [], [], [], [], []
        first_w = None
        for i, (layer, rs) in enumerate(zip(net.in_layers, net.res_skip_layers)):
            lw, k, d = w(layer.weight) * gate_scale[:, None, None], layer.kernel_size[0], layer.dilation[0]
            dilations.append(d)
            offsets = [(j - (k - 1) // 2) * d for j in range(k)]
            responses = [lw[:, :, j] @ stream_b for j in range(k)]
            cond_b.append(w(layer.bias) * gate_scale + sum(responses))
            edges.append([(off, r.to(dtype)) for off, r in zip(offsets, responses) if off != 0])
            if i == 0:
                first_w = torch.stack([lw[:, :, j] @ start_w for j in range(k)])
            else:
                taps_w.append(lw.permute(2, 0, 1).to(dtype).contiguous())
            rs_w = 2.0 * w(rs.weight[:, :, 0])  # acts here are half the module's (module comment)
            if i < n_layers - 1:
                res_skip.append(torch.cat([rs_w[:c], end_w @ rs_w[c:]]).to(dtype))
                stream_b = stream_b + w(rs.bias[:c])
                skip_b = skip_b + w(rs.bias[c:])
            else:
                res_skip.append((end_w @ rs_w).to(dtype))
                skip_b = skip_b + w(rs.bias)
        cond_w = w(net.cond_layer.weight[:, :, 0]) * gate_scale.repeat(n_layers)[:, None]
        k = net.in_layers[0].kernel_size[0]
        return cls(channels=c, n_a=start_w.shape[1], kernel=k, dilations=dilations, cond_w=cond_w.to(dtype),
                   cond_b=(w(net.cond_layer.bias) * gate_scale.repeat(n_layers) + torch.cat(cond_b)).to(dtype),
                   start_w=start_w.to(dtype), first_w=first_w.to(dtype), taps_w=taps_w, edges=edges,
                   res_skip=res_skip, out_b=(w(net.end.bias) + end_w @ skip_b).to(dtype),
                   margin=max((k - 1) // 2 * d for d in dilations))

    def run(self, x_a: Tensor, cond_in: Tensor, backend: str = "mm", work: "_Workspace | None" = None
            ) -> tuple[Tensor, Tensor]:
        """x_a [n_a, G], cond_in [n_cond, G] -> (shift, log_s), each [n_b, G] (views into `work`, possibly
        transposed). Equals WN(x_a, cond_in) split, on any backend. work: buffers reused across calls."""
        work = _Workspace() if work is None else work
        if backend == "mm":
            return self._run_mm(x_a, cond_in, work)
        if backend == "mm_t":
            return self._run_mm_t(x_a, cond_in, work)
        if backend == "conv":
            return self._run_conv(x_a, cond_in, work)
        raise ValueError(f"unknown WaveGlow sampling backend {backend!r}; known: {', '.join(SAMPLING_BACKENDS)}")

    def _gate_taps(self, i: int) -> list[tuple[int, Tensor]]:
        w = self.first_w if i == 0 else self.taps_w[i - 1]
        return list(zip(self.offsets(i), w))

    def _layer_cond(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's conditioning weight [2 * channels, n_cond] and bias [2 * channels]. Each layer's gate starts
        from its own conditioning matmul into one reused buffer, rather than all layers' at once: the same
        arithmetic, and a working set of [2 * channels, G] rather than 8 times that (which no cache holds)."""
        rows = slice(2 * self.channels * i, 2 * self.channels * (i + 1))
        return self.cond_w[rows], self.cond_b[rows]

    def _run_mm(self, x_a: Tensor, cond_in: Tensor, work: "_Workspace") -> tuple[Tensor, Tensor]:
        c, m, g = self.channels, self.margin, x_a.shape[1]
        # Zero margins make shifted views exact zero-padded convolutions. Rows: residual stream, then end output.
        state = work.zeros("state", self.out_b.shape[0] + c, g + 2 * m, x_a)
        x_pad = work.zeros("x_pad", x_a.shape[0], g + 2 * m, x_a)
        gate_buffer = work.get("gate", 2 * c, g, x_a)
        x_pad[:, m:m + g] = x_a
        h, both, out = state[:c, m:m + g], state[:, m:m + g], state[c:, m:m + g]
        h.addmm_(self.start_w, x_a)
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            gate = torch.addmm(cond_b[:, None], cond_w, cond_in, out=gate_buffer)
            source = x_pad if i == 0 else state[:c]
            for offset, w in self._gate_taps(i):
                gate.addmm_(w, source[:, m + offset: m + offset + g])
            for offset, response in edges:  # where a tap reads padding, the stream's bias was not there
                cols = gate[:, : min(-offset, g)] if offset < 0 else gate[:, max(g - offset, 0):]
                cols.sub_(response[:, None])
            s = torch.sigmoid_(gate)
            acts = s[:c].sub_(0.5).mul_(s[c:])
            (out if i == last else both).addmm_(self.res_skip[i], acts)
        out.add_(self.out_b[:, None])
        n_b = out.shape[0] // 2
        return out[:n_b], out[n_b:]

    def _run_mm_t(self, x_a: Tensor, cond_in: Tensor, work: "_Workspace") -> tuple[Tensor, Tensor]:
        """Time-major, layer by layer and, within a layer, in blocks of BLOCK rows: a block's gate is made, gated
        and consumed while it is still in cache (a whole long utterance's is tens of megabytes). Layer i reads
        its whole input and writes the next layer's into the other of two buffers, so blocks need no halo and
        nothing is recomputed; each buffer's columns are [residual stream, end output], so one matmul per block
        carries both forward."""
        c, m, g = self.channels, self.margin, x_a.shape[1]
        width = c + self.out_b.shape[0]
        cur = work.zeros("state_t", g + 2 * m, width, x_a)  # rows: time; columns: stream, then end output
        nxt = work.zeros("state_t2", g + 2 * m, width, x_a)
        x_pad = work.zeros("x_pad_t", g + 2 * m, x_a.shape[0], x_a)
        block = max(1, min(self.BLOCK, g))
        gate_buffer = work.get("gate_t", block, 2 * c, x_a)
        x_pad[m:m + g] = x_a.t()
        cur[m:m + g, :c].addmm_(x_a.t(), self.start_w.t())
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            source = x_pad if i == 0 else cur[:, :c]
            taps = self._gate_taps(i)
            for t0 in range(0, g, block):
                t1 = min(t0 + block, g)
                gate = torch.addmm(cond_b, cond_in[:, t0:t1].t(), cond_w.t(), out=gate_buffer[:t1 - t0])
                for offset, w in taps:
                    gate.addmm_(source[m + offset + t0: m + offset + t1], w.t())
                for offset, response in edges:  # rows [0, -offset) or [g - offset, g) of the utterance
                    lo, hi = (0, min(-offset, g)) if offset < 0 else (max(g - offset, 0), g)
                    lo, hi = max(lo, t0), min(hi, t1)
                    if lo < hi:
                        gate[lo - t0: hi - t0].sub_(response)
                s = torch.sigmoid_(gate)
                acts = s[:, :c].sub_(0.5).mul_(s[:, c:])
                if i < last:
                    torch.addmm(cur[m + t0: m + t1], acts, self.res_skip[i].t(), out=nxt[m + t0: m + t1])
                else:  # the last layer adds to the end output only, which no tap reads: in place
                    cur[m + t0: m + t1, c:].addmm_(acts, self.res_skip[i].t())
            if i < last:
                cur, nxt = nxt, cur
        out = cur[m:m + g, c:]
        out.add_(self.out_b)
        n_b = out.shape[1] // 2
        return out[:, :n_b].t(), out[:, n_b:].t()

    def _run_conv(self, x_a: Tensor, cond_in: Tensor, work: "_Workspace") -> tuple[Tensor, Tensor]:
        c, g = self.channels, x_a.shape[1]
        state = work.zeros("state", c + self.out_b.shape[0], g, x_a)  # rows: residual stream, then end output
        h, out = state[:c], state[c:]
        h.addmm_(self.start_w, x_a)
        last = len(self.edges) - 1
        for i, edges in enumerate(self.edges):
            cond_w, cond_b = self._layer_cond(i)
            gate = F.conv1d(cond_in[None], cond_w[:, :, None], cond_b)[0]
            w = self.first_w if i == 0 else self.taps_w[i - 1]
            source = x_a if i == 0 else h
            pad = (self.kernel - 1) // 2 * self.dilations[i]
            gate.add_(F.conv1d(source[None], w.permute(1, 2, 0), padding=pad, dilation=self.dilations[i])[0])
            for offset, response in edges:
                cols = gate[:, : min(-offset, g)] if offset < 0 else gate[:, max(g - offset, 0):]
                cols.sub_(response[:, None])
            s = torch.sigmoid_(gate)
            acts = s[:c].sub_(0.5).mul_(s[c:])
            rs = F.conv1d(acts[None], self.res_skip[i][:, :, None])[0]
            (out if i == last else state).add_(rs)
        out.add_(self.out_b[:, None])
        n_b = out.shape[0] // 2
        return out[:n_b], out[n_b:]

    def shape_class(self) -> tuple:
        return (self.n_a, self.channels, len(self.dilations), self.kernel, self.cond_w.shape[1])


class _Workspace:
    """Buffers that one `infer` call reuses across its couplings (and utterances): a fresh multi-megabyte
    tensor per coupling costs its page faults every time, about a tenth of a large matmul's time."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, rows: int, cols: int, like: Tensor) -> Tensor:
        """An uninitialised [rows, cols] view of buffer `name`, in `like`'s dtype and device."""
        t = self._buffers.get(name)
        if t is None or t.dtype != like.dtype or t.device != like.device or t.shape[0] < rows or t.shape[1] != cols:
            if t is not None and t.shape[1] == cols:
                rows = max(rows, t.shape[0])
            t = self._buffers[name] = torch.empty(rows, cols, dtype=like.dtype, device=like.device)
        return t[:rows]

    def zeros(self, name: str, rows: int, cols: int, like: Tensor) -> Tensor:
        return self.get(name, rows, cols, like).zero_()


@dataclass
class _SamplingPlan:
    dtype: torch.dtype  # of the coupling networks' arithmetic; the flow state stays in float32 or wider
    upsample: Tensor  # upsample_matrix of the upsampler weight, in dtype
    couplings: list[_CouplingPlan]
    inverses: list[Tensor]  # W_k^-1, computed in float64, in the flow state's dtype

    def backend_for(self, device: torch.device, groups: int) -> BackendChoice:
        """The backend for `groups` columns on `device`: forced, the CUDA default, or measured once per process
        and shape class (module comment). The probe runs the plan's widest coupling on random inputs."""
        forced = os.environ.get(BACKEND_ENV)
        if forced:
            if forced not in SAMPLING_BACKENDS:
                raise WavflowError(f"{BACKEND_ENV}={forced!r}: expected one of {', '.join(SAMPLING_BACKENDS)}")
            return BackendChoice(forced, f"forced by {BACKEND_ENV}")
        if device.type != "cpu":
            return BackendChoice("mm", f"{device.type} default")
        probe = min(TUNE_GROUPS, 1 << max(groups - 1, 1).bit_length())
        coupling = max(self.couplings, key=lambda cp: cp.n_a)
        key = (device.type, self.dtype, torch.get_num_threads(), probe, coupling.shape_class())
        if key not in _backend_choices:
            _backend_choices[key] = _measure_backends(coupling, probe, self.dtype, device)
        return _backend_choices[key]


def _measure_backends(coupling: _CouplingPlan, groups: int, dtype: torch.dtype, device: torch.device,
                      rounds: int = 2) -> BackendChoice:
    """Time every backend on `coupling` over `groups` random columns: one untimed call each (allocator,
    oneDNN primitive creation), then `rounds` rounds taking turns; the fastest best time wins."""
    g = torch.Generator(device=device).manual_seed(0)
    x_a = torch.randn(coupling.n_a, groups, generator=g, device=device).to(dtype)
    cond_in = torch.randn(coupling.cond_w.shape[1], groups, generator=g, device=device).to(dtype)
    best = {b: math.inf for b in SAMPLING_BACKENDS}
    work = _Workspace()
    with torch.no_grad():
        for r in range(rounds + 1):
            for b in SAMPLING_BACKENDS:
                t0 = time.perf_counter()
                coupling.run(x_a, cond_in, b, work)
                if r:
                    best[b] = min(best[b], time.perf_counter() - t0)
    return BackendChoice(min(best, key=best.get), "measured", best)
