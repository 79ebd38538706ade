"""Per-sample output distributions of the WaveNet teacher, all on the likelihood scale of design.md section 2.

Every distribution reads a parameter tensor params [B, P, T] (P = `num_params`) and offers
    log_prob(params, x [B, T]) -> [B, T]   log-density in nats of audio x in [-1, 1]; discrete outputs turn
                                           probability mass into density by dividing by the bin's width in
                                           the [-1, 1] amplitude domain, so all models share one scale
    draw_noise(B, T, generator) -> noise [B, N, T]
    sample(params, temperature, generator=None, noise=None) -> [B, T] in [-1, 1], a deterministic function
                                           of (params, noise), so naive, cached and batched generation that
                                           share the noise draw the same audio

Gaussian (mu, log sigma) with a log-sigma floor; a 10-component discretised mixture of logistics over 16-bit
audio; a 256-way mu-law categorical.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)
UNIFORM_EPS = 1e-5  # uniform noise lives in [eps, 1 - eps]: a logistic's inverse CDF is infinite at 0 and 1


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device)
    return u * (1 - 2 * UNIFORM_EPS) + UNIFORM_EPS


def _pick(cum_probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF choice along dim 1: the first k with cumulative probability > u. cum_probs [B, K, T], u [B, T]."""
    idx = (cum_probs <= u.unsqueeze(1)).sum(dim=1)
    return idx.clamp(max=cum_probs.shape[1] - 1)


class Distribution:
    name: str = ""
    num_params: int = 0
    noise_channels: int = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw_noise(self, batch: int, length: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        raise NotImplementedError

    def sample(self, params: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def prepare_input(self, audio: torch.Tensor) -> torch.Tensor:
        """What the network is fed for past samples: audio as it can be generated (mu-law: bin values)."""
        return audio


class Gaussian(Distribution):
    """x_t ~ N(mu_t, sigma_t^2); params [B, 2, T] = (mu, raw log sigma), log sigma clamped at `log_sigma_min`.

    The floor (-9 while training, design.md section 4) keeps the density finite on digital silence; the student's
    distillation reads the floored (mu, log sigma) through `mu_log_sigma`.
    """

    name = "gaussian"
    num_params = 2
    noise_channels = 1

    def __init__(self, log_sigma_min: float = -9.0):
        self.log_sigma_min = log_sigma_min

    def mu_log_sigma(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """params [B, 2, T] -> (mu [B, T], log sigma [B, T]) with the floor applied."""
        return params[:, 0], torch.clamp(params[:, 1], min=self.log_sigma_min)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.mu_log_sigma(params)
        return -0.5 * LOG_2PI - log_sigma - 0.5 * ((x - mu) * torch.exp(-log_sigma)) ** 2

    def draw_noise(self, batch, length, generator=None, device="cpu"):
        return torch.randn((batch, 1, length), generator=generator, device=device)

    def sample(self, params, temperature=1.0, generator=None, noise=None):
        mu, log_sigma = self.mu_log_sigma(params)
        if noise is None:
            noise = self.draw_noise(mu.shape[0], mu.shape[1], generator, mu.device)
        return torch.clamp(mu + torch.exp(log_sigma) * temperature * noise[:, 0], -1.0, 1.0)


class MixtureOfLogistics(Distribution):
    """Discretised mixture of `components` logistics over 2^bits levels (PixelCNN++ / Parallel WaveNet).

    params [B, 3K, T] = (mixture logits [K], means [K], raw log scales [K]); log scales floored at
    `log_scale_min`. Level i sits at c_i = -1 + i * w, w = 2 / (2^bits - 1); its bin is [c_i - w/2, c_i + w/2],
    except that the first and last bins are open-ended (they take the tails below -1 and above 1), so the
    masses of all 2^bits bins sum to exactly 1. Density = mass / w on the design.md section 2 scale.
    """

    name = "mixture"
    noise_channels = 2  # one uniform picks the component, one drives the logistic's inverse CDF

    def __init__(self, components: int = 10, bits: int = 16, log_scale_min: float = -9.0):
        self.components, self.bits, self.log_scale_min = components, bits, log_scale_min
        self.num_params = 3 * components
        self.levels = 2 ** bits
        self.bin_width = 2.0 / (self.levels - 1)

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """params [B, 3K, T] -> (logits, means, log scales), each [B, K, T], floor applied."""
        k = self.components
        return params[:, :k], params[:, k: 2 * k], torch.clamp(params[:, 2 * k: 3 * k], min=self.log_scale_min)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Level index of amplitude x: round((x + 1) / w), clamped to the 2^bits levels."""
        return torch.clamp(torch.round((x + 1) / self.bin_width), 0, self.levels - 1).long()

    def log_mass(self, params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log P(level = index) [B, T] for integer levels index [B, T]."""
        logits, means, log_scales = self.split(params)
        centre = (index.to(means.dtype) * self.bin_width - 1).unsqueeze(1)
        inv_s = torch.exp(-log_scales)
        hi = (centre + self.bin_width / 2 - means) * inv_s  # standardised upper edge
        lo = (centre - self.bin_width / 2 - means) * inv_s
        # log(sigmoid(hi) - sigmoid(lo)) without cancellation: sigmoid(a) - sigmoid(b) =
        # (e^-b - e^-a) / ((1 + e^-a)(1 + e^-b)), so its log is -b + log(1 - e^(b-a)) - softplus(-a) - softplus(-b).
        inner = -lo + torch.log(-torch.expm1(lo - hi)) - F.softplus(-hi) - F.softplus(-lo)
        first = -F.softplus(-hi)  # log sigmoid(hi): everything below the first level's upper edge
        last = -F.softplus(lo)  # log(1 - sigmoid(lo)): everything above the last level's lower edge
        idx = index.unsqueeze(1).expand_as(hi)
        log_p = torch.where(idx == 0, first, torch.where(idx == self.levels - 1, last, inner))
        return torch.logsumexp(F.log_softmax(logits, dim=1) + log_p, dim=1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.log_mass(params, self.quantize(x)) - math.log(self.bin_width)

    def continuous_log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log-density of the underlying continuous logistic mixture at x [B, T]: smooth in x, which the
        discretised mass is not, so Monte Carlo distillation gradients flow through the student's sample."""
        logits, means, log_scales = self.split(params)
        u = (x.unsqueeze(1) - means) * torch.exp(-log_scales)
        log_pdf = -u - log_scales - 2 * F.softplus(-u)
        return torch.logsumexp(F.log_softmax(logits, dim=1) + log_pdf, dim=1)

    def draw_noise(self, batch, length, generator=None, device="cpu"):
        return _uniform((batch, 2, length), generator, device)

    def sample(self, params, temperature=1.0, generator=None, noise=None):
        """Pick a component by inverse CDF with noise[:, 0], then a logistic of scale s * temperature with
        noise[:, 1]; the continuous value is clipped to [-1, 1] (16-bit quantisation happens on writing)."""
        logits, means, log_scales = self.split(params)
        if noise is None:
            noise = self.draw_noise(logits.shape[0], logits.shape[2], generator, logits.device)
        k = _pick(torch.cumsum(torch.softmax(logits, dim=1), dim=1), noise[:, 0]).unsqueeze(1)
        m, log_s = means.gather(1, k)[:, 0], log_scales.gather(1, k)[:, 0]
        u = noise[:, 1]
        x = m + torch.exp(log_s) * temperature * (torch.log(u) - torch.log1p(-u))
        return torch.clamp(x, -1.0, 1.0)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        logits, means, _ = self.split(params)
        return (torch.softmax(logits, dim=1) * means).sum(dim=1)


class MuLaw(Distribution):
    """256-way categorical over mu-law levels (mu = 255); params [B, 256, T] are logits.

    Level i has companded value f_i = 2 i / mu - 1 and amplitude decode(f_i); its bin is
    [f_i - 1/mu, f_i + 1/mu] in the companded domain (the end bins are half as wide, so the bins tile [-1, 1]),
    mapped back to amplitude. Density = probability / that bin's width in amplitude (design.md section 2):
    narrow bins near zero, wide bins near full scale.
    """

    name = "mulaw"
    noise_channels = 1

    def __init__(self, channels: int = 256):
        self.num_params = channels
        self.mu = channels - 1
        f = torch.arange(channels, dtype=torch.float64) * 2 / self.mu - 1
        edges_f = torch.cat([torch.tensor([-1.0], dtype=torch.float64), (f[:-1] + 1.0 / self.mu),
                             torch.tensor([1.0], dtype=torch.float64)])
        edges = self._expand(edges_f)
        self.values = self._expand(f).float()  # [256] amplitude of each level
        self._tables: dict[torch.device, torch.Tensor] = {}
        self.log_widths = torch.log(edges[1:] - edges[:-1]).float()  # [256] log bin width in amplitude

    def _expand(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sign(f) * torch.expm1(f.abs() * math.log1p(self.mu)) / self.mu

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Amplitude [-1, 1] -> level index in [0, 255] (the bin containing x)."""
        x = torch.clamp(x, -1.0, 1.0)
        f = torch.sign(x) * torch.log1p(self.mu * x.abs()) / math.log1p(self.mu)
        return torch.clamp(torch.floor((f + 1) / 2 * self.mu + 0.5), 0, self.mu).long()

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        # a table per device, made once: a copy to the GPU at every sample would also break CUDA-graph capture
        table = self._tables.get(index.device)
        if table is None:
            table = self._tables[index.device] = self.values.to(index.device)
        return table[index]

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        index = self.encode(x)
        log_p = F.log_softmax(params, dim=1).gather(1, index.unsqueeze(1))[:, 0]
        return log_p - self.log_widths.to(params.device)[index]

    def prepare_input(self, audio: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(audio))

    def draw_noise(self, batch, length, generator=None, device="cpu"):
        return _uniform((batch, 1, length), generator, device)

    def sample(self, params, temperature=1.0, generator=None, noise=None):
        """Level by inverse CDF of softmax(logits / temperature) with noise[:, 0] (argmax at temperature 0);
        returns its amplitude."""
        if temperature == 0:
            return self.decode(params.argmax(dim=1))
        if noise is None:
            noise = self.draw_noise(params.shape[0], params.shape[2], generator, params.device)
        cum = torch.cumsum(torch.softmax(params / temperature, dim=1), dim=1)
        return self.decode(_pick(cum, noise[:, 0]))


def build_distribution(name: str, **kwargs) -> Distribution:
    """'gaussian' (log_sigma_min), 'mixture' (components, bits, log_scale_min) or 'mulaw' (channels)."""
    classes = {"gaussian": Gaussian, "mixture": MixtureOfLogistics, "mulaw": MuLaw}
    if name not in classes:
        raise ValueError(f"unknown output distribution '{name}'; known: {', '.join(classes)}")
    return classes[name](**kwargs)
