"""NVIDIA's WaveGlow denoiser: bias spectrum from an all-zero mel at sigma 0, magnitude subtraction."""
from __future__ import annotations

import math

import pytest
import torch

from wavflow.denoiser import Denoiser
from wavflow.models.waveglow import WaveGlow, WaveGlowConfig


@pytest.fixture(scope="module")
def model() -> WaveGlow:
    """A tiny WaveGlow whose couplings are not the identity, so an all-zero mel at sigma 0 gives a real bias."""
    torch.manual_seed(0)
    m = WaveGlow(WaveGlowConfig.tiny()).eval()
    with torch.no_grad():
        for c in m.coupling:
            c.net.end.weight.normal_(0, 0.05)
            c.net.end.bias.normal_(0, 0.05)
    return m


def energy(x: torch.Tensor) -> float:
    return x.pow(2).mean().item()


def test_bias_is_first_frame_of_zero_mel_output(model):
    d = Denoiser(model)
    bias_audio = model.infer(torch.zeros(1, 80, 88), sigma=0.0)
    spec = torch.stft(bias_audio, 1024, 256, 1024, torch.hann_window(1024), center=True, pad_mode="reflect",
                      return_complex=True)
    torch.testing.assert_close(d.bias_spec, spec.abs()[0, :, 0])
    assert d.bias_spec.max() > 1.0


def test_strength_zero_returns_input(model):
    d = Denoiser(model)
    x = 0.1 * torch.randn(2, 5000)
    torch.testing.assert_close(d.denoise(x, 0.0), x, atol=1e-5, rtol=0)
    assert d.denoise(x[0], 0.0).shape == (5000,)
    short = 0.1 * torch.randn(256)  # one frame: shorter than half a window
    torch.testing.assert_close(d(short, 0.0), short, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=">= 0"):
        d.denoise(x, -0.1)


def test_denoising_removes_the_bias(model):
    d = Denoiser(model)
    bias = model.infer(torch.zeros(1, 80, 40), sigma=0.0)[0]
    ratios = [energy(d.denoise(bias, s)) / energy(bias) for s in (0.0, 0.5, 1.0, 2.0)]
    assert ratios[0] == pytest.approx(1.0, abs=1e-5)
    assert ratios[1] > ratios[2] > ratios[3]
    assert ratios[2] < 0.5 and ratios[3] < 0.1
    # a tone under the bias: denoising brings the mixture closer to the clean tone
    t = torch.arange(bias.shape[0]) / 22050
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    cleaned = d.denoise(tone + bias, 1.0)
    assert energy(cleaned - tone) < 0.5 * energy(bias)
