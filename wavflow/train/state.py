"""The state of a training run that its checkpoints hold (layout: design.md section 7).

    last.pt     everything a bit-for-bit resume needs: weights, optimizer, grad scaler, step, the data sampler's
                position, every process's random streams, the best validation NLL so far, the config;
    step-N.pt   a copy of last.pt every train.keep_every steps;
    best.pt     the model alone (no optimizer) at the lowest validation NLL so far, with that NLL; its weights
                in train.best_dtype (fp16/bf16 halve the file; loading upcasts them to float32).

Every file is written by rank 0 alone (CheckpointWriter), atomically (wavflow.checkpoint.save_checkpoint), so a
run killed at any moment leaves the previous complete last.pt.

A run started with --init (`read_init`) takes the architecture and the weights of another checkpoint, with a
fresh optimizer and step 0; every file it writes records where it started in "init_from": {"path", "sha256",
"model_type", "step" (the source's own step count), "steps_before" (optimizer steps behind the source weights
in all, through earlier --init runs too; None when a source does not say)}.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    cast_weights,
    file_sha256,
    is_native,
    model_from_payload,
    model_payload,
    read_checkpoint,
    save_checkpoint,
)
from ..errors import WavflowError
from ..frontend import MelConfig
from ..models import config_from_dict, config_to_dict, model_classes, weights_sha256
from .config import RunConfig
from .runtime import PROG, Runtime, rng_state, seed_process, set_rng_state
from .teacher import Teacher

LAST = "last.pt"
BEST = "best.pt"
STALE = ".*.pt.*.tmp"  # the temporary file of a save that a killed run never renamed (wavflow.fileio's names)


def read_last(out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The run's last.pt to resume from; None for a fresh run. A run already there is never overwritten."""
    path = out_dir / LAST
    if not path.exists():
        return None  # `--resume` with no last.pt starts afresh, so a scheduler can rerun one command line
    if not resume:
        raise WavflowError(f"{path}: the output directory already holds a run; pass --resume to continue it, "
                           f"or choose another --out-dir")
    return read_checkpoint(path)


@dataclass
class RunState:
    """What a training step changes and last.pt keeps, besides the random streams (runtime.rng_state)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # the data sampler's position: the epoch, and the batches of it each process
    batches_in_epoch: int = 0      # has trained on
    best_valid_nll: float = math.inf
    init_from: dict[str, Any] | None = None  # --init: the checkpoint this run started from (module docstring)

    def training_payload(self, config: RunConfig, rng: list[dict[str, Any]], world_size: int,
                         rank_weights: list[str], teacher_sha256: str | None) -> dict[str, Any]:
        """last.pt: the model's checkpoint plus the training state; `rng` holds every process's streams."""
        extra: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "sampler": {"epoch": self.epoch, "batches": self.batches_in_epoch},
            "train_config": config.to_dict(),
            "best_valid_nll": self.best_valid_nll,
            "world_size": world_size,
        }
        if rank_weights:  # distributed: each process's weight hash, which must all agree
            extra["rank_weights_sha256"] = rank_weights
        if teacher_sha256 is not None:
            extra["teacher_sha256"] = teacher_sha256
        if self.init_from is not None:
            extra["init_from"] = self.init_from
        return model_payload(self.model, self.step, **extra)

    def best_payload(self, nll: float, config: RunConfig, teacher_sha256: str | None) -> dict[str, Any]:
        """best.pt: the model's checkpoint, its validation NLL and the config; no training state; the weights in
        train.best_dtype."""
        extra: dict[str, Any] = {"valid_nll": nll, "train_config": config.to_dict()}
        if teacher_sha256 is not None:
            extra["teacher_sha256"] = teacher_sha256
        if self.init_from is not None:
            extra["init_from"] = self.init_from
        payload = model_payload(self.model, self.step, **extra)
        dtype = config.train.best_dtype
        if dtype != "fp32":
            payload["state_dict"] = cast_weights(payload["state_dict"], dtype, BEST)
            payload["weights_dtype"] = dtype
        return payload

    def restore(self, ck: dict[str, Any], source: str, config: RunConfig, mel_config: MelConfig,
                teacher_sha256: str | None, runtime: Runtime) -> None:
        """Continue from checkpoint `ck` (read from `source`), after checking that it is this config's run."""
        _check_same_run(ck, source, config, self.model, mel_config, teacher_sha256)
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step = int(ck["step"])
        self.epoch, self.batches_in_epoch = int(ck["sampler"]["epoch"]), int(ck["sampler"]["batches"])
        self.best_valid_nll = float(ck.get("best_valid_nll", math.inf))
        self.init_from = ck.get("init_from")
        states = ck["rng"]
        if len(states) == runtime.world_size:
            set_rng_state(states[runtime.rank])
        else:  # another world size: the data order is kept, the per-process noise streams cannot be
            if runtime.main:
                print(f"{PROG}: note: {source} was written by {len(states)} process(es), this run has "
                      f"{runtime.world_size}; continuing, but not bit-for-bit", file=sys.stderr)
            seed_process(config.train.seed, runtime.rank, self.step)
            self.batches_in_epoch = self.batches_in_epoch * len(states) // runtime.world_size


class CheckpointWriter:
    """Writes the checkpoints of the run in `out_dir`: rank 0 alone writes; every process hands over its random
    streams and, under torchrun, the hash of its weights, which must agree. A distilled model's `teacher` must
    still be frozen at every save, and its file's hash goes into every checkpoint."""

    def __init__(self, out_dir: Path, config: RunConfig, runtime: Runtime, teacher: Teacher | None):
        self.out_dir, self.config, self.runtime, self.teacher = out_dir, config, runtime, teacher
        self.teacher_sha256 = teacher.sha256 if teacher is not None else None
        self.saved_at = -1  # the step of the last last.pt

    def save_last(self, state: RunState) -> None:
        """last.pt, and step-N.pt every train.keep_every steps (a collective: every process calls it)."""
        runtime = self.runtime
        gathered = runtime.gather((rng_state(), weights_sha256(state.model) if runtime.distributed else None))
        weights = [g[1] for g in gathered] if runtime.distributed else []
        if len(set(weights)) > 1:
            raise RuntimeError(f"processes hold different weights at step {state.step}: {weights}")
        if runtime.main:
            if self.teacher is not None:
                self.teacher.check_frozen()
            payload = state.training_payload(self.config, [g[0] for g in gathered], runtime.world_size, weights,
                                             self.teacher_sha256)
            save_checkpoint(self.out_dir / LAST, payload)
            keep = self.config.train.keep_every
            if keep and state.step % keep == 0:
                save_checkpoint(self.out_dir / f"step-{state.step}.pt", payload)
        self.saved_at = state.step

    def save_best(self, state: RunState, nll: float) -> None:
        """best.pt at validation NLL `nll`."""
        if self.runtime.main:
            save_checkpoint(self.out_dir / BEST, state.best_payload(nll, self.config, self.teacher_sha256))


def _check_same_run(ck: dict[str, Any], source: str, config: RunConfig, model: torch.nn.Module,
                    mel_config: MelConfig, teacher_sha256: str | None) -> None:
    """Refuse to resume a checkpoint of another model, model config (but for the objective's weights: a model's
    OBJECTIVE keys), mel or teacher, or one with no training state."""
    if ck.get("model_type") != config.model:
        raise WavflowError(f"{source}: holds a {ck.get('model_type')} run, the config trains a {config.model}")
    mine = config_to_dict(model.config)
    theirs = ck.get("model_config", {})
    # Fields added to the config since the checkpoint was written take their defaults, as on load; unknown or
    # invalid fields are reported as differences below.
    with contextlib.suppress(WavflowError, TypeError):
        theirs = config_to_dict(config_from_dict(type(model.config), theirs))
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    # the objective's weights (WaveGlow.OBJECTIVE) may change on resume, like the learning rate
    diff = [k for k in diff if k not in getattr(model, "OBJECTIVE", ())]
    if diff:
        raise WavflowError(f"{source}: model_config differs from the config in {', '.join(diff)}; resume with the "
                           f"run's own config (see config.yaml in the output directory)")
    if ck.get("mel_config") != mel_config.to_dict():
        raise WavflowError(f"{source}: the run used other mel settings than this config")
    if teacher_sha256 is not None and ck.get("teacher_sha256") != teacher_sha256:
        raise WavflowError(f"{source}: was distilled from teacher {str(ck.get('teacher_sha256'))[:12]}..., but "
                           f"{config.teacher} has sha256 {teacher_sha256[:12]}...")
    for key in ("optimizer", "rng", "sampler"):
        if key not in ck:
            raise WavflowError(f"{source}: not a training checkpoint (no '{key}'); cannot resume from it")


def read_init(path: str | Path, config: RunConfig) -> tuple[torch.nn.Module, RunConfig, dict[str, Any]]:
    """--init: the model a checkpoint holds (native, half precision, a training last.pt, or NVIDIA's WaveGlow), the
    config with the checkpoint's architecture filled in, and the run's "init_from" record.

    The architecture is the checkpoint's: the model type, every model_config key and the mel settings. A key the
    config sets must agree with it (refused by name otherwise); a key it leaves out takes the checkpoint's value,
    not the paper default. The exception: a config that adds a source to a WaveGlow, or changes its objective
    (WaveGlow.GROWABLE), grows the checkpoint's model, which starts out vocoding what it did. Nothing else of the
    checkpoint is used: its optimizer, step, sampler and teacher stay behind (a student may be re-distilled from
    another teacher: the config's teacher is the one used).
    """
    source = str(path)
    obj = read_checkpoint(path)  # weights_only; NVIDIA's pickles through the restricted unpickler
    if is_native(obj):
        model = model_from_payload(obj, source)
        step = obj.get("step")
        prior = obj.get("init_from")  # the source was itself started from another checkpoint
        before = prior.get("steps_before") if isinstance(prior, dict) else 0
    else:
        from ..nvidia import checkpoint_step, model_from_checkpoint

        model = model_from_checkpoint(obj, source)
        step, before = checkpoint_step(obj) or None, 0
    step = int(step) if isinstance(step, int) else None
    if model.model_type != config.model:
        raise WavflowError(f"--init {source}: holds a {model.model_type}, the config trains a {config.model}; "
                           f"set model: {model.model_type} (the architecture comes from the checkpoint)")
    _, config_class = model_classes(model.model_type)
    theirs = config_to_dict(model.config)
    try:
        asked = config_to_dict(config_from_dict(config_class, {**theirs, **config.model_config}))
    except WavflowError as e:
        raise WavflowError(f"--init {source}: {e}") from None
    differ = sorted(k for k in config.model_config if asked[k] != theirs[k])
    growable = getattr(model, "GROWABLE", ())
    if differ and all(k in growable for k in differ):
        # the config adds a source (or changes the objective): the checkpoint's model, grown to the new switches,
        # vocodes what it did (WaveGlow.grown)
        model = model.grown(config_from_dict(config_class, asked))
        theirs, differ = config_to_dict(model.config), []
    if differ:
        shown = ", ".join(f"{k}={asked[k]!r} (checkpoint: {theirs[k]!r})" for k in differ)
        raise WavflowError(f"--init {source}: the config's model_config contradicts the checkpoint's in {shown}; "
                           f"leave these keys out (the architecture comes from the checkpoint)")
    mel_theirs = model.mel_config.to_dict()
    try:
        mel_asked = MelConfig.from_dict({**mel_theirs, **config.mel}).to_dict()
    except (WavflowError, TypeError, ValueError) as e:
        raise WavflowError(f"--init {source}: mel: {e}") from None
    differ = sorted(k for k in config.mel if mel_asked[k] != mel_theirs[k])
    if differ:
        shown = ", ".join(f"{k}={mel_asked[k]!r} (checkpoint: {mel_theirs[k]!r})" for k in differ)
        raise WavflowError(f"--init {source}: the config's mel settings contradict the checkpoint's in {shown}")
    resolved = RunConfig(model=config.model, model_config=theirs, mel=mel_theirs, teacher=config.teacher,
                         data=config.data, train=config.train)
    steps_before = None if step is None or not isinstance(before, int) else before + step
    init_from = {"path": source, "sha256": file_sha256(path), "model_type": model.model_type, "step": step,
                 "steps_before": steps_before}
    return model.train(), resolved, init_from
