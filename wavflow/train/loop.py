"""The Trainer: builds a run from its RunConfig, then `fit()` trains, validates, logs and checkpoints.

One trainer serves WaveGlow, the WaveNet teacher and the distilled IAF student: it relies only on the model
interface, `wavflow.models.Vocoder` (`training_loss`, `log_likelihood`, `infer`, and `needs_teacher`: a model
that declares it is distilled from the config's teacher, teacher.py). Rank 0 alone writes files. A signal
(SIGINT, SIGTERM) lets the step in progress finish and saves before the run stops.

A run may start from another checkpoint's weights (`init`, state.read_init) and may have a time budget
(train.max_minutes, counted from `started_at`, the process's start for the command line, or on the process's CPU
clock: budget.py): before each step the trainer checks that the step, a validation and the saves that end the run
still fit, from the durations it measured (a validation at step 0 measures the first; a save is estimated from the
model's size until one is timed), and if not it validates, writes best.pt (if better) and last.pt, and stops with
exit status 0.

The Trainer is the loop; its parts are feed.py (the batches), step.py (one optimizer step), validation.py,
state.py (the checkpoints), runlog.py (log.jsonl, TensorBoard, progress) and budget.py.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import yaml

from ..device import native_bf16
from ..errors import WavflowError
from ..fileio import check_writable_dir
from ..frontend import MelConfig
from ..models import build_model
from .budget import BudgetClock
from .config import RunConfig, check_values
from .feed import TrainingData
from .runlog import RunLog
from .runtime import EXIT_SIGNAL, PROG, Runtime, StopSignals, choose_kernels, pick_device, seed_everything, seed_process
from .state import LAST, STALE, CheckpointWriter, RunState, read_init, read_last
from .step import TrainingDiverged, TrainStep
from .teacher import Teacher
from .threads import ThreadGovernor
from .validation import Validation

__all__ = ["Trainer", "TrainingDiverged"]


class Trainer:
    """Builds everything a run needs from a RunConfig, then `fit()` runs it.

    `losses` holds every step's loss on this process, `valid_history` the (step, validation NLL) pairs,
    `state` what last.pt keeps (model, optimizer, step, sampler position, best NLL), `budget` the time budget
    and the durations measured, `log` what the run reports.
    """

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, resume: bool = False,
                 runtime: Runtime | None = None, model: torch.nn.Module | None = None,
                 init: str | os.PathLike | None = None, started_at: float | None = None,
                 cpu_started_at: float | None = None):
        self.started_at = time.time() if started_at is None else started_at  # train.max_minutes counts from here
        # ... or from here on the CPU clock (train.budget_clock: cpu): the command line passes 0, the process's start
        self.cpu_started_at = time.process_time() if cpu_started_at is None else cpu_started_at
        self.runtime = runtime or Runtime()
        self.out_dir = Path(out_dir)
        self.last_path = self.out_dir / LAST
        if init is not None and resume:
            raise WavflowError("--init starts a new run from a checkpoint's weights and --resume continues the run "
                               "in the output directory: give one of them (an --init run resumes with "
                               "OUT/config.yaml and --resume)")
        check_values(config)  # again, for a RunConfig made in code rather than by load_config
        init_from = None
        if init is not None:
            if model is not None:
                raise ValueError("Trainer: give `init` or `model`, not both")
            model, config, init_from = read_init(init, config)  # the checkpoint's architecture, checked
        self.config = config
        settings = config.train
        self.device = pick_device(settings.device, self.runtime)
        if settings.precision == "fp16" and self.device.type != "cuda":
            raise WavflowError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        # auto: bf16 autocast where the device computes bf16 natively (AVX512-BF16 or AMX CPUs, bf16 GPUs),
        # which halves a CPU step's time; fp32 elsewhere, where emulated bf16 is slower than fp32.
        self.precision = (settings.precision if settings.precision != "auto"
                          else "bf16" if native_bf16(self.device) else "fp32")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.mel_config = MelConfig.from_dict(config.mel)
        # First: a missing root or clip stops the run before any model is built.
        self.data = TrainingData(config.data, self.mel_config, settings.seed, self.runtime)
        checkpoint = read_last(self.out_dir, resume)
        if self.runtime.main:
            check_writable_dir(self.out_dir)
        choose_kernels(settings.deterministic, self.device)

        self.state = self._build(model)
        self.checkpoints = CheckpointWriter(self.out_dir, config, self.runtime, self.distillation)
        if checkpoint is not None:
            self.state.restore(checkpoint, str(self.last_path), config, self.mel_config,
                               self.checkpoints.teacher_sha256, self.runtime)
        else:
            self.state.init_from = init_from
            seed_process(settings.seed, self.runtime.rank)
        if getattr(self.model, "needs_pitch", False):
            # A model with a source learns from the recordings' pitch tracks (computed once, cached beside the data).
            self.data.train_set.attach_pitch(progress=self.runtime.main)
        self.losses: list[float] = []
        self.stepper = TrainStep(self.state, settings, self.amp_dtype, self.mel_config, self.runtime, self.device)
        self.device_crops = self.data.keep_on(self.device) if config.data.device_resident else None
        self.validation = Validation(self.data.valid_set, settings, self.mel_config, self.runtime, self.device,
                                     pitch=getattr(self.model, "needs_pitch", False))
        self.valid_history = self.validation.history
        self.budget = BudgetClock(settings.max_minutes, settings.budget_clock, self.started_at,
                                  sum(p.numel() for p in self.model.parameters()), bool(self.validation.clips),
                                  self.cpu_started_at)
        self.log = RunLog(self.out_dir, self.runtime, self.device, self.cpu_started_at)
        self.stop = StopSignals(self._announce_stop)
        self.governor: ThreadGovernor | None = None  # train.adaptive_threads on CPU, from fit()
        self.end_reason = ""  # max_steps | max_minutes | signal, once fit() returns

    def _build(self, model: torch.nn.Module | None) -> RunState:
        """The model (with its teacher), the optimizer and the grad scaler, as a fresh RunState."""
        settings = self.config.train
        # Every process builds the same initial weights from the same seed (DDP also broadcasts rank 0's).
        seed_everything(settings.seed)
        if model is None:
            model = build_model(self.config.model, self.config.model_config, self.mel_config)
        self.model = model.to(self.device)
        self.distillation = Teacher.attach(self.model, self.config.teacher, self.config.model, self.device)
        # Fused Adam: one kernel for every parameter's update on CUDA instead of several per tensor.
        fused = {"fused": True} if settings.fused_adam and self.device.type == "cuda" else {}
        optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr, betas=settings.betas,
                                     weight_decay=settings.weight_decay, **fused)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        return RunState(self.model, optimizer, scaler)

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher of a distilled model (None for others)."""
        return self.distillation.module if self.distillation is not None else None

    def train_step(self, batch: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[float, float, dict[str, float]]:
        """One optimizer step (step.TrainStep): (loss, gradient norm, model's scalars)."""
        return self.stepper(batch, self.stop)

    def validate(self) -> float | None:
        """Validation NLL in nats per sample, over the validation clips shared out among the processes."""
        return self.validation.nll(self.model)

    def save(self) -> None:
        """last.pt, and step-N.pt every train.keep_every steps, with every process's random streams."""
        with self.budget.timing("last"):
            self.checkpoints.save_last(self.state)

    def _validate_and_keep_best(self, loss: float | None, baseline: bool = False) -> None:
        """Validate; keep best.pt when the NLL beats every earlier one. `baseline`: the starting weights' NLL,
        which a later validation must beat for a best.pt (a continued model keeps its own figure to beat)."""
        with self.budget.timing("valid"):
            nll = self.validate()
            given_pitch = self.validation.nll_given_pitch(self.model)
        if nll is None:
            return
        state = self.state
        self.validation.record(state.step, nll)
        self.log.validation(state.step, nll, loss, given_pitch)
        if baseline:
            state.best_valid_nll = min(state.best_valid_nll, nll)
            if self.runtime.main:
                print(f"{PROG}: validation NLL of the starting weights {nll:.4f} nats/sample (best.pt is written "
                      f"when a later validation beats it)", file=sys.stderr, flush=True)
        elif nll < state.best_valid_nll:
            state.best_valid_nll = nll
            with self.budget.timing("best"):
                self.checkpoints.save_best(state, nll)

    def log_audio(self) -> None:
        """TensorBoard's sample of the model vocoding the first validation clip's mel."""
        settings = self.config.train
        if not self.log.tensorboard or not self.validation.clips:
            return
        audio = self.validation.generated(self.model, settings.audio_seconds, settings.seed, settings.infer_options)
        self.log.add_audio("valid/generated", audio, self.state.step, self.mel_config.sample_rate)

    def _announce_stop(self, signum: int) -> None:
        if self.runtime.main:
            print(f"\n{PROG}: {signal.Signals(signum).name}: finishing step {self.state.step + 1}, then saving "
                  f"{self.last_path} (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    def _open_output(self) -> None:
        """Rank 0: the output directory, config.yaml, TensorBoard, and the start-up line."""
        settings, step = self.config.train, self.state.step
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(STALE):
            stale.unlink(missing_ok=True)
        with open(self.out_dir / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(json.loads(json.dumps(self.config.to_dict())), f, sort_keys=False)
        if settings.tensorboard:
            self.log.open_tensorboard(step)
            if settings.audio_every and self.validation.clips and step == 0:
                self.log.add_audio("valid/real", self.validation.real(settings.audio_seconds).cpu(), 0,
                                   self.mel_config.sample_rate)
        parameters = sum(p.numel() for p in self.model.parameters())
        init = self.state.init_from
        start = (f"resumed at step {step}" if step else
                 f"from the weights of {init['path']}" if init is not None and step == 0 else "from scratch")
        crops = self.device_crops
        data = (f"; training audio on {self.device} ({crops.nbytes / 2**20:.0f} MiB "
                f"{str(crops.audio.dtype).replace('torch.', '')})" if crops is not None else "")
        budget = f"; budget {settings.max_minutes:g} min" if settings.max_minutes else ""
        print(f"{PROG}: {self.config.model}, {parameters:,} parameters, {self.device}, {self.precision}, "
              f"{self.runtime.world_size} process(es) x batch {self.config.data.batch_size}, "
              f"{len(self.data.train_set)} training / {len(self.data.valid_set or [])} validation clips{data}"
              f"{budget}; " + start + f" -> {self.out_dir}", file=sys.stderr, flush=True)

    def fit(self) -> int:
        """Train to train.max_steps or the end of train.max_minutes. Returns the exit status (0 done or out of
        time, 130/143 stopped by a signal)."""
        settings = self.config.train
        if self.runtime.main:
            self._open_output()
        threads = torch.get_num_threads()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if settings.adaptive_threads and self.device.type == "cpu":
            self.governor = ThreadGovernor(settings.threads or threads)
        try:
            with self.stop:
                self.log.open_progress(settings.max_steps, self.state.step, settings.progress)
                return self._loop()
        finally:
            torch.set_num_threads(threads)
            self.log.close()

    def _loop(self) -> int:
        settings, state = self.config.train, self.state
        self.model.train()
        self.end_reason = "max_steps"
        first_step = state.step
        if state.step == 0 and self.validation.clips and (state.init_from is not None or settings.max_minutes):
            # The starting point's NLL: the baseline best.pt must beat (a continued model's own figure), and the
            # measured duration of a validation, which the budget reserves.
            self._validate_and_keep_best(None, baseline=True)
        self.log.start_window()
        if state.step < settings.max_steps and self.stop.signum is None:
            for batch in self.data.batches(state, pin_memory=self.device.type == "cuda"):
                if self.budget.out_of_time(self.runtime, self.device):
                    self.end_reason = "max_minutes"
                    break
                with self.budget.timing("step"):
                    loss, gnorm, logs = self.train_step(batch)
                if self.governor is not None:
                    logs = {**logs, "threads": self.governor.threads}
                    self.governor.after_step(self.budget.step_seconds[-1])
                state.batches_in_epoch += 1
                self.losses.append(loss)
                crops = batch[0] if isinstance(batch, (tuple, list)) else batch
                self.log.add_step({"loss": loss, "grad_norm": gnorm, **logs}, crops.numel())
                if self._after_step(loss):
                    break
        if self.end_reason == "max_minutes":
            # Keep the work: validate (best.pt if better) and save, unless this very step already did both.
            if self.log.steps:
                self.log.close_window(state.step, self.stepper.lr_at(state.step - 1))
            if self.validation.clips and self.validation.validated_at != state.step:
                self._validate_and_keep_best(self.losses[-1] if self.losses else None)
            if self.checkpoints.saved_at != state.step:
                self.save()
        if self.stop.signum is not None:
            self.end_reason = "signal"
        about = {"batch": self.config.data.batch_size, "segment_length": self.config.data.segment_length,
                 "world_size": self.runtime.world_size, "device": str(self.device), "precision": self.precision}
        if state.init_from is not None:
            about["init_from"] = state.init_from
        if self.governor is not None:
            about["thread_changes"] = self.governor.changes
        self.log.summary(state.step, self.end_reason, state.step - first_step, time.time() - self.started_at,
                         self.budget.step_seconds, about)
        return self._finish()

    def _after_step(self, loss: float) -> bool:
        """What falls due after a step: a log record, a validation, an audio sample, a checkpoint. True when the
        run stops here (train.max_steps, or a signal)."""
        settings, step = self.config.train, self.state.step
        if step % settings.log_every == 0 or step == settings.max_steps:
            self.log.close_window(step, self.stepper.lr_at(step - 1))
        if settings.valid_every and (step % settings.valid_every == 0 or step == settings.max_steps):
            self._validate_and_keep_best(loss)
        if settings.audio_every and step % settings.audio_every == 0:
            self.log_audio()
        if step % settings.ckpt_every == 0 or step == settings.max_steps or self.stop.signum is not None:
            self.save()
        return step >= settings.max_steps or self.stop.signum is not None

    def _finish(self) -> int:
        """The closing line on rank 0, and the exit status."""
        state, main = self.state, self.runtime.main
        if self.stop.signum is not None:
            if main:
                print(f"{PROG}: stopped at step {state.step}; saved {self.last_path}; continue with --resume",
                      file=sys.stderr, flush=True)
            return EXIT_SIGNAL.get(self.stop.signum, 130)
        if main:
            best = f", best validation NLL {state.best_valid_nll:.4f} nats/sample" if self.valid_history else ""
            if self.end_reason == "max_minutes":
                print(f"{PROG}: the {self.config.train.max_minutes:g}-minute budget ended the run at step "
                      f"{state.step} after {time.time() - self.started_at:.1f} s "
                      f"({time.process_time() - self.cpu_started_at:.1f} CPU-s){best}; saved {self.last_path}",
                      file=sys.stderr, flush=True)
            else:
                print(f"{PROG}: done: {state.step} steps{best}; {self.last_path}", file=sys.stderr, flush=True)
        return 0
