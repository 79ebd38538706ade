"""The three model families, the interface they share (`Vocoder`) and the registry that maps a checkpoint's
model_type to its class. Each family lives in its own module; its compiled CPU loops are in wavflow/kernels.py."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import math
import numbers
import sys
from typing import Any, ClassVar, Iterator, Mapping, Protocol, runtime_checkable

import torch

from ..configs import from_dict
from ..errors import WavflowError
from ..frontend import MelConfig

# model_type -> (module, model class name, config class name). Imported lazily so that reading one model's
# file never needs the others.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "waveglow": ("wavflow.models.waveglow", "WaveGlow", "WaveGlowConfig"),
    "wavenet": ("wavflow.models.wavenet", "WaveNet", "WaveNetConfig"),
    "student": ("wavflow.models.student", "IAFStudent", "StudentConfig"),
}


@runtime_checkable
class Vocoder(Protocol):
    """What synthesis, evaluation, training and the benchmark may call on any model, with no family switches.

    Shapes: mel [B, n_mels, F]; audio [B, T] in [-1, 1] with T = F * hop when vocoded from a mel.
    """

    model_type: ClassVar[str]  # the checkpoint's "model_type" (REGISTRY key)
    infer_options: ClassVar[tuple[str, ...]]  # the user-facing keyword options of `infer`, e.g. ("sigma",)
    needs_teacher: ClassVar[bool]  # trains only with a teacher attached (attach_teacher): the distilled student
    config: Any  # the model's config dataclass
    mel_config: MelConfig

    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The noise `infer` consumes for `num_samples` audio samples: float32, time on the last axis and
        proportional to num_samples, drawn on the generator's device (the CPU for a CPU generator or none, so a
        seed gives the same noise on every device)."""
        ...

    def infer(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None, frames: Any = None, **options: Any) -> torch.Tensor:
        """mel [B, n_mels, F] -> audio [B, F * hop]. noise: draw_noise's layout for F * hop samples (None: drawn
        with draw_noise from `generator`). frames [B]: each item's own length in frames, which an
        autoregressive model may stop at (others ignore it). options: only names in `infer_options`."""
        ...

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """[B] mean log-density per audio sample in nats (design.md section 2)."""
        ...

    def training_loss(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimise, scalars to log)."""
        ...

    def remove_weight_norm(self) -> None:
        """Fold weight normalisation into plain weights for inference (a no-op for a model without it)."""
        ...


def refuse_options(model: Vocoder, options: Mapping[str, Any]) -> None:
    """Raise WavflowError, naming the model type and its options, for any option not in model.infer_options."""
    for name in options:
        if name not in model.infer_options:
            takes = ", ".join(model.infer_options) or "none"
            raise WavflowError(f"option '{name}' does not apply to a {model.model_type} model (its options: {takes})")


def noise_device(generator: torch.Generator | None) -> torch.device:
    """Where `draw_noise` draws: the generator's device, the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")


def check_mel(mel: torch.Tensor, mel_config: MelConfig, length: int | None = None) -> None:
    """Refuse a mel that is not [batch, n_mels, frames] or, given `length`, covers fewer than `length` samples."""
    n, hop = mel_config.n_mels, mel_config.hop_length
    if mel.dim() != 3 or mel.shape[1] != n:
        raise WavflowError(f"mel has shape {tuple(mel.shape)}, expected [batch, {n}, frames]")
    if length is not None and mel.shape[-1] * hop < length:
        raise WavflowError(f"mel of {mel.shape[-1]} frames covers {mel.shape[-1] * hop} samples, fewer than the "
                           f"{length} asked for")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for a block of per-step loops: their tensors are tiny, so more threads only
    add synchronisation, which costs far more than the arithmetic (worst on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr over `total` audio samples (disabled: counts silently)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", unit_scale=True, disable=not enabled, leave=False, file=sys.stderr,
                desc=desc)


def weights_sha256(module: torch.nn.Module) -> str:
    """Hash of every tensor in the module's state, in order: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Configs: each family's config dataclass checks its own values in __post_init__ with these.

def is_int(value: object) -> bool:
    """An integer, not a bool (YAML's `true` must not pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A finite number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def int_tuple(value: object) -> tuple[int, ...] | None:
    """A list or tuple of integers as a tuple of ints (YAML and JSON give lists); None for anything else."""
    if not isinstance(value, (tuple, list)) or not all(is_int(v) for v in value):
        return None
    return tuple(int(v) for v in value)


def upsample_stages(hop: int) -> tuple[int, ...]:
    """Upsampling factors for a mel hop: its prime factors, the two smallest merged until at most four stages
    are left, ascending: 256 -> (4, 4, 4, 4), 200 -> (2, 4, 5, 5), 300 -> (3, 4, 5, 5), 512 -> (4, 4, 4, 8).
    Each stage is a nearest-neighbour stretch and a smoothing conv, so any factor works; small ones keep the
    smoothing convs short."""
    factors, n, p = [], hop, 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    while len(factors) > 4:
        factors.sort()
        factors[:2] = [factors[0] * factors[1]]
    return tuple(sorted(factors)) or (1,)


def upsample_factors(config: Any, mel_config: MelConfig) -> tuple[int, ...]:
    """A WaveNet-style upsampler's factors: the config's, or derived from the mel hop (None), which they must
    multiply to."""
    factors = config.upsample_factors if config.upsample_factors is not None else upsample_stages(mel_config.hop_length)
    product = math.prod(factors)
    if product != mel_config.hop_length:
        raise WavflowError(f"invalid {type(config).__name__}: upsample_factors {factors} multiply "
                           f"to {product}, but the mel hop is {mel_config.hop_length}")
    return factors


def model_classes(model_type: str) -> tuple[type, type]:
    if model_type not in REGISTRY:
        raise WavflowError(f"unknown model type '{model_type}'; known: {', '.join(REGISTRY)}")
    module, model_name, config_name = REGISTRY[model_type]
    mod = importlib.import_module(module)
    return getattr(mod, model_name), getattr(mod, config_name)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(config_class: type, d: dict[str, Any] | None) -> Any:
    """Build a model config dataclass from a dict (a checkpoint's, a preset's, a YAML file's) with the one config
    checker, wavflow.configs: unknown keys refused by name, lists to tuples; the config's own __post_init__ judges
    the values."""
    return from_dict(config_class, d, coerce_types=False)


def build_model(model_type: str, config: dict[str, Any] | Any | None = None,
                mel_config: MelConfig = MelConfig()) -> torch.nn.Module:
    """Instantiate a model of `model_type` from a config dataclass or dict (None: the paper-size default)."""
    model_class, config_class = model_classes(model_type)
    if not isinstance(config, config_class):
        config = config_from_dict(config_class, config)
    return model_class(config, mel_config)
