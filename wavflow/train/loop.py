"""The Trainer: builds a run from its RunConfig, then `fit()` trains, validates, logs and checkpoints.

One trainer serves WaveGlow, the WaveNet teacher and the distilled IAF student: it relies only on the model
interface, `wavflow.models.Vocoder` (`training_loss`, `log_likelihood`, `infer`), and on `attach_teacher` for
the student. Rank 0 alone writes files. A signal (SIGINT, SIGTERM) lets the step in progress finish and saves
before the run stops.

A run may start from another checkpoint's weights (`init`, state.read_init) and may have a wall-clock budget
(train.max_minutes, counted from `started_at`, the process's start for the command line): before each step the
trainer checks that the step, a validation and the saves that end the run still fit, from the durations it
measured (a validation at step 0 measures the first; a save is estimated from the model's size until one is
timed), and if not it validates, writes best.pt (if better) and last.pt, and stops with exit status 0.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checkpoint import file_sha256, load, save_checkpoint
from ..cli import check_writable_dir
from ..data import CropSampler, DeviceCrops, LJSpeech, validation_clips
from ..errors import WavflowError
from ..frontend import MelConfig, mel_spectrogram
from ..inference import native_bf16
from ..metrics import pooled_nll
from ..models import build_model, weights_sha256
from .config import RunConfig, check_segment_length, check_values, resample_warning
from .runtime import (EXIT_SIGNAL, PROG, Runtime, choose_kernels, pick_device, rng_state, seed_everything,
                      seed_process, separate_rng)
from .state import BEST, LAST, STALE, RunState, read_init, read_last


class TrainingDiverged(Exception):
    """The loss or the gradient norm stopped being finite."""


class _LossModule(torch.nn.Module):
    """DistributedDataParallel synchronises gradients for what runs through forward(): route the loss there."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, mel: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(audio, mel, **extra)


class Trainer:
    """Builds everything a run needs from a RunConfig, then `fit()` runs it.

    `losses` holds every step's loss on this process, `valid_history` the (step, validation NLL) pairs,
    `state` what last.pt keeps (model, optimizer, step, sampler position, best NLL).
    """

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, resume: bool = False,
                 runtime: Runtime | None = None, model: torch.nn.Module | None = None,
                 init: str | os.PathLike | None = None, started_at: float | None = None):
        self.started_at = time.time() if started_at is None else started_at  # train.max_minutes counts from here
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
        t = config.train
        self.device = pick_device(t.device, self.runtime)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise WavflowError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        # auto: bf16 autocast where the device computes bf16 natively (AVX512-BF16 or AMX CPUs, bf16 GPUs),
        # which halves a CPU step's time; fp32 elsewhere, where emulated bf16 is slower than fp32.
        self.precision = t.precision if t.precision != "auto" else "bf16" if native_bf16(self.device) else "fp32"
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.mel_config = MelConfig.from_dict(config.mel)
        self._open_data()  # first: a missing root or clip stops the run before any model is built
        checkpoint = read_last(self.out_dir, resume)
        if self.runtime.main:
            check_writable_dir(self.out_dir)
        choose_kernels(t.deterministic, self.device)

        self.state = self._build(model)
        if checkpoint is not None:
            self.state.restore(checkpoint, str(self.last_path), config, self.mel_config, self.teacher_sha256,
                               self.runtime)
        else:
            self.state.init_from = init_from
            seed_process(t.seed, self.runtime.rank)
        if getattr(self.model, "needs_pitch", False):
            # A model with a source learns from the recordings' pitch tracks (computed once, cached beside the data).
            self.train_set.attach_pitch(progress=self.runtime.main)
        self.losses: list[float] = []
        self.valid_history: list[tuple[int, float]] = []

        self.loss_module: torch.nn.Module = _LossModule(self.model)
        if self.runtime.distributed:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile and self.device.type == "cuda":  # on CPU inductor's C++ build costs more than it gains
            self.loss_module = torch.compile(self.loss_module,
                                             mode=None if t.compile_mode == "default" else t.compile_mode)
        # data.device_resident: every training clip on the device once, crops cut there (same crops as the loader)
        self.device_crops = DeviceCrops(self.train_set, self.device) if config.data.device_resident else None

        self.valid_clips: list[torch.Tensor] = []
        if self.valid_set is not None and t.valid_every > 0:
            # A clip needs more than n_fft / 2 samples for a mel (reflect padding); shorter ones are left out.
            self.valid_clips = [c.audio.to(self.device) for c in
                                validation_clips(self.valid_set, t.valid_clips, t.valid_max_seconds)
                                if c.audio.shape[0] > self.mel_config.n_fft // 2]
        self.writer = None
        self.stop_signal: int | None = None
        self.end_reason = ""                 # max_steps | max_minutes | signal, once fit() returns
        self.step_seconds: list[float] = []  # each step's wall time in this process (the budget's step estimate)
        self._valid_seconds = 0.0            # longest validation so far (measured)
        self._best_seconds: float | None = None  # longest best.pt / last.pt save so far (None: not yet measured)
        self._last_seconds: float | None = None
        self._validated_at = self._saved_at = -1

    # -- set-up ----------------------------------------------------------------------------------------------

    def _open_data(self) -> None:
        dc, rt = self.config.data, self.runtime
        self.train_set = LJSpeech(dc.root, "train", dc.n_valid, dc.segment_length, self.mel_config,
                                  cache=dc.cache_audio)
        self.sampler = CropSampler(self.train_set, num_replicas=rt.world_size, rank=rt.rank,
                                   seed=self.config.train.seed)
        if self.sampler.num_samples < dc.batch_size:
            raise WavflowError(f"{dc.root}: {len(self.train_set)} training clips give each of {rt.world_size} "
                               f"process(es) {self.sampler.num_samples}, fewer than data.batch_size={dc.batch_size}")
        check_segment_length(self.train_set, dc.segment_length, dc.root)
        warning = resample_warning(self.train_set)
        if warning is not None and rt.main:
            print(f"{PROG}: {warning}", file=sys.stderr, flush=True)
        self.valid_set = LJSpeech(dc.root, "valid", dc.n_valid, dc.segment_length, self.mel_config) \
            if dc.n_valid > 0 else None

    def _build(self, model: torch.nn.Module | None) -> RunState:
        """The model (with its teacher), the optimizer and the grad scaler, as a fresh RunState."""
        c, t = self.config, self.config.train
        # Every process builds the same initial weights from the same seed (DDP also broadcasts rank 0's).
        seed_everything(t.seed)
        if model is None:
            model = build_model(c.model, c.model_config, self.mel_config)
        self.model = model.to(self.device)
        self.teacher: torch.nn.Module | None = None
        self.teacher_sha256: str | None = None
        self._attach_teacher()
        # Fused Adam: one kernel for every parameter's update on CUDA instead of several per tensor.
        fused = {"fused": True} if t.fused_adam and self.device.type == "cuda" else {}
        optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                     **fused)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        return RunState(self.model, optimizer, scaler)

    def _attach_teacher(self) -> None:
        path = self.config.teacher
        wants = hasattr(self.model, "attach_teacher")
        if path is None:
            if wants:
                raise WavflowError(f"model '{self.config.model}' is distilled from a teacher: set teacher: PATH "
                                   f"to a trained WaveNet checkpoint")
            return
        if not wants:
            raise WavflowError(f"teacher: is only for a model that is distilled (student), not '{self.config.model}'")
        teacher = load(path, self.device)  # read_checkpoint: weights_only, never runs code from the file
        teacher.eval().requires_grad_(False)
        self.teacher_sha256 = file_sha256(path)
        self.teacher = teacher
        self.teacher_weights = weights_sha256(teacher)
        self.model.attach_teacher(teacher, self.teacher_sha256)

    def _epoch_batches(self, loader: torch.utils.data.DataLoader | None) -> Any:
        """The batches of the sampler's current epoch: cut on the device (data.device_resident) or loaded."""
        if self.device_crops is not None:
            return self.device_crops.batches(self.sampler, self.config.data.batch_size)
        return loader

    def _loader(self) -> torch.utils.data.DataLoader:
        dc = self.config.data
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=dc.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=dc.num_workers, persistent_workers=dc.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # The loader's own generator: starting an epoch must not draw from the global torch RNG, or a
            # resumed run (which starts its first epoch mid-way) would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.config.train.seed))

    # -- one step --------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        t = self.config.train
        warmup = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        return t.lr * warmup * (t.lr_decay_gamma ** (step // t.lr_decay_every) if t.lr_decay_every else 1.0)

    def train_step(self, batch: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[float, float, dict[str, float]]:
        """One optimizer step on a batch of crops [B, T], or (crops, f0, voiced) for a model that learns from
        pitch tracks: (loss, gradient norm, model's scalars)."""
        t, s = self.config.train, self.state
        extra: dict[str, Any] = {}
        if isinstance(batch, (tuple, list)):
            batch, f0, voiced = batch
            extra["pitch"] = (f0.to(self.device), voiced.to(self.device))
        audio = batch.to(self.device, non_blocking=True)
        with torch.no_grad():
            mel = mel_spectrogram(audio, self.mel_config)  # [B, n_mels, T // hop + 1], on the training device
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            loss, logs = self.loss_module(audio, mel, **extra)
        loss = loss.float()
        value = loss.item()

        # All processes must agree before backward (a rank skipping it would hang the gradient all-reduce).
        flags = torch.tensor([0.0 if math.isfinite(value) else 1.0, 1.0 if self.stop_signal else 0.0])
        flags = self.runtime.any(flags, self.device)
        if flags[1] and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM  # another rank was asked to stop
        if flags[0]:
            raise TrainingDiverged(f"loss is {value if not math.isfinite(value) else 'nan/inf on another rank'} "
                                   f"at step {s.step + 1}")

        lr = self.lr_at(s.step)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        if s.scaler is not None:
            s.scaler.scale(loss).backward()
            s.scaler.unscale_(s.optimizer)
        else:
            loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if t.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params])
        gnorm = float(gnorm)
        if s.scaler is not None:  # fp16: an overflowing step is skipped and the loss scale lowered
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            if not math.isfinite(gnorm):
                raise TrainingDiverged(f"gradient norm is {gnorm} at step {s.step + 1}")
            s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        return value, gnorm, {k: float(v) for k, v in logs.items()}

    # -- validation, samples, checkpoints --------------------------------------------------------------------

    def validate(self) -> float | None:
        """Validation NLL in nats per sample, over the validation clips shared out among the processes."""
        if not self.valid_clips:
            return None
        rt = self.runtime
        self.model.eval()
        with separate_rng(self.device):
            total, count = pooled_nll(self.model, self.valid_clips[rt.rank::rt.world_size], self.mel_config)
        self.model.train()
        total, count = rt.all_sum([total, float(count)], self.device)
        return total / int(count)

    def log_audio(self) -> None:
        t = self.config.train
        if self.writer is None or not self.valid_clips:
            return
        sr = self.mel_config.sample_rate
        real = self.valid_clips[0][: int(t.audio_seconds * sr)]
        mel = mel_spectrogram(real.unsqueeze(0), self.mel_config)
        self.model.eval()
        with separate_rng(self.device), torch.no_grad():
            # The same noise every time, so successive samples differ only by what the model learnt.
            generator = torch.Generator(self.device).manual_seed(t.seed)
            audio = self.model.infer(mel, generator=generator, **t.infer_options)
        self.model.train()
        self.writer.add_audio("valid/generated", audio[0].float().clamp(-1, 1).cpu(), self.state.step, sample_rate=sr)

    def save(self) -> None:
        """last.pt, and step-N.pt every train.keep_every steps, with every process's random streams."""
        start = time.perf_counter()
        self._save()
        self._saved_at = self.state.step
        self._last_seconds = max(self._last_seconds or 0.0, time.perf_counter() - start)

    def _save(self) -> None:
        rt, s = self.runtime, self.state
        gathered = rt.gather((rng_state(), weights_sha256(self.model) if rt.distributed else None))
        weights = [g[1] for g in gathered] if rt.distributed else []
        if len(set(weights)) > 1:
            raise RuntimeError(f"processes hold different weights at step {s.step}: {weights}")
        if not rt.main:
            return
        if self.teacher is not None and weights_sha256(self.teacher) != self.teacher_weights:
            raise RuntimeError("the teacher's weights changed during distillation; it must stay frozen")
        payload = s.training_payload(self.config, [g[0] for g in gathered], rt.world_size, weights,
                                     self.teacher_sha256)
        save_checkpoint(self.last_path, payload)
        keep = self.config.train.keep_every
        if keep and s.step % keep == 0:
            save_checkpoint(self.out_dir / f"step-{s.step}.pt", payload)

    def save_best(self, nll: float) -> None:
        start = time.perf_counter()
        if self.runtime.main:
            save_checkpoint(self.out_dir / BEST, self.state.best_payload(nll, self.config, self.teacher_sha256))
        self._best_seconds = max(self._best_seconds or 0.0, time.perf_counter() - start)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.runtime.main:
            return
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    # -- the loop --------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker (forked with this handler): the main process decides when to stop
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now; last.pt is still the previous complete file
        self.stop_signal = signum
        if self.runtime.main:
            print(f"\n{PROG}: {signal.Signals(signum).name}: finishing step {self.state.step + 1}, then saving "
                  f"{self.last_path} (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    def _open_output(self) -> None:
        """Rank 0: the output directory, config.yaml, TensorBoard, and the start-up line."""
        t, step = self.config.train, self.state.step
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(STALE):
            stale.unlink(missing_ok=True)
        with open(self.out_dir / "config.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(json.loads(json.dumps(self.config.to_dict())), f, sort_keys=False)
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after its last checkpoint.
            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=step or None)
            if t.audio_every and self.valid_clips and step == 0:
                sr = self.mel_config.sample_rate
                self.writer.add_audio("valid/real", self.valid_clips[0][: int(t.audio_seconds * sr)].cpu(),
                                      0, sample_rate=sr)
        n = sum(p.numel() for p in self.model.parameters())
        init = self.state.init_from
        start = (f"resumed at step {step}" if step else
                 f"from the weights of {init['path']}" if init is not None and step == 0 else "from scratch")
        data = (f"; training audio on {self.device} ({self.device_crops.nbytes / 2**20:.0f} MiB "
                f"{str(self.device_crops.audio.dtype).replace('torch.', '')})" if self.device_crops is not None else "")
        budget = f"; budget {t.max_minutes:g} min" if t.max_minutes else ""
        print(f"{PROG}: {self.config.model}, {n:,} parameters, {self.device}, {self.precision}, "
              f"{self.runtime.world_size} process(es) x batch {self.config.data.batch_size}, "
              f"{len(self.train_set)} training / {len(self.valid_set or [])} validation clips{data}{budget}; "
              + start + f" -> {self.out_dir}", file=sys.stderr, flush=True)

    def fit(self) -> int:
        """Train to train.max_steps or the end of train.max_minutes. Returns the exit status (0 done or out of
        time, 130/143 stopped by a signal)."""
        t = self.config.train
        if self.runtime.main:
            self._open_output()
        self._pid = os.getpid()
        previous = {s: signal.signal(s, self._on_signal) for s in EXIT_SIGNAL}
        threads = torch.get_num_threads()
        if t.threads:
            torch.set_num_threads(t.threads)
        bar = None
        try:
            if self.runtime.main and t.progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=t.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True)
            return self._loop(bar)
        finally:
            torch.set_num_threads(threads)
            for s, h in previous.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()

    # -- the wall-clock budget -------------------------------------------------------------------------------

    def _step_estimate(self) -> float:
        """The next step's duration: the longest of the last few (the first, which compiles, once others exist)."""
        times = self.step_seconds[1:] or self.step_seconds
        return max(times[-5:]) if times else 0.0

    def _reserve(self) -> float:
        """What ending the run costs: a validation, best.pt and last.pt, measured, or estimated from the model's
        size (float32 weights and Adam's two moments, synced to disk at a conservative 100 MB/s) until a save has
        been timed."""
        n = sum(p.numel() for p in self.model.parameters())
        last = self._last_seconds if self._last_seconds is not None else 1.0 + 12 * n / 100e6
        best = self._best_seconds if self._best_seconds is not None else 0.5 + 4 * n / 100e6
        valid = self._valid_seconds + best if self.valid_clips else 0.0
        return valid + last

    def _clock(self) -> float:
        """What the budget counts: wall-clock time, or this process's CPU time since it started
        (train.budget_clock: cpu), which a busy machine does not eat into."""
        return time.process_time() if self.config.train.budget_clock == "cpu" else time.time()

    def _out_of_time(self, deadline: float) -> bool:
        """Would one more step leave too little time to validate and save before the deadline? Every process
        must agree: the run stops when any of them is late. (Durations are measured in wall time, which is
        never shorter than CPU time, so a CPU-time budget is kept too.)"""
        # The margin leaves the process time to exit (interpreter and CUDA teardown) inside the budget.
        margin = 1.0 + 0.01 * 60.0 * self.config.train.max_minutes
        late = self._clock() + self._step_estimate() + 1.25 * self._reserve() + margin > deadline
        return bool(self.runtime.any(torch.tensor([1.0 if late else 0.0]), self.device)[0])

    # -- the loop --------------------------------------------------------------------------------------------

    def _loop(self, bar: Any) -> int:
        t, s = self.config.train, self.state
        self.model.train()
        loader = self._loader() if self.device_crops is None else None
        start = 0.0 if t.budget_clock == "cpu" else self.started_at
        deadline = start + 60.0 * t.max_minutes if t.max_minutes else None
        self.end_reason = "max_steps"
        first_step = s.step
        if s.step == 0 and self.valid_clips and (s.init_from is not None or deadline is not None):
            # The starting point's NLL: the baseline best.pt must beat (a continued model's own figure), and the
            # measured duration of a validation, which the budget reserves.
            self._validate_and_keep_best(None, bar, baseline=True)
        window: dict[str, float] = {}
        steps_in_window, tick = 0, time.perf_counter()
        batch_samples = 0
        while s.step < t.max_steps and self.stop_signal is None:
            self.sampler.set_state(s.epoch, s.batches_in_epoch * self.config.data.batch_size)
            for audio in self._epoch_batches(loader):
                if deadline is not None and self._out_of_time(deadline):
                    self.end_reason = "max_minutes"
                    break
                started = time.perf_counter()
                loss, gnorm, logs = self.train_step(audio)
                self.step_seconds.append(time.perf_counter() - started)
                batch_samples = (audio[0] if isinstance(audio, (tuple, list)) else audio).numel()
                s.batches_in_epoch += 1
                self.losses.append(loss)
                for k, v in {"loss": loss, "grad_norm": gnorm, **logs}.items():
                    window[k] = window.get(k, 0.0) + v
                steps_in_window += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

                if s.step % t.log_every == 0 or s.step == t.max_steps:
                    self._log_window(window, steps_in_window, time.perf_counter() - tick, batch_samples, bar)
                    window, steps_in_window, tick = {}, 0, time.perf_counter()
                if t.valid_every and (s.step % t.valid_every == 0 or s.step == t.max_steps):
                    self._validate_and_keep_best(loss, bar)
                if t.audio_every and s.step % t.audio_every == 0:
                    self.log_audio()
                if s.step % t.ckpt_every == 0 or s.step == t.max_steps or self.stop_signal is not None:
                    self.save()
                if s.step >= t.max_steps or self.stop_signal is not None:
                    break
            else:
                s.epoch += 1
                s.batches_in_epoch = 0
                continue
            break
        if self.end_reason == "max_minutes":
            # Keep the work: validate (best.pt if better) and save, unless this very step already did both.
            if steps_in_window:
                self._log_window(window, steps_in_window, time.perf_counter() - tick, batch_samples, bar)
            if self.valid_clips and self._validated_at != s.step:
                self._validate_and_keep_best(self.losses[-1] if self.losses else None, bar)
            if self._saved_at != s.step:
                self.save()
        if self.stop_signal is not None:
            self.end_reason = "signal"
        self._log_summary(s.step - first_step, batch_samples)
        if self.stop_signal is not None:
            if self.runtime.main:
                print(f"{PROG}: stopped at step {s.step}; saved {self.last_path}; continue with --resume",
                      file=sys.stderr, flush=True)
            return EXIT_SIGNAL.get(self.stop_signal, 130)
        if self.runtime.main:
            best = f", best validation NLL {s.best_valid_nll:.4f} nats/sample" if self.valid_history else ""
            if self.end_reason == "max_minutes":
                print(f"{PROG}: the {t.max_minutes:g}-minute budget ended the run at step {s.step} after "
                      f"{time.time() - self.started_at:.1f} s ({time.process_time():.1f} CPU-s){best}; saved "
                      f"{self.last_path}",
                      file=sys.stderr, flush=True)
            else:
                print(f"{PROG}: done: {s.step} steps{best}; {self.last_path}", file=sys.stderr, flush=True)
        return 0

    def _log_summary(self, steps: int, batch_samples: int) -> None:
        """The run's last log record: how it ended, its wall time, and its training throughput in audio samples
        per second (all steps, and without the first, which includes compilation and warm-up)."""
        world = self.runtime.world_size
        train_seconds = sum(self.step_seconds)
        steady = self.step_seconds[1:]
        record: dict[str, Any] = {
            "step": self.state.step, "run/end": self.end_reason, "run/steps": steps,
            "run/wall_seconds": time.time() - self.started_at, "run/train_seconds": train_seconds,
            "run/cpu_seconds": time.process_time(),
            "run/samples": steps * batch_samples * world,
            "run/samples_per_s": steps * batch_samples * world / train_seconds if train_seconds else None,
            "run/steady_samples_per_s": (len(steady) * batch_samples * world / sum(steady)
                                         if steady and sum(steady) else None),
            "run/batch": self.config.data.batch_size, "run/segment_length": self.config.data.segment_length,
            "run/world_size": world, "run/device": str(self.device), "run/precision": self.precision,
        }
        if self.state.init_from is not None:
            record["run/init_from"] = self.state.init_from
        self._log(record)

    def _log_window(self, window: dict[str, float], steps: int, elapsed: float, batch_samples: int, bar: Any) -> None:
        """One log record: the means over the steps since the last one (and over every process's batches)."""
        t, step, world = self.config.train, self.state.step, self.runtime.world_size
        window = self.runtime.all_mean(window, self.device)
        record = {"step": step, **{f"train/{k}": v / steps for k, v in window.items()},
                  "train/lr": self.lr_at(step - 1), "train/steps_per_s": steps / elapsed,
                  "train/samples_per_s": steps * batch_samples * world / elapsed}
        if self.device.type == "cuda":
            record["train/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self._log(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['train/loss']:.4f}", samples_s=f"{record['train/samples_per_s']:.3g}")
        elif self.runtime.main and t.progress:
            print(f"step {step}/{t.max_steps}  loss {record['train/loss']:.4f}  "
                  f"|g| {record['train/grad_norm']:.3g}  {record['train/steps_per_s']:.2f} steps/s  "
                  f"{record['train/samples_per_s']:,.0f} samples/s", file=sys.stderr, flush=True)

    def _validate_and_keep_best(self, loss: float | None, bar: Any, baseline: bool = False) -> None:
        """Validate; keep best.pt when the NLL beats every earlier one. `baseline`: the starting weights' NLL,
        which a later validation must beat for a best.pt (a continued model keeps its own figure to beat)."""
        start = time.perf_counter()
        nll = self.validate()
        self._valid_seconds = max(self._valid_seconds, time.perf_counter() - start)
        if nll is None:
            return
        s = self.state
        self._validated_at = s.step
        self.valid_history.append((s.step, nll))
        self._log({"step": s.step, "valid/nll": nll})
        if bar is not None:
            bar.set_postfix(loss="-" if loss is None else f"{loss:.4f}", valid_nll=f"{nll:.4f}")
        if baseline:
            s.best_valid_nll = min(s.best_valid_nll, nll)
            if self.runtime.main:
                print(f"{PROG}: validation NLL of the starting weights {nll:.4f} nats/sample (best.pt is written "
                      f"when a later validation beats it)", file=sys.stderr, flush=True)
        elif nll < s.best_valid_nll:
            s.best_valid_nll = nll
            self.save_best(nll)
