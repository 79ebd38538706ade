"""The teacher a distilled model learns from (the IAF student's WaveNet): read from the config's `teacher:`
checkpoint, hashed, frozen and attached to the model, which declares the need (`needs_teacher`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..checkpoint import file_sha256, load
from ..errors import WavflowError
from ..models import weights_sha256


@dataclass
class Teacher:
    """A frozen teacher: the module, its checkpoint file's sha256 (which the student's checkpoints record and a
    resume must match) and the hash of its weights when attached (`check_frozen`)."""
    module: torch.nn.Module
    sha256: str
    weights_sha256: str

    @classmethod
    def attach(cls, model: torch.nn.Module, path: str | os.PathLike | None, model_name: str,
               device: torch.device) -> Teacher | None:
        """Load the teacher at `path` onto `device` and attach it to `model` when the model declares
        `needs_teacher`; None for a model without one. A teacher missing, or given to a model that does not
        need one, is a WavflowError naming the config's `model_name`."""
        if path is None:
            if model.needs_teacher:
                raise WavflowError(f"model '{model_name}' is distilled from a teacher: set teacher: PATH "
                                   f"to a trained WaveNet checkpoint")
            return None
        if not model.needs_teacher:
            raise WavflowError(f"teacher: is only for a model that is distilled (student), not '{model_name}'")
        module = load(path, device)  # read_checkpoint: weights_only, never runs code from the file
        module.eval().requires_grad_(False)
        teacher = cls(module, file_sha256(path), weights_sha256(module))
        model.attach_teacher(module, teacher.sha256)
        return teacher

    def check_frozen(self) -> None:
        """Raise RuntimeError when the teacher's weights moved since they were attached."""
        if weights_sha256(self.module) != self.weights_sha256:
            raise RuntimeError("the teacher's weights changed during distillation; it must stay frozen")
