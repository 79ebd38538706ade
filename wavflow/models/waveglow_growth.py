"""Growing a plain WaveGlow into one with a source (`WaveGlow.grown`, the trainer's --init): the same weights, the
conditioning convs widened with zero columns for the excitation, the new parts at their identity start, so the
grown model vocodes exactly what the plain one did until training moves its new weights (design.md section 9).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch.nn.utils import parametrize

from ..errors import WavflowError

if TYPE_CHECKING:  # annotations only: waveglow.py imports this module
    from .waveglow import WaveGlow
    from .waveglow_config import WaveGlowConfig

# The keys that weigh the training loss only: no weight depends on them, so a run may resume with others.
OBJECTIVE: tuple[str, ...] = ("pitch_weight", "spectral_weight", "spectral_sigma")
# The keys a --init may change: the source's switches and the training objective. A model grown to add a
# source (`grow`) computes the same audio as before, until training moves its new weights.
GROWABLE: tuple[str, ...] = ("source", "source_phase", "source_channels", "source_amplitude", "source_filter",
                             "source_harmonics", *OBJECTIVE)


def grow(model: WaveGlow, config: WaveGlowConfig) -> WaveGlow:
    """`model` with `config`'s source switches (config may differ from model.config only in GROWABLE keys, and may
    add a source, never remove one): the same weights, each coupling's conditioning conv widened with zero columns
    for the excitation, the new parts at their identity start (the harmonic mean and the source filter's end conv
    at zero), so it vocodes exactly what `model` does; the pitch predictor is new.
    """
    mine = dataclasses.asdict(model.config)
    theirs = dataclasses.asdict(config)
    changed = sorted(k for k in mine if mine[k] != theirs[k])
    if any(k not in GROWABLE for k in changed) or (model.config.source and not config.source) or \
            (model.config.source and changed and any(k in ("source_channels", "source_filter", "source_harmonics")
                                                     for k in changed)):
        raise WavflowError(f"cannot grow this WaveGlow into one that differs in {', '.join(changed)}: only a "
                           f"source can be added ({', '.join(GROWABLE)})")
    new = type(model)(config, model.mel_config).to(next(model.parameters()).device)
    if not any(parametrize.is_parametrized(m, "weight") for m in model.modules()):
        new.remove_weight_norm()
    state = new.state_dict()
    for key, value in model.state_dict().items():
        target = state[key]
        if value.shape != target.shape:  # a conditioning conv: the excitation's columns come last, at zero
            pad = torch.zeros_like(target)
            pad[:, : value.shape[1]] = value
            value = pad
        state[key] = value
    new.load_state_dict(state)
    return new
