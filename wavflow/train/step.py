"""One training step: the loss under autocast (through DistributedDataParallel under torchrun), the processes'
agreement before backward, the learning-rate schedule, gradient clipping and the optimizer's update."""
from __future__ import annotations

import math
import signal
from contextlib import nullcontext
from typing import Any

import torch

from ..frontend import MelConfig, mel_spectrogram
from .config import TrainConfig
from .runtime import Runtime, StopSignals
from .state import RunState


class TrainingDiverged(Exception):
    """The loss or the gradient norm stopped being finite."""


class _LossModule(torch.nn.Module):
    """DistributedDataParallel synchronises gradients for what runs through forward(): route the loss there."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, mel: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(audio, mel, **extra)


class TrainStep:
    """Optimizer steps on `state` (its model, optimizer, grad scaler and step count) with the settings of
    `settings` (train.*), under autocast to `amp_dtype` (None: float32)."""

    def __init__(self, state: RunState, settings: TrainConfig, amp_dtype: torch.dtype | None, mel_config: MelConfig,
                 runtime: Runtime, device: torch.device):
        self.state, self.settings, self.amp_dtype = state, settings, amp_dtype
        self.mel_config, self.runtime, self.device = mel_config, runtime, device
        self.loss_module: torch.nn.Module = _LossModule(state.model)
        if runtime.distributed:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[device.index] if device.type == "cuda" else None)
        if settings.compile and device.type == "cuda":  # on CPU inductor's C++ build costs more than it gains
            self.loss_module = torch.compile(self.loss_module,
                                             mode=None if settings.compile_mode == "default" else settings.compile_mode)

    def lr_at(self, step: int) -> float:
        """The learning rate of the step after `step` steps: linear warm-up, then step decay."""
        settings = self.settings
        warmup = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps else 1.0
        decay = settings.lr_decay_gamma ** (step // settings.lr_decay_every) if settings.lr_decay_every else 1.0
        return settings.lr * warmup * decay

    def __call__(self, batch: torch.Tensor | tuple[torch.Tensor, ...],
                 stop: StopSignals) -> tuple[float, float, dict[str, float]]:
        """One optimizer step on a batch of crops [B, T], or (crops, f0, voiced) for a model that learns from
        pitch tracks: (loss, gradient norm, model's scalars). A stop asked of another process is passed on to
        `stop` (as SIGTERM); a loss or gradient norm that is not finite raises TrainingDiverged."""
        state, device = self.state, self.device
        extra: dict[str, Any] = {}
        if isinstance(batch, (tuple, list)):
            batch, f0, voiced = batch
            extra["pitch"] = (f0.to(device), voiced.to(device))
        audio = batch.to(device, non_blocking=True)
        with torch.no_grad():
            mel = mel_spectrogram(audio, self.mel_config)  # [B, n_mels, T // hop + 1], on the training device
        autocast = torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            loss, logs = self.loss_module(audio, mel, **extra)
        loss = loss.float()
        value = loss.item()

        # All processes must agree before backward (a rank skipping it would hang the gradient all-reduce).
        flags = torch.tensor([0.0 if math.isfinite(value) else 1.0, 1.0 if stop.signum else 0.0])
        flags = self.runtime.any(flags, device)
        if flags[1] and stop.signum is None:
            stop.signum = signal.SIGTERM  # another rank was asked to stop
        if flags[0]:
            raise TrainingDiverged(f"loss is {value if not math.isfinite(value) else 'nan/inf on another rank'} "
                                   f"at step {state.step + 1}")

        lr = self.lr_at(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.unscale_(state.optimizer)
        else:
            loss.backward()
        params = [p for p in state.model.parameters() if p.grad is not None]
        if self.settings.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params])
        gnorm = float(gnorm)
        if state.scaler is not None:  # fp16: an overflowing step is skipped and the loss scale lowered
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            if not math.isfinite(gnorm):
                raise TrainingDiverged(f"gradient norm is {gnorm} at step {state.step + 1}")
            state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return value, gnorm, {name: float(scalar) for name, scalar in logs.items()}
