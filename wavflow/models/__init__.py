"""The three model families. Each module holds one model; this registry maps a checkpoint's model_type to it."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import torch

from ..errors import WavflowError
from ..frontend import MelConfig

# model_type -> (module, model class name, config class name). Imported lazily so that reading one model's
# file never needs the others.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "waveglow": ("wavflow.models.waveglow", "WaveGlow", "WaveGlowConfig"),
    "wavenet": ("wavflow.models.wavenet", "WaveNet", "WaveNetConfig"),
    "student": ("wavflow.models.student", "IAFStudent", "StudentConfig"),
}


def model_classes(model_type: str) -> tuple[type, type]:
    if model_type not in REGISTRY:
        raise WavflowError(f"unknown model type '{model_type}'; known: {', '.join(REGISTRY)}")
    module, model_name, config_name = REGISTRY[model_type]
    mod = importlib.import_module(module)
    return getattr(mod, model_name), getattr(mod, config_name)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(config_class: type, d: dict[str, Any] | None) -> Any:
    """Build a config dataclass from a dict, refusing unknown keys by name (a typo must not pass silently)."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise WavflowError(f"unknown {config_class.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    for f in dataclasses.fields(config_class):  # YAML and checkpoints give lists where the dataclass has tuples
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])
    return config_class(**d)


def build_model(model_type: str, config: dict[str, Any] | Any | None = None,
                mel_config: MelConfig = MelConfig()) -> torch.nn.Module:
    """Instantiate a model of `model_type` from a config dataclass or dict (None: the paper-size default)."""
    model_class, config_class = model_classes(model_type)
    if not isinstance(config, config_class):
        config = config_from_dict(config_class, config)
    return model_class(config, mel_config)
