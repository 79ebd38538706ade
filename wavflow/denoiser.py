"""NVIDIA's WaveGlow denoiser: subtract the vocoder's own bias spectrum from its output.

A WaveGlow (or any vocoder) leaves a faint, stationary hiss/hum that depends only on its weights. Vocoding an
all-zero mel without noise (`Vocoder.bias_audio`: WaveGlow at sigma 0) isolates it; the first STFT frame's
magnitude is that bias. Denoising subtracts
strength * bias from every frame's magnitude (clamped at 0) and resynthesises with the original phase
(design.md section 3; NVIDIA/waveglow denoiser.py). Typical strengths: 0.01 (light) to 0.1 (strong).

    denoiser = Denoiser(model)                  # once per model: one vocoder pass over 88 frames
    clean = denoiser.denoise(audio, strength=0.05)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .models import Vocoder


class Denoiser(nn.Module):
    """Bias-spectrum subtraction for a vocoder with a noise-free output (`bias_audio`; a family without one refuses
    in one line).

    STFT settings follow the model's mel config (n_fft 1024, hop 256, win 1024 for the default, as NVIDIA's).
    """

    def __init__(self, model: Vocoder, bias_frames: int = 88):
        super().__init__()
        mel_config = model.mel_config
        self.n_fft, self.hop_length, self.win_length = mel_config.n_fft, mel_config.hop_length, mel_config.win_length
        param = next(model.parameters())
        mel = torch.zeros(1, mel_config.n_mels, bias_frames, device=param.device, dtype=param.dtype)
        with torch.no_grad():
            bias_audio = model.bias_audio(mel).float()
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True, device=param.device))
        self.register_buffer("bias_spec", self._stft(bias_audio).abs()[0, :, 0])  # [n_fft // 2 + 1]

    def _stft(self, audio: Tensor) -> Tensor:
        return torch.stft(audio, self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)

    @torch.no_grad()
    def denoise(self, audio: Tensor, strength: float = 0.1) -> Tensor:
        """audio [T] or [B, T] -> the same shape, with strength * bias removed from every frame's magnitude."""
        if strength < 0:
            raise ValueError(f"denoising strength must be >= 0, got {strength}")
        squeeze = audio.dim() == 1
        x = audio[None] if squeeze else audio
        dtype = x.dtype
        x = x.to(self.bias_spec.device, torch.float32)
        length = x.shape[-1]
        if length <= self.n_fft // 2:  # reflect padding needs more samples than half a window
            x = torch.nn.functional.pad(x, (0, self.n_fft // 2 + 1 - length))
        spec = self._stft(x)
        magnitude = (spec.abs() - strength * self.bias_spec[:, None]).clamp_min(0.0)
        spec = torch.polar(magnitude, spec.angle())
        out = torch.istft(spec, self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                          length=x.shape[-1])[..., :length].to(audio.device, dtype)
        return out[0] if squeeze else out

    def forward(self, audio: Tensor, strength: float = 0.1) -> Tensor:
        return self.denoise(audio, strength)
