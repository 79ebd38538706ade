"""What every row is given: the one mel all rows vocode, and the models, loaded and prepared for inference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import resources
from ..errors import WavflowError
from ..frontend import MelConfig
from .measure import DTYPES
from .settings import Settings

# ----------------------------------------------------------------------------------------------------------------
# The mel

def default_mel(path: str | None) -> tuple[np.ndarray, str]:
    """The one mel every row vocodes, [80, F] float32, and where it came from."""
    from ..frontend import mel_spectrogram
    from ..melinput import load_mel

    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WavflowError(f"{p}: no such file (--mel)")
        if p.suffix == ".npy":
            return load_mel(p), str(p)
        from ..audio import load_audio

        audio = load_audio(p, MelConfig().sample_rate)
        return mel_spectrogram(audio[None])[0].numpy().astype(np.float32), f"mel of {p}"
    example = resources.example_mel()
    return load_mel(example), example.name


def frames_for(seconds: float, mel_config: MelConfig = MelConfig()) -> int:
    return max(1, round(seconds * mel_config.sample_rate / mel_config.hop_length))


def tile_mel(mel: np.ndarray, frames: int, offset: int = 0) -> np.ndarray:
    """[80, F] -> [80, frames]: the mel repeated end to end from frame `offset`, cropped to `frames`."""
    reps = -(-(offset + frames) // mel.shape[1])
    return np.ascontiguousarray(np.tile(mel, (1, reps))[:, offset:offset + frames])


def mel_batch(mel: np.ndarray, frames: int, batch: int) -> torch.Tensor:
    """[batch, 80, frames]: utterance i starts i/batch of the way through the mel, so no two are the same."""
    step = mel.shape[1] / batch
    return torch.from_numpy(np.stack([tile_mel(mel, frames, int(i * step)) for i in range(batch)]))


# ----------------------------------------------------------------------------------------------------------------
# The models

@dataclass
class ModelUnderTest:
    model: torch.nn.Module   # weight norm folded, on the device, in the dtype it runs in, no gradients
    source: str              # checkpoint path or "random weights, <preset> config"
    parameters: int          # as defined (weight norm counted), before folding it for inference


def load_model_under_test(family: str, settings: Settings) -> ModelUnderTest:
    from ..checkpoint import load
    from ..models import build_model

    if family in settings.checkpoints:
        path = settings.checkpoints[family]
        model = load(path, "cpu")
        if model.model_type != family:
            raise WavflowError(f"{path}: holds a {model.model_type} model, "
                               f"passed as --checkpoint {family}")
        source = path
    else:
        torch.manual_seed(settings.seed)
        model = build_model(family, settings.config_objects[family], MelConfig())
        source = f"random weights, {settings.configs[family]} config"
        # Zero-initialised output layers (WaveGlow's WN end conv) would make untrained flows the identity and
        # skip nothing, but they could let an implementation short-cut; give every parameter a small random
        # value so the work done is that of a trained model.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 and not torch.any(p):
                    p.normal_(0.0, 1e-3)
    parameters = sum(p.numel() for p in model.parameters())
    model.remove_weight_norm()
    model = model.to(settings.device).eval()
    if model.half_by_cast and settings.dtype != "fp32":
        model = model.to(DTYPES[settings.dtype])
    for p in model.parameters():
        p.requires_grad_(False)
    return ModelUnderTest(model, source, parameters)
