"""WaveGlow's config (`WaveGlowConfig`): the flow's shape, the source and the training objective, every value checked
when the config is made, and `resolved` against a mel hop (`group_size`: the samples squeezed into one step).
The model is wavflow.models.waveglow, which the registry names this config's home too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import WavflowError
from . import is_int, is_real


@dataclass(frozen=True)
class WaveGlowConfig:
    n_flows: int = 12  # flow steps, each an invertible 1x1 conv then an affine coupling
    n_group: int | None = None  # samples squeezed into one time step; None: 8 where it divides the hop (see group_size)
    n_early_every: int = 4  # every this many flows, n_early_size channels go straight to z ...
    n_early_size: int = 2  # ... so the flows see 8, 6, 4 channels (the later ones are cheaper)
    wn_layers: int = 8  # dilated conv layers in each coupling network (dilations 1, 2, 4, ..., 2^(layers-1))
    wn_channels: int = 256  # residual channels of the coupling network (the paper's best model has 512)
    wn_kernel_size: int = 3  # non-causal: the coupling sees past and future groups
    upsample_kernel: int | None = None  # ConvTranspose1d mel upsampler, stride = hop; None: upsample_frames * hop
    upsample_frames: int | None = None  # ... the same kernel in frames (None: 4, NVIDIA's 1024 at hop 256)
    sigma: float = 1.0  # std of the Gaussian prior on z while training and scoring
    infer_sigma: float = 0.6  # default std of z when sampling (lower = cleaner but flatter speech)
    # Source and objective (design.md section 9); the defaults are NVIDIA's plain WaveGlow.
    source: bool = False  # condition every coupling on a harmonic excitation at F0 predicted from the mel
    source_phase: str = "recording"  # training excitation: phase-locked to the recording, or "free" (from 0)
    source_channels: int = 64  # width of the pitch predictor (4 conv layers, kernel 5, on the mel frames)
    source_amplitude: float = 0.1  # RMS of the excitation where voiced
    source_filter: bool = False  # with a source: a WN filters the excitation into the audio's mean and scale,
                                 # an affine step before the flows (the source in the signal path, as NSF)
    source_harmonics: int = 0  # with a source: the audio's mean is harmonics 1..K of F0 with cosine and sine
                               # amplitudes per frame from the mel; the flows model the rest (0: none)
    pitch_weight: float = 1.0  # training adds this x the pitch predictor's loss (voicing BCE + octaves L1)
    spectral_weight: float = 0.0  # training adds this x MR-STFT(inverse of spectral_sigma noise, recording); 0: off
    spectral_sigma: float = 0.6  # std of the noise the spectral loss's samples are made from
    energy_prior: bool = False  # the prior's std follows the mel's energy frame by frame (PriorGrad-like)

    def __post_init__(self) -> None:
        # Every value that cannot build a model is refused here, by name and value, before any layer exists
        # (the trainer's CLI turns the WavflowError into one line). Checks that need the mel (n_group and
        # upsample_kernel against the hop length) are `resolved`'s.
        problems = []
        for name in ("n_flows", "n_early_every", "wn_layers", "wn_channels", "upsample_kernel", "upsample_frames"):
            value = getattr(self, name)
            if (value is not None or not name.startswith("upsample")) and (not is_int(value) or value < 1):
                problems.append(f"{name}={value!r} must be an integer >= 1")
        if self.n_group is not None and (not is_int(self.n_group) or self.n_group < 2 or self.n_group % 2):
            problems.append(f"n_group={self.n_group!r} must be an even integer >= 2 (each coupling splits the "
                            f"channels in halves)")
        if not is_int(self.n_early_size) or self.n_early_size < 0 or self.n_early_size % 2:
            problems.append(f"n_early_size={self.n_early_size!r} must be an even integer >= 0 (the channels left "
                            f"must split in halves)")
        if not is_int(self.wn_kernel_size) or self.wn_kernel_size < 1 or self.wn_kernel_size % 2 == 0:
            problems.append(f"wn_kernel_size={self.wn_kernel_size!r} must be an odd integer >= 1 (a centred, "
                            f"non-causal conv)")
        if not problems and self.n_group is not None:
            last = self.remaining_channels(self.n_flows - 1)
            if last < 2:
                problems.append(f"n_early_every={self.n_early_every} and n_early_size={self.n_early_size} leave "
                                f"fewer than 2 channels for the last flows (flow {self.n_flows - 1} of "
                                f"n_flows={self.n_flows} would get {last} of n_group={self.n_group})")
        if not is_real(self.sigma) or not self.sigma > 0:
            problems.append(f"sigma={self.sigma!r} must be a finite number > 0")
        if not is_real(self.infer_sigma) or not self.infer_sigma >= 0:
            problems.append(f"infer_sigma={self.infer_sigma!r} must be a finite number >= 0")
        for name in ("source", "energy_prior"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.source_filter, bool):
            problems.append(f"source_filter={self.source_filter!r} must be true or false")
        elif self.source_filter and not self.source:
            problems.append("source_filter=true filters the source's excitation: it needs source=true")
        if not is_int(self.source_harmonics) or self.source_harmonics < 0:
            problems.append(f"source_harmonics={self.source_harmonics!r} must be an integer >= 0")
        elif self.source_harmonics and not self.source:
            problems.append("source_harmonics makes harmonics of the source's F0: it needs source=true")
        if self.source_phase not in ("recording", "free"):
            problems.append(f"source_phase={self.source_phase!r} must be 'recording' or 'free'")
        if not is_int(self.source_channels) or self.source_channels < 1:
            problems.append(f"source_channels={self.source_channels!r} must be an integer >= 1")
        for name in ("source_amplitude", "spectral_sigma"):
            if not is_real(getattr(self, name)) or not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)!r} must be a finite number > 0")
        for name in ("pitch_weight", "spectral_weight"):
            if not is_real(getattr(self, name)) or not getattr(self, name) >= 0:
                problems.append(f"{name}={getattr(self, name)!r} must be a finite number >= 0")
        if problems:
            raise WavflowError(f"invalid WaveGlowConfig: {'; '.join(problems)}")

    def remaining_channels(self, k: int) -> int:
        """Channels flow k works on (n_group minus the early outputs taken before it)."""
        return self.n_group - (k // self.n_early_every) * self.n_early_size

    def resolved(self, hop: int) -> WaveGlowConfig:
        """This config for a mel hop: n_group, upsample_kernel and upsample_frames filled in where left out and
        checked against the hop (a WavflowError naming the problem where the hop cannot take them)."""
        n_group = self.n_group if self.n_group is not None else group_size(hop)
        if hop % n_group:
            raise WavflowError(f"invalid WaveGlowConfig: n_group {n_group} must divide the hop length {hop} "
                               f"(leave n_group out to derive it from the hop)")
        kernel, frames = self.upsample_kernel, self.upsample_frames
        if kernel is None:
            kernel = (4 if frames is None else frames) * hop
        if kernel < hop or kernel % hop:
            raise WavflowError(f"invalid WaveGlowConfig: upsample_kernel {kernel} must be a multiple of the hop "
                               f"length {hop} (or give upsample_frames, the kernel in frames)")
        if frames is not None and kernel != frames * hop:
            raise WavflowError(f"invalid WaveGlowConfig: upsample_kernel {kernel} and upsample_frames {frames} "
                               f"disagree at hop {hop} ({frames} x {hop} = {frames * hop}); give one of them")
        # __post_init__ checks the channels
        return dataclasses.replace(self, n_group=n_group, upsample_kernel=kernel, upsample_frames=kernel // hop)

    @classmethod
    def tiny(cls) -> WaveGlowConfig:
        """A few-thousand-parameter coupling stack for tests: 4 flows (8, 8, 6, 6 channels), WN 2 x 16."""
        return cls(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=2, wn_channels=16)


def group_size(hop: int) -> int:
    """WaveGlow's default n_group for a mel hop: 8 (NVIDIA's) where it divides the hop, else the even divisor of
    the hop nearest 8, the larger on a tie (fewer, wider time steps): 256 -> 8, 200 -> 8, 300 -> 10, 512 -> 8.
    Each coupling splits the group in halves, so an odd hop (no even divisor) cannot be squeezed."""
    even = [d for d in range(2, hop + 1, 2) if hop % d == 0]
    if not even:
        raise WavflowError(f"invalid WaveGlowConfig: the hop length {hop} is odd, so no even n_group divides it "
                           f"(each coupling splits a group of samples in halves); use an even hop")
    return min(even, key=lambda d: (abs(d - 8), -d))
