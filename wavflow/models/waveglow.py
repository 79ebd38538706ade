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
from dataclasses import dataclass
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
        Runs on a cached, folded copy of the weights (see _CouplingPlan); `inverse` is the plain reference.
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
        cond_in = self.condition(mel, t, plan.upsample)
        x = torch.empty(shape, device=mel.device, dtype=mel.dtype)
        x.copy_(noise).mul_(sigma)  # our own buffer: sampling works in place
        # One utterance at a time: each matmul is already large (G = 2756 columns per second of audio).
        return torch.stack([self._sample_one(plan, x[i], cond_in[i]) for i in range(b)])

    def _sampling_plan(self) -> "_SamplingPlan":
        """The weights `infer` multiplies with, folded and laid out for plain matmuls, cached.

        The cache is keyed on every parameter's storage address and version counter, which every in-place
        update through autograd-visible ops bumps (optimizer steps, load_state_dict, .to(), .copy_()); only
        edits through `.data` bypass it, and those bypass autograd's own checks too.
        """
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        if self._plan is None or self._plan[0] != key:
            self._plan = None  # free the old plan before building the new one
            with torch.inference_mode(False), torch.no_grad():
                plan = _SamplingPlan(
                    upsample=upsample_matrix(self.upsample.weight, self.mel_config.hop_length),
                    couplings=[_CouplingPlan.fold(c.net) for c in self.coupling])
            self._plan = (key, plan)
        return self._plan[1]

    def _sample_one(self, plan: "_SamplingPlan", x: Tensor, cond_in: Tensor) -> Tensor:
        """Run the flows backwards on one utterance, in place: x [n_group, G] (sigma * z, overwritten),
        cond_in [n_mels * n_group, G] -> audio [G * n_group]."""
        cfg = self.config
        start = sum(self._is_exit(k) for k in range(cfg.n_flows)) * cfg.n_early_size
        for k in reversed(range(cfg.n_flows)):
            h = x[start:]  # this flow's channels; the rows above are early noise, waiting to join
            n_a = h.shape[0] // 2
            shift, log_s = plan.couplings[k].run(h[:n_a], cond_in)
            h[n_a:].sub_(shift).mul_(log_s.neg_().exp_())
            h.copy_(torch.mm(self.convinv[k].weight_inverse(), h))
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
# large matmuls (a test pins it to the plain `inverse`):
# - each coupling's conditioning conv is one [2 * channels * layers, n_cond] x [n_cond, G] matmul, and every
#   in_layer then accumulates into its slice of that product (its bias folded into the conditioning bias);
# - a dilated conv is k matmuls of its tap weights with shifted views of a zero-margined buffer (no im2col copy,
#   no padding per layer);
# - the skip 1x1 convs feed only the (linear) end conv, so end o skip_i is one [2 * n_b, channels] matrix per
#   layer, and each layer's residual and folded skip outputs come from one matmul into a buffer holding both;
# - the residual stream is kept without its biases (start bias + residual biases so far, a constant B_i per
#   layer): a conv of a constant is the constant W_ij B_i per tap wherever the tap lands inside the signal, so
#   it joins the conditioning bias, minus the few edge columns where zero padding is read instead;
# - without its bias the first layer's input is start_w x_a, of rank n_a, so its taps are folded to
#   W_0j start_w: a [2 * channels, n_a] matmul replaces a [2 * channels, channels] one.


@dataclass
class _CouplingPlan:
    channels: int
    cond_w: Tensor  # [2 * channels * layers, n_cond]
    cond_b: Tensor  # [2 * channels * layers]: cond + in_layer biases + the in_layers' response to the B_i
    start_w: Tensor  # [channels, n_a]
    first_taps: list[tuple[int, Tensor]]  # layer 0: (time offset, W_0j start_w [2 * channels, n_a])
    taps: list[list[tuple[int, Tensor]]]  # layers 1...: (time offset, W_ij [2 * channels, channels]) per tap
    edges: list[list[tuple[int, Tensor]]]  # per layer: (offset != 0, W_ij B_i [2 * channels]) to undo at the edges
    res_skip: list[Tensor]  # per layer: [channels + 2 * n_b, channels] (residual, end o skip); last: [2 * n_b, channels]
    out_b: Tensor  # [2 * n_b]: end bias + end o (sum of skip biases)
    margin: int  # largest tap offset

    @classmethod
    def fold(cls, net: WN) -> "_CouplingPlan":
        c, n_layers = net.channels, net.n_layers
        end_w = net.end.weight[:, :, 0]
        start_w = net.start.weight[:, :, 0]
        stream_b = net.start.bias  # B_i: the bias the residual stream carries into layer i
        skip_b = end_w.new_zeros(c)
        cond_b, first_taps, taps, edges, res_skip = [], [], [], [], []
        for i, (layer, rs) in enumerate(zip(net.in_layers, net.res_skip_layers)):
            w, k, d = layer.weight, layer.kernel_size[0], layer.dilation[0]
            layer_taps = [((j - (k - 1) // 2) * d, w[:, :, j].contiguous()) for j in range(k)]
            responses = [(off, w_j @ stream_b) for off, w_j in layer_taps]
            cond_b.append(layer.bias + sum(r for _, r in responses))
            edges.append([(off, r) for off, r in responses if off != 0])
            if i == 0:
                first_taps = [(off, w_j @ start_w) for off, w_j in layer_taps]
            else:
                taps.append(layer_taps)
            rs_w = rs.weight[:, :, 0]
            if i < n_layers - 1:
                res_skip.append(torch.cat([rs_w[:c], end_w @ rs_w[c:]]))
                stream_b = stream_b + rs.bias[:c]
                skip_b = skip_b + rs.bias[c:]
            else:
                res_skip.append(end_w @ rs_w)
                skip_b = skip_b + rs.bias
        return cls(channels=c, cond_w=net.cond_layer.weight[:, :, 0],
                   cond_b=net.cond_layer.bias + torch.cat(cond_b), start_w=start_w, first_taps=first_taps,
                   taps=taps, edges=edges, res_skip=res_skip, out_b=net.end.bias + end_w @ skip_b,
                   margin=max(abs(off) for off, _ in first_taps + [t for layer in taps for t in layer]))

    def run(self, x_a: Tensor, cond_in: Tensor) -> tuple[Tensor, Tensor]:
        """x_a [n_a, G], cond_in [n_cond, G] -> (shift, log_s), each [n_b, G]. Equals WN(x_a, cond_in) split."""
        c, m, g = self.channels, self.margin, x_a.shape[1]
        cond = torch.addmm(self.cond_b[:, None], self.cond_w, cond_in)  # every layer's gate input, accumulated below
        # Zero margins make shifted views exact zero-padded convolutions. Rows: residual stream, then end output.
        state = x_a.new_zeros(self.out_b.shape[0] + c, g + 2 * m)
        x_pad = x_a.new_zeros(x_a.shape[0], g + 2 * m)
        x_pad[:, m:m + g] = x_a
        h, both, out = state[:c, m:m + g], state[:, m:m + g], state[c:, m:m + g]
        h.addmm_(self.start_w, x_a)
        for i, edges in enumerate(self.edges):
            gate = cond[2 * c * i: 2 * c * (i + 1)]
            if i == 0:
                for offset, w in self.first_taps:
                    gate.addmm_(w, x_pad[:, m + offset: m + offset + g])
            else:
                for offset, w in self.taps[i - 1]:
                    gate.addmm_(w, state[:c, m + offset: m + offset + g])
            for offset, response in edges:  # where a tap reads padding, the stream's bias was not there
                cols = gate[:, : min(-offset, g)] if offset < 0 else gate[:, max(g - offset, 0):]
                cols.sub_(response[:, None])
            acts = torch.tanh_(gate[:c]).mul_(torch.sigmoid_(gate[c:]))
            if i < len(self.edges) - 1:
                both.addmm_(self.res_skip[i], acts)
            else:
                out.addmm_(self.res_skip[i], acts)
        out.add_(self.out_b[:, None])
        n_b = out.shape[0] // 2
        return out[:n_b], out[n_b:]


@dataclass
class _SamplingPlan:
    upsample: Tensor  # upsample_matrix of the upsampler weight
    couplings: list[_CouplingPlan]
