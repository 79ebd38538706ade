"""Distillation losses checked against Monte Carlo and numerical integration; STFT loss on real speech."""
import math

import pytest
import torch

from wavflow.audio import load_audio
from wavflow.losses import (
    GAUSSIAN_ENTROPY,
    base_entropy,
    base_log_prob,
    gaussian_cross_entropy,
    gaussian_reverse_kl,
    log_scale_regularizer,
    log_spectral_distance,
    logistic_mixture_log_pdf,
    mixture_cross_entropy,
    mixture_reverse_kl,
    sample_base,
    stft_loss,
)

D = torch.float64


def _gauss_logpdf(x, mu, log_sigma):
    return -0.5 * ((x - mu) / math.exp(log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("mu_q,ls_q,mu_p,ls_p", [
    (0.0, 0.0, 1.0, 0.0),        # mean shift only: KL = 0.5
    (0.3, -1.0, -0.2, -0.5),     # student narrower than the teacher
    (0.0, 0.5, 0.4, -0.3),       # student wider (the expensive direction of the reverse KL)
    (0.01, -6.0, 0.012, -5.5),   # audio-sized scales: sigma ~ 2.5e-3
])
def test_gaussian_kl_matches_monte_carlo(mu_q, ls_q, mu_p, ls_p):
    g = torch.Generator().manual_seed(1)
    x = mu_q + math.exp(ls_q) * torch.randn(100_000, dtype=D, generator=g)
    log_ratio = _gauss_logpdf(x, mu_q, ls_q) - _gauss_logpdf(x, mu_p, ls_p)
    mc = log_ratio.mean().item()
    closed = gaussian_reverse_kl(*(torch.tensor(v, dtype=D) for v in (mu_q, ls_q, mu_p, ls_p))).item()
    assert closed > 0.05
    assert abs(mc - closed) < 0.01 * closed, (mc, closed)


def test_gaussian_kl_zero_iff_equal_and_regularizer():
    mu = torch.randn(3, 100, dtype=D)
    ls = torch.randn(3, 100, dtype=D) - 3
    assert torch.allclose(gaussian_reverse_kl(mu, ls, mu, ls), torch.zeros_like(mu), atol=1e-12)
    kl = gaussian_reverse_kl(mu, ls, mu + 0.01, ls + 0.1)
    assert (kl > 0).all()
    reg = log_scale_regularizer(ls, ls + 0.1)
    assert torch.allclose(reg, torch.full_like(reg, 4 * 0.01))
    assert torch.allclose(log_scale_regularizer(ls, ls - 0.3, weight=2.0), torch.full_like(reg, 2 * 0.09))


@pytest.mark.parametrize("base", ["gaussian", "logistic"])
def test_gaussian_cross_entropy_matches_integration_and_kl(base):
    m, log_s, mu_p, log_sp = 0.02, -3.5, -0.01, -3.0
    s = math.exp(log_s)
    x = torch.linspace(m - 60 * s, m + 60 * s, 400_001, dtype=D)
    q = torch.exp(base_log_prob((x - m) / s, base)) / s
    reference = -torch.trapezoid(q * _gauss_logpdf(x, mu_p, log_sp), x).item()
    args = [torch.tensor(v, dtype=D) for v in (m, log_s, mu_p, log_sp)]
    ce = gaussian_cross_entropy(*args, base=base)
    assert abs(ce.item() - reference) < 1e-7 * max(1.0, abs(reference))
    if base == "gaussian":  # H(q, p) - H(q) is the closed-form KL
        assert torch.allclose(ce - base_entropy(args[1], base), gaussian_reverse_kl(*args), atol=1e-12)


def test_base_entropy_constants():
    g = torch.Generator().manual_seed(2)
    for base in ("gaussian", "logistic"):
        eps = sample_base((400_000,), base, dtype=D, generator=g)
        nll = -base_log_prob(eps, base)
        se = nll.std().item() / math.sqrt(eps.numel())
        assert abs(nll.mean().item() - base_entropy(torch.zeros((), dtype=D), base).item()) < 4 * se
    assert abs(GAUSSIAN_ENTROPY - 1.4189) < 1e-4


def _teacher():
    # Three components, deliberately off the student's centre and of very different widths.
    logits = torch.tensor([0.3, -0.5, 1.0], dtype=D).view(1, 3, 1)
    means = torch.tensor([-0.05, 0.02, 0.1], dtype=D).view(1, 3, 1)
    log_scales = torch.tensor([-3.0, -4.5, -2.5], dtype=D).view(1, 3, 1)
    return logits, means, log_scales


def test_logistic_mixture_density_integrates_to_one():
    logits, means, log_scales = _teacher()
    x = torch.linspace(-3, 3, 600_001, dtype=D)
    p = logistic_mixture_log_pdf(x.view(1, -1), logits, means, log_scales).exp()[0]
    assert abs(torch.trapezoid(p, x).item() - 1.0) < 1e-6


@pytest.mark.parametrize("base", ["gaussian", "logistic"])
def test_mixture_cross_entropy_matches_numerical_integration(base):
    logits, means, log_scales = _teacher()
    m, log_s = 0.03, -3.2
    s = math.exp(log_s)
    # Grid reference: H(q, p) = -integral q(x) log p(x) dx, q the student's per-step distribution.
    x = torch.linspace(m - 60 * s, m + 60 * s, 400_001, dtype=D)
    eps = (x - m) / s
    q = torch.exp(base_log_prob(eps, base)) / s
    log_p = logistic_mixture_log_pdf(x.view(1, -1), logits, means, log_scales)[0]
    reference = -torch.trapezoid(q * log_p, x).item()

    # The estimator as training uses it: K = 4 draws per step, over many steps sharing one distribution.
    steps = 50_000
    mean_q = torch.full((1, steps), m, dtype=D)
    log_scale_q = torch.full((1, steps), log_s, dtype=D)
    ce = mixture_cross_entropy(mean_q, log_scale_q, logits.expand(1, 3, steps), means.expand(1, 3, steps),
                               log_scales.expand(1, 3, steps), num_samples=4, base=base,
                               generator=torch.Generator().manual_seed(3))
    assert ce.shape == (1, steps)
    se = ce.std().item() / math.sqrt(steps)
    assert se < 0.01
    assert abs(ce.mean().item() - reference) < 4 * se, (ce.mean().item(), reference, se)


def test_mixture_kl_zero_when_teacher_equals_student_and_has_gradients():
    # One-component teacher identical to the student's logistic: KL = 0, which needs the analytic entropy right.
    steps = 100_000
    m = torch.full((1, steps), 0.1, dtype=D, requires_grad=True)
    log_s = torch.full((1, steps), -4.0, dtype=D, requires_grad=True)
    kl = mixture_reverse_kl(m, log_s, torch.zeros(1, 1, steps, dtype=D), m.detach().unsqueeze(1),
                            log_s.detach().unsqueeze(1), num_samples=4, base="logistic",
                            generator=torch.Generator().manual_seed(4))
    se = kl.std().item() / math.sqrt(steps)
    assert abs(kl.mean().item()) < 4 * se
    # Away from the teacher the KL is positive and its gradient pulls the student's mean towards it.
    kl = mixture_reverse_kl(m, log_s, torch.zeros(1, 1, steps, dtype=D), torch.full((1, 1, steps), 0.12, dtype=D),
                            log_s.detach().unsqueeze(1), num_samples=4, base="logistic",
                            generator=torch.Generator().manual_seed(5))
    assert kl.mean().item() > 0.05
    kl.mean().backward()
    assert m.grad.sum().item() < 0  # increasing M (0.1 -> 0.12) lowers the KL
    assert torch.isfinite(log_s.grad).all() and log_s.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def speech(short_clip):
    return load_audio(short_clip, 22050)[:22050].unsqueeze(0)


def test_stft_loss_zero_for_identical_signals(speech):
    pred = speech.clone().requires_grad_(True)
    sc, mag = stft_loss(pred, speech)
    assert sc.item() == 0.0 and mag.item() == 0.0
    (sc + mag).backward()
    assert torch.isfinite(pred.grad).all()


def test_stft_loss_positive_with_gradients(speech):
    g = torch.Generator().manual_seed(6)
    for pred in (0.5 * speech, speech + 0.01 * torch.randn(speech.shape, generator=g), torch.roll(speech, 300, -1)):
        pred = pred.clone().requires_grad_(True)
        sc, mag = stft_loss(pred, speech)
        assert sc.item() > 0 and mag.item() > 0
        (sc + mag).backward()
        assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # Halving the amplitude: spectral convergence 0.5 exactly, log-magnitude distance ln 2 wherever above the floor.
    sc, mag = stft_loss(0.5 * speech, speech)
    assert abs(sc.item() - 0.5) < 1e-5
    assert abs(mag.item() - math.log(2)) < 0.02


def test_log_spectral_distance(speech):
    assert log_spectral_distance(speech, speech).abs().max().item() == 0.0
    lsd = log_spectral_distance(0.5 * speech, speech)  # every unfloored bin 6.02 dB down
    assert lsd.shape == (1,) and 5.0 < lsd.item() <= 20 * math.log10(2) + 1e-4
