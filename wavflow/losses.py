"""Distillation losses for the IAF student (design.md section 5) and the multi-resolution STFT magnitude loss.

Everything here is per step: the student's sample x has, at every step t, a known single Gaussian or logistic
q_t = (M_t, S_t) given x[<t], and the teacher, run once on x, gives its own per-step distribution p_t. The
divergence between the two is then a sum of per-step terms, in nats.

    Gaussian teacher:  KL(q_t || p_t) in closed form, plus lambda * (log sigma_p - log sigma_q)^2 (ClariNet).
    Logistic-mixture teacher:  KL = H(q, p) - H(q); the cross-entropy H(q, p) by Monte Carlo with reparameterised
                        samples drawn from q_t and scored by p_t, the entropy H(q) analytically.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .frontend import stft_magnitude

Base = Literal["gaussian", "logistic"]

# Differential entropy of the standard base distribution, nats: H(M + S * eps) = log S + ENTROPY[base].
GAUSSIAN_ENTROPY = 0.5 * math.log(2 * math.pi * math.e)  # 1.4189...
LOGISTIC_ENTROPY = 2.0
ENTROPY = {"gaussian": GAUSSIAN_ENTROPY, "logistic": LOGISTIC_ENTROPY}


# ----------------------------------------------------------------------------------------------------------------
# Gaussian teacher: closed form

def gaussian_reverse_kl(mu_q: torch.Tensor, log_sigma_q: torch.Tensor,
                        mu_p: torch.Tensor, log_sigma_p: torch.Tensor) -> torch.Tensor:
    """Per-step KL(q || p) of two Gaussians, nats, same shape as the inputs (broadcast).

    KL = log(sigma_p / sigma_q) + (sigma_q^2 - sigma_p^2 + (mu_q - mu_p)^2) / (2 sigma_p^2).
    Written with the variance ratio exp(2 (log sigma_q - log sigma_p)) so that tiny sigmas do not underflow.
    """
    log_ratio = log_sigma_p - log_sigma_q
    return log_ratio + 0.5 * (torch.exp(-2 * log_ratio) - 1.0 + ((mu_q - mu_p) * torch.exp(-log_sigma_p)) ** 2)


def log_scale_regularizer(log_sigma_q: torch.Tensor, log_sigma_p: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """ClariNet's per-step penalty weight * (log sigma_p - log sigma_q)^2 (weight lambda = 4 in the paper).

    The reverse KL is flat in sigma_q where the teacher is sharp and the student's mean is off; this term pulls
    the scales together early in distillation, before the means agree.
    """
    return weight * (log_sigma_p - log_sigma_q) ** 2


def gaussian_cross_entropy(mean_q: torch.Tensor, log_scale_q: torch.Tensor, mu_p: torch.Tensor,
                           log_sigma_p: torch.Tensor, base: Base) -> torch.Tensor:
    """Per-step H(q, p) = -E_q log N(x; mu_p, sigma_p) for q = M + S * eps of either base, in closed form.

    Only q's mean and variance enter: H = log sigma_p + 0.5 ln(2 pi) + (Var_q + (M - mu_p)^2) / (2 sigma_p^2),
    with Var_q = S^2 (Gaussian) or S^2 pi^2 / 3 (logistic). This lets a logistic-base student (the Parallel
    WaveNet layout) distil from a Gaussian teacher without Monte Carlo noise.
    """
    var_factor = 1.0 if base == "gaussian" else math.pi ** 2 / 3
    inv_var_p = torch.exp(-2 * log_sigma_p)
    return (log_sigma_p + 0.5 * math.log(2 * math.pi)
            + 0.5 * (var_factor * torch.exp(2 * log_scale_q) + (mean_q - mu_p) ** 2) * inv_var_p)


# ----------------------------------------------------------------------------------------------------------------
# Logistic-mixture teacher: Monte Carlo cross-entropy + analytic entropy

def base_entropy(log_scale: torch.Tensor, base: Base) -> torch.Tensor:
    """Per-step differential entropy of M + S * eps for eps ~ base: log S + (1.4189 Gaussian | 2 logistic)."""
    return log_scale + ENTROPY[base]


def sample_base(shape: tuple[int, ...] | torch.Size, base: Base, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gaussian or standard logistic noise of `shape`."""
    if base == "gaussian":
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)
    if base == "logistic":
        # Inverse CDF; u kept inside (0, 1) by a margin that float32 can resolve, so the log never sees 0.
        eps = 1e-5 if dtype != torch.float64 else 1e-12
        u = torch.rand(shape, dtype=dtype, device=device, generator=generator) * (1 - 2 * eps) + eps
        return torch.log(u) - torch.log1p(-u)
    raise ValueError(f"unknown base distribution '{base}': expected 'gaussian' or 'logistic'")


def base_log_prob(eps: torch.Tensor, base: Base) -> torch.Tensor:
    """Log-density of the standard base distribution at eps (elementwise)."""
    if base == "gaussian":
        return -0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi)
    if base == "logistic":
        return -eps - 2 * F.softplus(-eps)
    raise ValueError(f"unknown base distribution '{base}': expected 'gaussian' or 'logistic'")


def logistic_mixture_log_pdf(x: torch.Tensor, logit_probs: torch.Tensor, means: torch.Tensor,
                             log_scales: torch.Tensor) -> torch.Tensor:
    """Continuous density of a logistic mixture at x: x [..., T], parameters [..., C, T] -> [..., T] nats.

    The teacher is trained on the *discretised* mixture over 16-bit audio, but its mass in a bin is piecewise
    constant in x and so has zero gradient with respect to the student's sample. Its continuous counterpart, the
    mixture density, equals mass / bin width up to O(bin width / scale), and is differentiable in x: that is the
    density the cross-entropy scores.
    """
    z = (x.unsqueeze(-2) - means) * torch.exp(-log_scales)
    log_pdf = -z - 2 * F.softplus(-z) - log_scales  # log logistic(z) - log s
    return torch.logsumexp(log_pdf + F.log_softmax(logit_probs, dim=-2), dim=-2)


def mixture_cross_entropy(mean_q: torch.Tensor, log_scale_q: torch.Tensor, logit_probs: torch.Tensor,
                          means: torch.Tensor, log_scales: torch.Tensor, num_samples: int = 4,
                          base: Base = "logistic", generator: torch.Generator | None = None) -> torch.Tensor:
    """Monte Carlo estimate of the per-step cross-entropy H(q_t, p_t) = -E_{x ~ q_t} log p_t(x), nats [B, T].

    q_t = M_t + S_t * eps (eps ~ base) is the student's per-step distribution, mean_q = M and log_scale_q = log S
    both [B, T]; p_t is the teacher's logistic mixture at step t, parameters [B, C, T] computed ONCE by running the
    teacher on the student's own sample. The `num_samples` draws per step are reparameterised, so gradients reach
    M and S; they are only scored here and never fed back through the teacher (that would need a teacher pass per
    draw, and each draw would change the teacher's conditioning of all later steps).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    eps = sample_base((num_samples, *mean_q.shape), base, dtype=mean_q.dtype, device=mean_q.device,
                      generator=generator)
    x = mean_q + torch.exp(log_scale_q) * eps  # [K, B, T]
    log_p = logistic_mixture_log_pdf(x, logit_probs.unsqueeze(0), means.unsqueeze(0), log_scales.unsqueeze(0))
    return -log_p.mean(0)


def mixture_reverse_kl(mean_q: torch.Tensor, log_scale_q: torch.Tensor, logit_probs: torch.Tensor,
                       means: torch.Tensor, log_scales: torch.Tensor, num_samples: int = 4,
                       base: Base = "logistic", generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-step KL(q_t || p_t) = H(q_t, p_t) [Monte Carlo] - H(q_t) [analytic], nats [B, T]."""
    ce = mixture_cross_entropy(mean_q, log_scale_q, logit_probs, means, log_scales, num_samples, base, generator)
    return ce - base_entropy(log_scale_q, base)


# ----------------------------------------------------------------------------------------------------------------
# Multi-resolution STFT magnitude loss

# (n_fft, hop, win) as in Parallel WaveGAN's multi-resolution loss: short frames catch transients, long ones pitch.
STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


def stft_loss(pred: torch.Tensor, target: torch.Tensor,
              resolutions: tuple[tuple[int, int, int], ...] = STFT_RESOLUTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-resolution STFT magnitude loss of pred against target, both [B, T] -> (spectral convergence, log-mag L1).

    Spectral convergence ||S_t - S_p||_F / ||S_t||_F weighs the loud bins (the shape of the spectrum); the L1
    distance of log magnitudes weighs quiet bins too (noise floor, whispering). Each is averaged over the
    resolutions; both are zero iff the magnitudes agree.
    """
    if pred.shape != target.shape:
        raise ValueError(f"stft_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    sc_total = pred.new_zeros(())
    mag_total = pred.new_zeros(())
    for n_fft, hop, win in resolutions:
        p = stft_magnitude(pred, n_fft, hop, win)
        t = stft_magnitude(target, n_fft, hop, win)
        # Floor before the log: digital silence would otherwise give log 0. (torch's vector_norm has a zero
        # subgradient at 0, so identical signals give exactly 0 and a finite gradient.)
        p = p.clamp(min=1e-7)
        t = t.clamp(min=1e-7)
        sc = torch.linalg.vector_norm((t - p).flatten(1), dim=1) / torch.linalg.vector_norm(t.flatten(1), dim=1)
        sc_total = sc_total + sc.mean()
        mag_total = mag_total + (torch.log(t) - torch.log(p)).abs().mean()
    n = len(resolutions)
    return sc_total / n, mag_total / n


def log_spectral_distance(pred: torch.Tensor, target: torch.Tensor, n_fft: int = 1024, hop_length: int = 256,
                          floor: float = 1e-5) -> torch.Tensor:
    """Log-spectral distance in dB, [B] -> per utterance: mean over frames of the RMS over bins of
    20 log10(|P| / |T|). A quality read-out for logs; magnitudes floored at `floor` (silence is not infinitely far)."""
    p = stft_magnitude(pred, n_fft, hop_length, n_fft).clamp(min=floor)
    t = stft_magnitude(target, n_fft, hop_length, n_fft).clamp(min=floor)
    db = 20 * torch.log10(p / t)
    return db.pow(2).mean(1).sqrt().mean(-1)
