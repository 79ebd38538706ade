"""Training for every wavflow model: `python -m wavflow.train CONFIG.yaml [--out-dir DIR] [--resume] [key=value ...]`.

One trainer serves WaveGlow, the WaveNet teacher and the distilled IAF student: it only relies on the model
protocol (`training_loss`, `log_likelihood`, `infer`; `attach_teacher` for the student). A run is described by
a YAML file (see recipes/ljspeech/conf/*.yaml for commented examples):

    model: waveglow                  # waveglow | wavenet | student
    model_config: {n_flows: 12}      # fields of the model's config dataclass; omitted ones keep the paper default
    mel: {}                          # MelConfig fields (omit: the Tacotron 2 mel of design.md section 1)
    teacher: null                    # student only: the trained WaveNet checkpoint to distil from
    data: {root: ..., n_valid: 20, segment_length: 16000, batch_size: 12, num_workers: 2}
    train: {lr: 1.0e-4, max_steps: 580000, precision: fp32, ...}   # every key: TrainConfig below

Any key can be overridden on the command line: `train.max_steps=100 data.root=/data/LJSpeech-1.1`.

Distributed: launch the same command under torchrun (`torchrun --nproc_per_node 8 -m wavflow.train CONF`);
each process trains on its own share of every epoch with `data.batch_size` crops, so the global batch is
batch_size x world size. GPUs talk over NCCL, CPU processes over gloo. Rank 0 alone writes files, and every
rank reads last.pt on --resume, so on several nodes the output directory must be on a shared file system.

The output directory holds:
    last.pt      full training state (model, optimizer, grad scaler, step, RNG states of every process, the
                 data sampler's position, config, mel settings), written atomically every train.ckpt_every
                 steps; `--resume` continues from it bit-for-bit: the same losses as an uninterrupted run on
                 the same hardware (on GPU with train.deterministic: true; without it, cuDNN's kernel choice
                 makes even two uninterrupted GPU runs differ in the last bits). It loads with wavflow.load.
                 `--resume` with no last.pt starts afresh, so a scheduler can rerun one command line.
    best.pt      inference checkpoint (no optimizer) with the lowest validation NLL so far.
    config.yaml  the resolved configuration;  log.jsonl  one JSON line per log/validation event;
    tb/          TensorBoard scalars (loss, validation NLL, lr, gradient norm, steps/s) and audio samples.

Exit status: 0 finished; 2 bad configuration or data (one line on stderr); 1 the loss or gradient became
NaN/inf (nothing is saved at that point: last.pt stays the last good state); 130 after SIGINT and 143 after
SIGTERM: the step in progress is finished and a checkpoint saved before exiting, so `--resume` loses nothing.
A second SIGINT aborts at once (last.pt is still the previous complete checkpoint: saves are atomic).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
import types
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
import yaml

from .checkpoint import file_sha256, model_payload, read_checkpoint, save_checkpoint
from .cli import ArgumentParser, check_writable_dir, run_cli
from .data import CropSampler, LJSpeech
from .errors import WavflowError
from .frontend import MelConfig, mel_spectrogram
from .models import build_model, config_from_dict, config_to_dict, model_classes

PROG = "wavflow.train"
EXIT_DIVERGED = 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


# ----------------------------------------------------------------------------------------------------------------
# Configuration

@dataclass
class DataConfig:
    root: str = ""               # LJSpeech-layout root: metadata.csv + wavs/ID.wav|flac (relative to the working dir)
    n_valid: int = 20            # the LAST n_valid clips of metadata.csv are held out for validation
    segment_length: int = 16000  # samples per random training crop (0.73 s at 22050 Hz); shorter clips are zero-padded
                                 # (a segment longer than every training clip is refused)
    batch_size: int = 12         # crops per step PER PROCESS: the global batch is batch_size x world size
    num_workers: int = 2         # DataLoader worker processes per training process (0: load in the main process)
    cache_audio: bool = False    # keep decoded clips in memory (per worker; ~190 MB for the mini set, 7.6 GB full)


@dataclass
class TrainConfig:
    lr: float = 1e-4                          # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_decay_every: int = 0                   # multiply lr by lr_decay_gamma every this many steps (0: constant)
    lr_decay_gamma: float = 0.5
    max_steps: int = 580_000                  # optimizer steps in total (a resumed run counts from its checkpoint)
    grad_clip: float = 0.0                    # clip the global gradient norm to this value (0: no clipping)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a GradScaler and needs CUDA
    device: str = "auto"                      # auto (cuda when available), cpu, cuda, cuda:N
    deterministic: bool = False               # deterministic GPU kernels (bit-for-bit resume on GPU; slower)
    compile: bool = False                     # torch.compile the training step on GPU (ignored on CPU)
    threads: int = 0                          # CPU threads for torch (0: torch's default, one per core); small
                                              # models on a shared CPU run faster with 1 (no spinning threads)
    seed: int = 1234                          # model init, data order and crops, per-step noise
    log_every: int = 100                      # steps between logged training scalars
    valid_every: int = 1000                   # steps between validation NLL evaluations (0: never)
    valid_clips: int = 20                     # validate on at most this many held-out clips ...
    valid_max_seconds: float = 0.0            # ... each cut to its first this-many seconds (0: whole utterances)
    audio_every: int = 0                      # steps between TensorBoard audio samples (0: none)
    audio_seconds: float = 4.0                # length of the vocoded sample (the first validation clip's mel)
    infer_options: dict = field(default_factory=dict)  # passed to model.infer for samples, e.g. {sigma: 0.6}
    ckpt_every: int = 1000                    # steps between checkpoints (last.pt); one is also written at the end
    keep_every: int = 0                       # also keep a copy step-N.pt every this many steps (0: none)
    out_dir: str = ""                         # output directory ("" : exp/<config file name>); --out-dir overrides
    tensorboard: bool = True
    progress: bool = True                     # tqdm bar when stderr is a terminal (plain log lines otherwise)


@dataclass
class RunConfig:
    model: str = ""                                   # waveglow | wavenet | student
    model_config: dict = field(default_factory=dict)  # the model's config fields (unset: paper defaults)
    mel: dict = field(default_factory=dict)           # MelConfig fields (unset: design.md section 1)
    teacher: str | None = None                        # student: path of the frozen teacher checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list of " + (_type_name(args[0]) + "s" if args and args[-1] is Ellipsis else f"{len(args)} values")
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(name: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp` (a dataclass field annotation), or a WavflowError naming the key.

    YAML 1.1 reads `1e-4` as a string, so a number-typed key also accepts a string that parses as a number.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = WavflowError(f"{name}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(name, value, a)
                except WavflowError:
                    pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if args and args[-1] is Ellipsis:
            return tuple(coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise bad
            return tuple(coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        return tuple(value)
    return value  # a type this checker does not know: the model's own constructor judges it


def check_fields(section: str, values: dict[str, Any], cls: type) -> dict[str, Any]:
    """Validate a mapping against a config dataclass: unknown keys and wrong types are refused by name."""
    if not isinstance(values, dict):
        raise WavflowError(f"{section}: expected a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise WavflowError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                           f"known: {', '.join(sorted(hints))}")
    return {k: coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()}


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise WavflowError(f"override '{text}' is not of the form key=value (e.g. train.max_steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run description, apply `key=value` overrides, check every key and type."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WavflowError(f"{path}: no such config file" if not path.exists() else f"{path}: not a file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise WavflowError(f"{path}: not valid YAML{where}: {problem}") from None
        except UnicodeDecodeError:
            raise WavflowError(f"{path}: not a UTF-8 text file") from None
        if not isinstance(raw, dict):
            raise WavflowError(f"{path}: expected a mapping of keys (model, data, train, ...), got {type(raw).__name__}")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise WavflowError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        keys, value = _parse_override(text)
        if keys[0] not in top or len(keys) > 2 or (len(keys) == 2 and keys[0] in ("model", "teacher")) \
                or (len(keys) == 1 and keys[0] in ("data", "train", "model_config", "mel")):
            raise WavflowError(f"override '{text}': unknown key '{'.'.join(keys)}'; use model=, teacher=, "
                               f"or section.key= with a section of data, train, model_config, mel")
        if len(keys) == 1:
            raw[keys[0]] = value
        else:
            section = raw.setdefault(keys[0], {})
            if not isinstance(section, dict):
                raise WavflowError(f"override '{text}': '{keys[0]}' is not a mapping in the config")
            section[keys[1]] = value

    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise WavflowError("the config must name the model: model: waveglow | wavenet | student")
    _, model_config_class = model_classes(model)  # unknown model type -> WavflowError listing the known ones
    model_config = check_fields("model_config", raw.get("model_config") or {}, model_config_class)
    # The config dataclass refuses every value that cannot build a model (by name, as a WavflowError): find
    # out now, before any data is read or a teacher loaded. Checks that need the mel come when the model is built.
    config_from_dict(model_config_class, model_config)
    mel = check_fields("mel", raw.get("mel") or {}, MelConfig)
    teacher = raw.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise WavflowError(f"teacher: expected a checkpoint path, got {teacher!r}")
    data = DataConfig(**check_fields("data", raw.get("data") or {}, DataConfig))
    train = TrainConfig(**check_fields("train", raw.get("train") or {}, TrainConfig))
    config = RunConfig(model=model, model_config=model_config, mel=mel, teacher=teacher, data=data, train=train)
    _check_values(config)
    return config


def _check_values(c: RunConfig) -> None:
    d, t = c.data, c.train
    positive = {"data.batch_size": d.batch_size, "data.segment_length": d.segment_length,
                "train.max_steps": t.max_steps, "train.log_every": t.log_every, "train.ckpt_every": t.ckpt_every}
    non_negative = {"data.n_valid": d.n_valid, "data.num_workers": d.num_workers, "train.valid_every": t.valid_every,
                    "train.valid_clips": t.valid_clips, "train.valid_max_seconds": t.valid_max_seconds,
                    "train.audio_every": t.audio_every, "train.keep_every": t.keep_every,
                    "train.grad_clip": t.grad_clip, "train.lr_decay_every": t.lr_decay_every,
                    "train.weight_decay": t.weight_decay, "train.threads": t.threads, "train.seed": t.seed}
    # `not v > 0` rather than `v <= 0`: NaN compares false both ways and must be refused too.
    for name, v in positive.items():
        if not v > 0:
            raise WavflowError(f"{name} must be positive, got {v}")
    for name, v in non_negative.items():
        if not v >= 0:
            raise WavflowError(f"{name} must not be negative, got {v}")
        if not math.isfinite(v):
            raise WavflowError(f"{name} must be finite, got {v}")
    if not t.lr > 0 or not math.isfinite(t.lr):
        raise WavflowError(f"train.lr must be a positive number, got {t.lr}")
    if not t.lr_decay_gamma > 0 or not math.isfinite(t.lr_decay_gamma):
        raise WavflowError(f"train.lr_decay_gamma must be a positive number, got {t.lr_decay_gamma}")
    for i, beta in enumerate(t.betas):
        if not 0 <= beta < 1:
            raise WavflowError(f"train.betas[{i}] must be in [0, 1), got {beta}")
    if not t.audio_seconds > 0 or not math.isfinite(t.audio_seconds):
        raise WavflowError(f"train.audio_seconds must be a positive number, got {t.audio_seconds}")
    if t.seed >= 2**63:
        raise WavflowError(f"train.seed must be below 2^63, got {t.seed}")
    if not d.root:
        raise WavflowError("data.root is not set: give the LJSpeech-layout dataset root (e.g. data.root=PATH)")


def _clip_length(path: Path, sample_rate: int) -> int:
    """Samples of the audio file at `path` once resampled to `sample_rate`, from its header (nothing decoded)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise WavflowError(f"{path}: not a readable audio file ({str(e).splitlines()[0]})") from None
    if info.samplerate == sample_rate:
        return int(info.frames)
    return math.ceil(info.frames * sample_rate / info.samplerate)  # torchaudio's resampled length


def _check_segment_length(dataset: LJSpeech, segment_length: int, root: str) -> None:
    """Refuse crops longer than every training clip: they would be zero-padded, so the run would learn padding.

    Reads file headers only, and stops at the first clip that is long enough (usually the first one).
    """
    longest = 0
    for path in dataset.paths:
        longest = max(longest, _clip_length(path, dataset.mel_config.sample_rate))
        if longest >= segment_length:
            return
    raise WavflowError(f"data.segment_length={segment_length} is longer than every training clip (the longest "
                       f"has {longest} samples) in {root}; every crop would end in zero padding: choose "
                       f"data.segment_length <= {longest}")


# ----------------------------------------------------------------------------------------------------------------
# Processes, devices, random states

@dataclass
class Dist:
    """Where this process sits in a (possibly one-process) run."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        # torchrun sets these; a plain `python -m wavflow.train` is a world of one.
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WavflowError(f"train.device: unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WavflowError(f"train.device={name}, but no CUDA GPU is available here")
        if d.enabled or device.index is None:  # one GPU per process under torchrun
            device = torch.device("cuda", d.local_rank if d.enabled else torch.cuda.current_device())
    elif device.type != "cpu":
        raise WavflowError(f"train.device: unsupported device '{name}' (auto, cpu, cuda, cuda:N)")
    return device


def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from, as plain tensors and numbers (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def weights_sha256(module: torch.nn.Module) -> str:
    """Hash of every tensor in the module's state, in order: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def separate_rng(device: torch.device) -> Iterator[None]:
    """Run a block (validation, audio samples) without moving the training run's random streams."""
    devices = [device] if device.type == "cuda" else []
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        yield
    random.setstate(py)
    np.random.set_state(npy)


# ----------------------------------------------------------------------------------------------------------------
# Validation

@torch.no_grad()
def validation_nll(model: torch.nn.Module, clips: Sequence[torch.Tensor], mel_config: MelConfig) -> tuple[float, int]:
    """Total negative log-likelihood in nats, and the number of audio samples it covers, over whole clips.

    Each clip [T] (already on the model's device) is scored in one piece with `model.log_likelihood`, which
    gives the mean log-density per sample on the shared scale of design.md section 2; dividing the total by the
    sample count weights every sample equally, however the clips' lengths differ.
    """
    total, count = 0.0, 0
    for audio in clips:
        audio = audio.unsqueeze(0)
        mel = mel_spectrogram(audio, mel_config)
        ll = model.log_likelihood(audio, mel)
        total += -float(ll.double().sum()) * audio.shape[-1]
        count += audio.shape[-1]
    return total, count


def validation_clips(dataset: LJSpeech, max_clips: int, max_seconds: float) -> list[torch.Tensor]:
    """The first `max_clips` validation utterances, optionally cut to `max_seconds`, trimmed to whole mel hops
    (every model sees F full frames for F * hop samples, so no model is scored on a partial frame)."""
    hop, sr = dataset.mel_config.hop_length, dataset.mel_config.sample_rate
    clips = []
    for i in range(min(max_clips, len(dataset))):
        audio = dataset.load(i)
        if max_seconds > 0:
            audio = audio[: int(max_seconds * sr)]
        audio = audio[: audio.shape[0] // hop * hop]
        if audio.shape[0] > dataset.mel_config.n_fft // 2:
            clips.append(audio)
    return clips


class _LossModule(torch.nn.Module):
    """DistributedDataParallel synchronises gradients for what runs through forward(): route the loss there."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(audio, mel)


class TrainingDiverged(Exception):
    """The loss or the gradient norm stopped being finite."""


# ----------------------------------------------------------------------------------------------------------------
# The trainer

class Trainer:
    """Builds everything a run needs from a RunConfig, then `fit()` runs it. Rank 0 alone writes files."""

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, resume: bool = False,
                 dist_env: Dist | None = None, model: torch.nn.Module | None = None):
        self.config = config
        self.d = dist_env or Dist()
        self.out_dir = Path(out_dir)
        t = config.train
        _check_values(config)  # again, for a RunConfig made in code rather than by load_config
        self.device = pick_device(t.device, self.d)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise WavflowError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
        self.mel_config = MelConfig.from_dict(config.mel)

        # Data first: a missing root or clip stops the run before any model is built.
        dc = config.data
        self.train_set = LJSpeech(dc.root, "train", dc.n_valid, dc.segment_length, self.mel_config,
                                  cache=dc.cache_audio)
        self.sampler = CropSampler(self.train_set, num_replicas=self.d.world_size, rank=self.d.rank, seed=t.seed)
        if self.sampler.num_samples < dc.batch_size:
            raise WavflowError(f"{dc.root}: {len(self.train_set)} training clips give each of {self.d.world_size} "
                               f"process(es) {self.sampler.num_samples}, fewer than data.batch_size={dc.batch_size}")
        _check_segment_length(self.train_set, dc.segment_length, dc.root)
        self.valid_set = LJSpeech(dc.root, "valid", dc.n_valid, dc.segment_length, self.mel_config) \
            if dc.n_valid > 0 else None

        self.last_path = self.out_dir / "last.pt"
        checkpoint = None
        if self.last_path.exists():
            if not resume:
                raise WavflowError(f"{self.last_path}: the output directory already holds a run; pass --resume to "
                                   f"continue it, or choose another --out-dir")
            checkpoint = read_checkpoint(self.last_path)
        if self.d.main:
            check_writable_dir(self.out_dir)

        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop shapes: the fastest kernels are found once

        # Every process builds the same initial weights from the same seed (DDP also broadcasts rank 0's).
        seed_everything(t.seed)
        if model is None:
            model = build_model(config.model, config.model_config, self.mel_config)
        self.model = model.to(self.device)
        self.teacher_sha256: str | None = None
        self.teacher: torch.nn.Module | None = None
        self._attach_teacher()

        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=t.betas,
                                          weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None

        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_valid_nll = math.inf
        self.losses: list[float] = []       # every step's loss on this process (the API returns it)
        self.valid_history: list[tuple[int, float]] = []
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            # Per-process streams for the steps themselves (e.g. a student's noise), distinct across ranks.
            seed_everything(t.seed + 1_000_003 * self.d.rank + 1)

        self.loss_module: torch.nn.Module = _LossModule(self.model)
        if self.d.enabled:
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile and self.device.type == "cuda":  # on CPU inductor's C++ build costs more than it gains
            self.loss_module = torch.compile(self.loss_module)

        self.valid_clips = [a.to(self.device) for a in
                            validation_clips(self.valid_set, t.valid_clips, t.valid_max_seconds)] \
            if self.valid_set is not None and t.valid_every > 0 else []
        self.writer = None
        self.stop_signal: int | None = None

    # -- set-up helpers --------------------------------------------------------------------------------------

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
        from .checkpoint import load

        teacher = load(path, self.device)  # read_checkpoint: weights_only, never runs code from the file
        teacher.eval().requires_grad_(False)
        self.teacher_sha256 = file_sha256(path)
        self.teacher = teacher
        self.teacher_weights = weights_sha256(teacher)
        self.model.attach_teacher(teacher, self.teacher_sha256)

    def _restore(self, ck: dict[str, Any]) -> None:
        src = str(self.last_path)
        if ck.get("model_type") != self.config.model:
            raise WavflowError(f"{src}: holds a {ck.get('model_type')} run, the config trains a {self.config.model}")
        mine = config_to_dict(self.model.config)
        if ck.get("model_config") != mine:
            diff = sorted(k for k in set(mine) | set(ck.get("model_config", {}))
                          if mine.get(k) != ck.get("model_config", {}).get(k))
            raise WavflowError(f"{src}: model_config differs from the config in {', '.join(diff)}; resume with the "
                               f"run's own config (see config.yaml in the output directory)")
        if ck.get("mel_config") != self.mel_config.to_dict():
            raise WavflowError(f"{src}: the run used other mel settings than this config")
        if self.teacher_sha256 is not None and ck.get("teacher_sha256") != self.teacher_sha256:
            raise WavflowError(f"{src}: was distilled from teacher {str(ck.get('teacher_sha256'))[:12]}..., but "
                               f"{self.config.teacher} has sha256 {self.teacher_sha256[:12]}...")
        for key in ("optimizer", "rng", "sampler"):
            if key not in ck:
                raise WavflowError(f"{src}: not a training checkpoint (no '{key}'); cannot resume from it")
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step = int(ck["step"])
        self.epoch, self.batches_in_epoch = int(ck["sampler"]["epoch"]), int(ck["sampler"]["batches"])
        self.best_valid_nll = float(ck.get("best_valid_nll", math.inf))
        states = ck["rng"]
        if len(states) == self.d.world_size:
            set_rng_state(states[self.d.rank])
        else:  # another world size: the data order is kept, the per-process noise streams cannot be
            if self.d.main:
                print(f"{PROG}: note: {src} was written by {len(states)} process(es), this run has "
                      f"{self.d.world_size}; continuing, but not bit-for-bit", file=sys.stderr)
            seed_everything(self.config.train.seed + 1_000_003 * self.d.rank + self.step + 1)
            self.batches_in_epoch = self.batches_in_epoch * len(states) // self.d.world_size

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
        return t.lr * (t.lr_decay_gamma ** (step // t.lr_decay_every) if t.lr_decay_every else 1.0)

    def train_step(self, audio: torch.Tensor) -> tuple[float, float, dict[str, float]]:
        """One optimizer step on a batch of crops [B, T]: (loss, gradient norm, model's scalars)."""
        t = self.config.train
        audio = audio.to(self.device, non_blocking=True)
        with torch.no_grad():
            mel = mel_spectrogram(audio, self.mel_config)  # [B, n_mels, T // hop + 1], on the training device
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            loss, logs = self.loss_module(audio, mel)
        loss = loss.float()
        value = loss.item()

        # All processes must agree before backward (a rank skipping it would hang the gradient all-reduce).
        flags = torch.tensor([0.0 if math.isfinite(value) else 1.0, 1.0 if self.stop_signal else 0.0])
        if self.d.enabled:
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        if flags[1] and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM  # another rank was asked to stop
        if flags[0]:
            raise TrainingDiverged(f"loss is {value if not math.isfinite(value) else 'nan/inf on another rank'} "
                                   f"at step {self.step + 1}")

        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if t.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params])
        gnorm = float(gnorm)
        if self.scaler is not None:  # fp16: an overflowing step is skipped and the loss scale lowered
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not math.isfinite(gnorm):
                raise TrainingDiverged(f"gradient norm is {gnorm} at step {self.step + 1}")
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return value, gnorm, {k: float(v) for k, v in logs.items()}

    # -- validation, samples, checkpoints --------------------------------------------------------------------

    def validate(self) -> float | None:
        """Validation NLL in nats per sample, over the validation clips shared out among the processes."""
        if not self.valid_clips:
            return None
        self.model.eval()
        with separate_rng(self.device):
            total, count = validation_nll(self.model, self.valid_clips[self.d.rank::self.d.world_size],
                                          self.mel_config)
        self.model.train()
        if self.d.enabled:
            sums = torch.tensor([total, float(count)], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        return total / count

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
        self.writer.add_audio("valid/generated", audio[0].float().clamp(-1, 1).cpu(), self.step, sample_rate=sr)

    def _training_payload(self) -> dict[str, Any] | None:
        """The full state of the run, gathered from every process; None on ranks other than 0."""
        states = [rng_state()]
        weights = [weights_sha256(self.model)] if self.d.enabled else []
        if self.d.enabled:
            gathered: list[Any] = [None] * self.d.world_size
            dist.all_gather_object(gathered, (states[0], weights[0]))
            states = [g[0] for g in gathered]
            weights = [g[1] for g in gathered]
            if len(set(weights)) != 1:
                raise RuntimeError(f"processes hold different weights at step {self.step}: {weights}")
        if not self.d.main:
            return None
        if self.teacher is not None and weights_sha256(self.teacher) != self.teacher_weights:
            raise RuntimeError("the teacher's weights changed during distillation; it must stay frozen")
        extra: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": states,
            "sampler": {"epoch": self.epoch, "batches": self.batches_in_epoch},
            "train_config": self.config.to_dict(),
            "best_valid_nll": self.best_valid_nll,
            "world_size": self.d.world_size,
        }
        if weights:
            extra["rank_weights_sha256"] = weights
        if self.teacher_sha256 is not None:
            extra["teacher_sha256"] = self.teacher_sha256
        return model_payload(self.model, self.step, **extra)

    def save(self) -> None:
        payload = self._training_payload()
        if payload is None:
            return
        save_checkpoint(self.last_path, payload)
        t = self.config.train
        if t.keep_every and self.step % t.keep_every == 0:
            save_checkpoint(self.out_dir / f"step-{self.step}.pt", payload)

    def save_best(self, nll: float) -> None:
        if not self.d.main:
            return
        extra: dict[str, Any] = {"valid_nll": nll, "train_config": self.config.to_dict()}
        if self.teacher_sha256 is not None:
            extra["teacher_sha256"] = self.teacher_sha256
        save_checkpoint(self.out_dir / "best.pt", model_payload(self.model, self.step, **extra))

    def _log(self, record: dict[str, Any]) -> None:
        if not self.d.main:
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
        if self.d.main:
            print(f"\n{PROG}: {signal.Signals(signum).name}: finishing step {self.step + 1}, then saving "
                  f"{self.last_path} (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    def fit(self) -> int:
        """Train to train.max_steps. Returns the exit status (0 done, 130/143 stopped by a signal)."""
        t = self.config.train
        if self.d.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.out_dir.glob(".*.pt.*.tmp"):  # left by a run killed mid-save
                stale.unlink(missing_ok=True)
            with open(self.out_dir / "config.yaml", "w", encoding="utf-8") as f:
                yaml.safe_dump(json.loads(json.dumps(self.config.to_dict())), f, sort_keys=False)
            if t.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a killed run logged after its last checkpoint.
                self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step or None)
                if t.audio_every and self.valid_clips and self.step == 0:
                    sr = self.mel_config.sample_rate
                    self.writer.add_audio("valid/real", self.valid_clips[0][: int(t.audio_seconds * sr)].cpu(),
                                          0, sample_rate=sr)
            n = sum(p.numel() for p in self.model.parameters())
            print(f"{PROG}: {self.config.model}, {n:,} parameters, {self.device}, {t.precision}, "
                  f"{self.d.world_size} process(es) x batch {self.config.data.batch_size}, "
                  f"{len(self.train_set)} training / {len(self.valid_set or [])} validation clips; "
                  + (f"resumed at step {self.step}" if self.step else "from scratch") + f" -> {self.out_dir}",
                  file=sys.stderr, flush=True)

        self._pid = os.getpid()
        previous = {s: signal.signal(s, self._on_signal) for s in EXIT_SIGNAL}
        threads = torch.get_num_threads()
        if t.threads:
            torch.set_num_threads(t.threads)
        bar = None
        try:
            if self.d.main and t.progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=t.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
            return self._loop(bar)
        finally:
            torch.set_num_threads(threads)
            for s, h in previous.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()

    def _loop(self, bar: Any) -> int:
        t = self.config.train
        self.model.train()
        loader = self._loader()
        window: dict[str, float] = {}
        steps_in_window, tick = 0, time.perf_counter()
        while self.step < t.max_steps and self.stop_signal is None:
            self.sampler.set_state(self.epoch, self.batches_in_epoch * self.config.data.batch_size)
            for audio in loader:
                loss, gnorm, logs = self.train_step(audio)
                self.batches_in_epoch += 1
                self.losses.append(loss)
                for k, v in {"loss": loss, "grad_norm": gnorm, **logs}.items():
                    window[k] = window.get(k, 0.0) + v
                steps_in_window += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    elapsed = time.perf_counter() - tick
                    if self.d.enabled:  # log the mean over all processes' batches
                        keys = sorted(window)
                        sums = torch.tensor([window[k] for k in keys], dtype=torch.float64, device=self.device)
                        dist.all_reduce(sums)
                        window = dict(zip(keys, (sums / self.d.world_size).tolist()))
                    record = {"step": self.step, **{f"train/{k}": v / steps_in_window for k, v in window.items()},
                              "train/lr": self.lr_at(self.step - 1), "train/steps_per_s": steps_in_window / elapsed,
                              "train/samples_per_s": steps_in_window * audio.numel() * self.d.world_size / elapsed}
                    if self.device.type == "cuda":
                        record["train/gpu_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    self._log(record)
                    if bar is None and self.d.main and t.progress:
                        print(f"step {self.step}/{t.max_steps}  loss {record['train/loss']:.4f}  "
                              f"|g| {record['train/grad_norm']:.3g}  {record['train/steps_per_s']:.2f} steps/s",
                              file=sys.stderr, flush=True)
                    window, steps_in_window, tick = {}, 0, time.perf_counter()
                if t.valid_every and (self.step % t.valid_every == 0 or self.step == t.max_steps):
                    nll = self.validate()
                    if nll is not None:
                        self.valid_history.append((self.step, nll))
                        self._log({"step": self.step, "valid/nll": nll})
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.4f}", valid_nll=f"{nll:.4f}")
                        if nll < self.best_valid_nll:
                            self.best_valid_nll = nll
                            self.save_best(nll)
                if t.audio_every and self.step % t.audio_every == 0:
                    self.log_audio()
                if self.step % t.ckpt_every == 0 or self.step == t.max_steps or self.stop_signal is not None:
                    self.save()
                if self.step >= t.max_steps or self.stop_signal is not None:
                    break
            else:
                self.epoch += 1
                self.batches_in_epoch = 0
                continue
            break
        if self.stop_signal is not None:
            if self.d.main:
                print(f"{PROG}: stopped at step {self.step}; saved {self.last_path}; continue with --resume",
                      file=sys.stderr, flush=True)
            return EXIT_SIGNAL.get(self.stop_signal, 130)
        if self.d.main:
            best = f", best validation NLL {self.best_valid_nll:.4f} nats/sample" if self.valid_history else ""
            print(f"{PROG}: done: {self.step} steps{best}; {self.last_path}", file=sys.stderr, flush=True)
        return 0


# ----------------------------------------------------------------------------------------------------------------
# Entry points

def default_out_dir(config_path: str | None) -> Path:
    return Path("exp") / (Path(config_path).stem if config_path else "run")


def train(config: RunConfig | str | os.PathLike, out_dir: str | os.PathLike | None = None, resume: bool = False,
          overrides: Sequence[str] = (), model: torch.nn.Module | None = None) -> Trainer:
    """Train in this process (one process, no torchrun) and return the finished Trainer.

    `trainer.losses` holds every step's loss, `trainer.valid_history` (step, NLL) pairs, `trainer.model` the
    model. `model` replaces the one the config would build (its config must still be the config's).
    """
    config_path = None
    if not isinstance(config, RunConfig):
        config_path = str(config)
        config = load_config(config, overrides)
    out = Path(out_dir or config.train.out_dir or default_out_dir(config_path))
    trainer = Trainer(config, out, resume=resume, model=model)
    code = trainer.fit()
    trainer.exit_code = code
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=PROG, description="Train a wavflow model (WaveGlow, WaveNet teacher, IAF "
                            "student) as a YAML file describes; under torchrun, on every process.",
                            epilog="Overrides: section.key=value (e.g. train.max_steps=100 data.root=PATH "
                                   "model_config.n_flows=8); values are read as YAML. Exit status: 0 done, 1 loss "
                                   "became NaN/inf, 2 bad config or data, 130/143 stopped by SIGINT/SIGTERM "
                                   "after saving.")
    parser.add_argument("config", help="YAML run description (recipes/ljspeech/conf/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings applied over the file")
    parser.add_argument("--out-dir", help="output directory (default: train.out_dir, else exp/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output directory from its last.pt (starts afresh if none)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    config = load_config(args.config, args.overrides)
    out = Path(args.out_dir or config.train.out_dir or default_out_dir(args.config))
    d = Dist.from_env()
    if d.enabled:
        backend = "nccl" if config.train.device != "cpu" and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group(backend)
    try:
        trainer = Trainer(config, out, resume=args.resume, dist_env=d)
        try:
            return trainer.fit()
        except TrainingDiverged as e:
            where = (f"last good checkpoint: {trainer.last_path}" if trainer.last_path.exists()
                     else "no checkpoint was written")
            sys.stderr.write(f"{PROG}: error: {e}; stopped without saving ({where}); try a lower train.lr, "
                             f"train.grad_clip, or train.precision=fp32\n")
            return EXIT_DIVERGED
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(PROG, main)
