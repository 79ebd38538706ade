"""Output distributions: normalisation on the design.md section 2 scale, edge bins, samplers' moments, shared noise."""
from __future__ import annotations

import math

import pytest
import torch

from wavflow.distributions import Gaussian, MixtureOfLogistics, MuLaw, build_distribution


def _params(*rows: list[float]) -> torch.Tensor:
    """[B=1, P, T=len(rows)] from per-step parameter lists."""
    return torch.tensor(rows, dtype=torch.float64).t().unsqueeze(0)


# ---- Gaussian ---------------------------------------------------------------------------------------------------

def test_gaussian_density_integrates_to_one_and_matches_the_formula():
    g = Gaussian(log_sigma_min=-9.0)
    params = _params([0.1, -2.0], [-0.3, -4.5], [0.0, 0.3])
    mu, ls = params[0, 0], params[0, 1]
    for t in range(3):
        sigma = math.exp(ls[t])
        x = torch.linspace(float(mu[t]) - 12 * sigma, float(mu[t]) + 12 * sigma, 20001, dtype=torch.float64)
        lp = g.log_prob(params[..., t: t + 1].expand(1, 2, x.numel()), x[None])
        assert abs(torch.trapezoid(lp.exp()[0], x).item() - 1) < 1e-9
        ref = torch.distributions.Normal(mu[t], sigma).log_prob(x)
        torch.testing.assert_close(lp[0], ref)


def test_gaussian_log_sigma_floor():
    g = Gaussian(log_sigma_min=-7.0)
    params = _params([0.0, -20.0])
    mu, ls = g.mu_log_sigma(params)
    assert ls.item() == -7.0
    # N(0, e^-14) density at 0 with every constant: -0.5 ln(2 pi) + 7
    log_prob = g.log_prob(params, torch.zeros(1, 1, dtype=torch.float64)).item()
    assert abs(log_prob - (7 - 0.5 * math.log(2 * math.pi))) < 1e-12


def test_gaussian_sampler_moments_temperature_and_noise():
    g = Gaussian()
    T = 200_000
    params = torch.stack([torch.full((T,), 0.2), torch.full((T,), math.log(0.05))]).unsqueeze(0)
    x = g.sample(params, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(x.mean().item() - 0.2) < 3 * 0.025 / math.sqrt(T) * 5
    assert abs(x.std().item() / 0.025 - 1) < 0.01
    again = g.sample(params, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    noise = g.draw_noise(1, T, torch.Generator().manual_seed(0))
    assert torch.equal(g.sample(params, 0.5, noise=noise), x)
    assert torch.equal(g.sample(params, 0.0, noise=noise), params[:, 0])


# ---- discretised mixture of logistics ---------------------------------------------------------------------------

def _random_mixture_params(mix: MixtureOfLogistics, T: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    K = mix.components
    logits = torch.randn(1, K, T, generator=gen, dtype=torch.float64) * 2
    means = torch.rand(1, K, T, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # some beyond the edges
    log_scales = torch.rand(1, K, T, generator=gen, dtype=torch.float64) * 8 - 10  # down to the floor
    return torch.cat([logits, means, log_scales], dim=1)


def test_mixture_masses_over_all_65536_bins_sum_to_one():
    mix = MixtureOfLogistics(components=10, bits=16, log_scale_min=-9.0)
    levels = torch.arange(65536)[None]
    for seed in range(2):
        p = _random_mixture_params(mix, 1, seed)
        log_mass = mix.log_mass(p.expand(1, 30, 65536), levels)
        assert abs(log_mass.exp().sum().item() - 1) < 1e-9, seed
        # density on the design.md section 2 scale = mass / bin width, width 2 / 65535
        centres = levels.double() * 2 / 65535 - 1
        lp = mix.log_prob(p.expand(1, 30, 65536), centres)
        torch.testing.assert_close(lp, log_mass - math.log(2 / 65535))


def test_mixture_edge_bins_are_open_ended():
    mix = MixtureOfLogistics(components=1, bits=16)
    w = 2 / 65535
    p = _params([0.0, -1.05, math.log(0.02)])  # one logistic centred below -1: the first bin holds its left tail
    first = mix.log_mass(p, torch.tensor([[0]])).exp().item()
    expected = torch.sigmoid(torch.tensor((-1 + w / 2 + 1.05) / 0.02, dtype=torch.float64)).item()
    assert abs(first - expected) < 1e-12 and first > 0.9
    p = _params([0.0, 1.05, math.log(0.02)])
    last = mix.log_mass(p, torch.tensor([[65535]])).exp().item()
    assert abs(last - (1 - torch.sigmoid(torch.tensor((1 - w / 2 - 1.05) / 0.02, dtype=torch.float64)).item())) < 1e-12
    # an inner bin far in a tail still has a finite, accurate log mass (no cancellation to log 0)
    p = _params([0.0, 0.0, math.log(1e-3)])
    lm = mix.log_mass(p, torch.tensor([[65535 // 2 + 3000]])).item()  # ~0.09 away: 90 scales
    x = (65535 // 2 + 3000) * w - 1
    approx = -x / 1e-3 + math.log(w / 1e-3)  # logistic tail: pdf ~ e^-u / s
    assert math.isfinite(lm) and abs(lm - approx) < 1e-2


def test_mixture_quantisation_and_float32_agree_with_float64():
    mix = MixtureOfLogistics()
    p = _random_mixture_params(mix, 64, seed=7)
    x = torch.rand(1, 64, dtype=torch.float64) * 2 - 1
    lp64 = mix.log_prob(p, x)
    lp32 = mix.log_prob(p.float(), x.float())
    torch.testing.assert_close(lp32.double(), lp64, atol=2e-3, rtol=1e-4)
    # every amplitude inside a bin has that bin's density
    w = 2 / 65535
    idx = mix.quantize(x)
    assert torch.all((x - (idx * w - 1)).abs() <= w / 2 + 1e-12)
    torch.testing.assert_close(mix.log_prob(p, idx * w - 1 + 0.4 * w), lp64)


def test_mixture_continuous_density_integrates_to_one():
    mix = MixtureOfLogistics(components=3)
    p = _params([0.3, -1.0, 0.5, -0.4, 0.1, 0.6, math.log(0.05), math.log(0.01), math.log(0.1)])
    x = torch.linspace(-4, 4, 400001, dtype=torch.float64)
    lp = mix.continuous_log_prob(p.expand(1, 9, x.numel()), x[None])[0]
    assert abs(torch.trapezoid(lp.exp(), x).item() - 1) < 1e-6


def test_mixture_sampler_moments_and_temperature():
    mix = MixtureOfLogistics(components=3)
    T = 300_000
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    m = torch.tensor([-0.4, 0.1, 0.5], dtype=torch.float64)
    s = torch.tensor([0.02, 0.05, 0.03], dtype=torch.float64)
    p = torch.cat([pi.log(), m, s.log()])[None, :, None].expand(1, 9, T)
    x = mix.sample(p, 1.0, generator=torch.Generator().manual_seed(0))
    mean = (pi * m).sum()
    var = (pi * (s ** 2 * math.pi ** 2 / 3 + m ** 2)).sum() - mean ** 2
    assert abs(x.mean().item() - mean.item()) < 5 * math.sqrt(var / T)
    assert abs(x.var().item() / var.item() - 1) < 0.01
    x0 = mix.sample(p, 0.0, generator=torch.Generator().manual_seed(0))  # temperature 0: component means
    assert set(torch.unique(x0).tolist()) <= set(m.tolist())
    counts = torch.stack([(x0 == v).double().mean() for v in m])
    assert torch.allclose(counts, pi, atol=0.005)


# ---- mu-law -----------------------------------------------------------------------------------------------------

def test_mulaw_bins_tile_the_amplitude_range():
    mu = MuLaw(256)
    assert abs(mu.log_widths.double().exp().sum().item() - 2) < 1e-5
    assert torch.equal(mu.encode(mu.values), torch.arange(256))
    assert mu.values[0] == -1 and mu.values[255] == 1
    # the bin of every amplitude contains it: density is constant across a bin's width
    x = torch.linspace(-1, 1, 100001)
    idx = mu.encode(x)
    assert torch.all(idx[1:] >= idx[:-1]) and idx[0] == 0 and idx[-1] == 255
    edges = torch.cat([torch.tensor([-1.0]), torch.cumsum(mu.log_widths.double().exp(), 0) - 1])
    inside = (x.double() >= edges[idx] - 1e-6) & (x.double() <= edges[idx + 1] + 1e-6)
    assert inside.all()


def test_mulaw_masses_sum_to_one_and_density_times_width_is_the_mass():
    mu = MuLaw(256)
    logits = torch.randn(1, 256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    lp = mu.log_prob(logits.expand(1, 256, 256), mu.values.double()[None])  # one amplitude per level
    mass = (lp + mu.log_widths.double()).exp()
    torch.testing.assert_close(mass[0], torch.softmax(logits[0, :, 0], 0))
    assert abs(mass.sum().item() - 1) < 1e-12
    # the density is constant on each bin, so its integral over [-1, 1] is exact at the bins' midpoints
    widths = mu.log_widths.double().exp()
    edges = torch.cat([torch.tensor([-1.0], dtype=torch.float64), torch.cumsum(widths, 0) - 1])
    mid = (edges[:-1] + edges[1:]) / 2
    dens = mu.log_prob(logits.expand(1, 256, 256), mid[None])[0].exp()
    assert abs((dens * widths).sum().item() - 1) < 1e-6


def test_mulaw_sampler_frequencies_temperature_and_argmax():
    mu = MuLaw(256)
    T = 50_000
    logits = torch.full((256,), -30.0)
    logits[[10, 128, 200]] = torch.tensor([0.0, 1.0, 0.5])
    p = logits[None, :, None].expand(1, 256, T)
    x = mu.sample(p, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(x == mu.values[i]).float().mean() for i in (10, 128, 200)])
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 1.0, 0.5]), 0), atol=0.01, rtol=0)
    cold = mu.sample(p, 0.5, generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(cold == mu.values[i]).float().mean() for i in (10, 128, 200)])
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 2.0, 1.0]), 0), atol=0.01, rtol=0)
    assert torch.all(mu.sample(p[..., :5], 0.0) == mu.values[128])


def test_build_distribution_and_noise_shapes():
    for name, n in [("gaussian", 1), ("mixture", 2), ("mulaw", 1)]:
        d = build_distribution(name)
        noise = d.draw_noise(3, 7, torch.Generator().manual_seed(0))
        assert noise.shape == (3, n, 7)
        if name != "gaussian":
            assert noise.min() > 0 and noise.max() < 1
    with pytest.raises(ValueError):
        build_distribution("laplace")
