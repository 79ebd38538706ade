"""The model families, the interface they share (`Vocoder`) and the registry that maps a checkpoint's model_type to
its class (`register` adds a family). Each family lives in its own modules and owns its behaviour: what synthesis,
streaming, export, evaluation and the benchmark need to know of a family is a member of `Vocoder`, which every
model class subclasses (its defaults are the common case), never a switch on model_type outside this package.

    waveglow.py           WaveGlow (design.md section 3); waveglow_config.py its config
    waveglow_sampling.py  its fast sampling plan and backends; waveglow_streaming.py its streamer (windows with
                          margins); waveglow_export.py its ONNX graph; waveglow_growth.py growing it a source
    wavenet.py            the WaveNet teacher (section 4); wavenet_generation.py its generation streams
    student.py            the IAF student (section 5); student_sampling.py its blocked flows, streamer and ONNX graph

The compiled CPU loops are in wavflow/kernels.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import math
import numbers
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from ..configs import from_dict
from ..errors import WavflowError
from ..frontend import MelConfig

# model_type -> (module, model class name, config class name). Imported lazily so that reading one model's
# file never needs the others. `register` adds a family defined elsewhere.
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
    needs_teacher: ClassVar[bool] = False  # trains only with a teacher attached (attach_teacher): the distilled student
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

    # ------------------------------------------------------------------------------------------------------------
    # What the library asks of a family instead of switching on model_type. Model classes subclass Vocoder and so
    # inherit these defaults, the common case; a family overrides what it does differently.

    # Its log_likelihood of real audio runs one sample at a time (the IAF student inverts its flows step by step),
    # so evaluation scores only the first seconds of each clip (wavflow.evaluate --nll-max-seconds).
    sequential_likelihood: ClassVar[bool] = False
    # Why the family cannot compute in bf16, as `wavflow.device.check_dtype` says it; None: it can.
    no_bf16: ClassVar[str | None] = None
    # In a half-precision benchmark run: True, its weights and mel are cast to the dtype and it computes in it
    # natively; False, it runs in float32 under torch.autocast (a generator that keeps float32 buffers and queues
    # between its matmuls).
    half_by_cast: ClassVar[bool] = True
    # The benchmark draws its noise from a CPU generator on every device, so a GPU run reproduces the CPU's
    # output sample for sample (draw_noise then draws on the CPU).
    cpu_noise: ClassVar[bool] = False

    def streamer(self, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]) -> Streamer:
        """The family's way of vocoding one mel [1, n_mels, F] a chunk at a time (wavflow.streaming), its chunks
        equal to `infer` on the whole mel with the same noise. noise: the mel's noise by absolute position;
        options: checked `infer_options`."""
        raise WavflowError(f"a {self.model_type} model cannot be streamed (its family has no streamer)")

    def bias_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """The output [B, F * hop] for mel [B, n_mels, F] with no noise at all: the hiss or hum the weights add
        to whatever they vocode, which NVIDIA's denoiser subtracts (wavflow.denoiser)."""
        raise WavflowError(f"--denoise needs a WaveGlow (its bias is the output at sigma 0); this checkpoint is a "
                           f"{self.model_type}")

    def prepare_sampling(self, num_samples: int, device: torch.device | str) -> None:
        """Pay now the one-off costs `infer` would pay on its first call for utterances of num_samples on `device`
        (WaveGlow measures its sampling backends), so the benchmark's counted and timed calls leave them out."""

    def set_backend(self, backend: str | None) -> None:
        """Make `backend` the default of `infer`'s backend option (wavflow.load(..., backend=...)); refused in one
        line by a family whose `infer` takes no backend."""
        refuse_options(self, {"backend": backend})

    def export_spec(self) -> ExportSpec:
        """How the family's ONNX graph is called and labelled (wavflow.export); a family without one refuses, in one
        line, before any work."""
        raise WavflowError(f"cannot export a {self.model_type} model to ONNX (its family has no export graph)")

    def export_graph(self) -> torch.nn.Module:
        """The sampling pass as a module ONNX can trace, on a folded float32 CPU copy of the weights (`folded_copy`;
        this model is left as it is): forward(mel [B, n_mels, F], z (draw_noise's layout), scalar []) -> audio
        [B, F * hop], or a tuple of the spec's outputs."""
        raise WavflowError(f"cannot export a {self.model_type} model to ONNX (its family has no export graph)")

    def export_options(self, mel: torch.Tensor, outputs: Sequence[np.ndarray]) -> dict[str, Any]:
        """Options for `infer` that make it compute from what the graph computed (`outputs`: the graph's, audio
        first), where the audio depends on the graph's other outputs (WaveGlow's predicted pitch)."""
        return {}

    def export_output_error(self, mel: torch.Tensor, outputs: Sequence[np.ndarray]) -> float:
        """The largest disagreement of the graph's outputs after the audio with this model's own (0 with none)."""
        return 0.0


@runtime_checkable
class NoiseSpan(Protocol):
    """A mel's noise by absolute sample position (wavflow.noise.ItemNoise)."""

    def span(self, start: int, stop: int) -> torch.Tensor:
        """The noise of samples [start, stop) (whole frames) in draw_noise's layout for one item."""
        ...


class Streamer:
    """One mel vocoded a chunk at a time (`Vocoder.streamer`): `chunk(f0, f1)` -> audio [(f1 - f0) * hop] of frames
    [f0, f1), called for consecutive chunks in order, then `close()`. Holds the model, the mel [1, n_mels, F] on the
    model's device and dtype, the mel's noise and the checked infer options."""

    def __init__(self, model: Vocoder, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]):
        self.model, self.mel, self.noise, self.options = model, mel, noise, options
        self.hop = model.mel_config.hop_length
        self.frames = mel.shape[-1]

    def chunk(self, f0: int, f1: int) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the stream holds (a compiled generator's state); nothing by default."""


@dataclass(frozen=True)
class ExportSpec:
    """How a family's ONNX graph (`Vocoder.export_graph`) is called and labelled."""
    scalar: str  # the name of its scalar input: "sigma" (WaveGlow), "temperature" (student)
    default: float  # the scalar's value where `infer` is given none
    noise_time_axis: int  # z's time axis in draw_noise's layout (dynamic, as the batch and the mel's frames)
    outputs: tuple[str, ...] = ("audio",)  # "audio" [B, F * hop] first, then any per-frame outputs [B, F]
    metadata: Mapping[str, Any] = field(default_factory=dict)  # the family's entries in the file's metadata


def folded_copy(model: Vocoder) -> torch.nn.Module:
    """A float32 CPU copy of a wavflow model with weight norm folded; `model` itself is left as it is.

    A fresh model of the same config takes the weights: copy.deepcopy would share torch's generated
    parametrization classes with `model`, and folding the copy would then strip `.weight` from the original.
    """
    fresh = build_model(model.model_type, model.config, model.mel_config)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if any(".parametrizations." in k for k in state):
        fresh.load_state_dict(state)
        fresh.remove_weight_norm()
    else:
        fresh.remove_weight_norm()
        fresh.load_state_dict(state)
    return fresh.eval()


def refuse_options(model: Vocoder, options: Mapping[str, Any]) -> None:
    """Raise WavflowError, naming the model type and its options, for any option not in model.infer_options."""
    for name in options:
        if name not in model.infer_options:
            takes = ", ".join(model.infer_options) or "none"
            raise WavflowError(f"option '{name}' does not apply to a {model.model_type} model (its options: {takes})")


def noise_device(generator: torch.Generator | None) -> torch.device:
    """Where `draw_noise` draws: the generator's device, the CPU without one."""
    return generator.device if generator is not None else torch.device("cpu")


def validate_mel(mel: torch.Tensor, mel_config: MelConfig, length: int | None = None) -> None:
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


def register(model_class: type, config_class: type) -> None:
    """Add a family: `model_class` (a Vocoder subclass, its `model_type` the key checkpoints name it by) and its
    config dataclass, both defined at the top level of an importable module. Checkpoints of it then save and load,
    and every part of wavflow runs it through the Vocoder interface."""
    model_type = model_class.model_type
    if model_type in REGISTRY and REGISTRY[model_type][0] != model_class.__module__:
        raise WavflowError(f"model type '{model_type}' is registered already, by {REGISTRY[model_type][0]}")
    REGISTRY[model_type] = (model_class.__module__, model_class.__qualname__, config_class.__qualname__)


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
