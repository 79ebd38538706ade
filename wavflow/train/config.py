"""A training run's configuration: the YAML sections, `key=value` overrides, and the checks of every value.

    model: waveglow                  # waveglow | wavenet | student
    model_config: {n_flows: 12}      # fields of the model's config dataclass; omitted ones keep the paper default
    mel: {}                          # MelConfig fields, or {preset: NAME, stats: FILE, ...}
                                     # (omit: Tacotron 2, design.md 1)
    teacher: null                    # student only: the trained WaveNet checkpoint to distil from
    data: {root: ..., n_valid: 20, segment_length: 16000, batch_size: 12, num_workers: 2}
    train: {lr: 1.0e-4, max_steps: 580000, precision: fp32, ...}   # every key: TrainConfig below

Keys and types are checked by wavflow.configs (the checker model configs use too); the value checks here are
the trainer's own. recipes/ljspeech/conf/*.yaml are commented examples.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import soundfile as sf
import yaml

from ..configs import check_fields, from_dict
from ..data import LJSpeech
from ..errors import WavflowError
from ..frontend import MelConfig
from ..melinput import load_stats
from ..models import config_from_dict, model_classes


@dataclass
class DataConfig:
    root: str = ""               # LJSpeech-layout root: metadata.csv + wavs/ID.wav|flac (relative to the working dir)
    n_valid: int = 20            # the LAST n_valid clips of metadata.csv are held out for validation
    segment_length: int = 16000  # samples per random training crop (0.73 s at 22050 Hz); shorter clips are zero-padded
                                 # (a segment longer than every training clip is refused)
    batch_size: int = 12         # crops per step PER PROCESS: the global batch is batch_size x world size
    num_workers: int = 2         # DataLoader worker processes per training process (0: load in the main process)
    cache_audio: bool = False    # keep decoded clips in memory (per worker; ~190 MB for the mini set, 7.6 GB full)
    device_resident: bool = False  # hold every training clip on the training device (int16, ~95 MB for the mini
                                 # set, 3.8 GB full) and cut the crops there: no DataLoader, no workers, the same
                                 # crops as the DataLoader path (wavflow.data.DeviceCrops); num_workers and
                                 # cache_audio are then unused


@dataclass
class TrainConfig:
    lr: float = 1e-4                          # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_decay_every: int = 0                   # multiply lr by lr_decay_gamma every this many steps (0: constant)
    lr_decay_gamma: float = 0.5
    warmup_steps: int = 0                     # raise lr linearly over the first this-many steps (0: none); a fresh
                                              # Adam on trained weights (--init) moves every weight by ~lr at first
    max_steps: int = 580_000                  # optimizer steps in total (a resumed run counts from its checkpoint)
    grad_clip: float = 0.0                    # clip the global gradient norm to this value (0: no clipping)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # autocast dtype; fp16 adds a GradScaler and
                                              # needs CUDA; auto: bf16 where the device has native bf16, else fp32
    device: str = "auto"                      # auto (cuda when available), cpu, cuda, cuda:N
    deterministic: bool = False               # deterministic GPU kernels (bit-for-bit resume on GPU; slower)
    compile: bool = False                     # torch.compile the training step on GPU (ignored on CPU)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # torch.compile's mode;
                                              # reduce-overhead replays the compiled step as CUDA graphs
    fused_adam: bool = True                   # torch's fused Adam kernel on CUDA (ignored on CPU)
    max_minutes: float = 0.0                  # wall-clock budget from process start, start-up, compilation and
                                              # validation included: the run validates and saves before it ends
                                              # (0: none); --max-minutes sets it
    budget_clock: Literal["wall", "cpu"] = "wall"  # what max_minutes counts: wall-clock time, or the process's
                                              # CPU time (equal budgets for runs sharing a busy machine)
    threads: int = 0                          # CPU threads for torch (0: torch's default, one per core); small
                                              # models on a shared CPU run faster with 1 (no spinning threads)
    adaptive_threads: bool = False            # CPU: train on 1 + the cores the other processes leave idle (at most
                                              # `threads`, 0: every core), on 1 while they are busy (threads.py)
    seed: int = 1234                          # model init, data order and crops, per-step noise
    log_every: int = 100                      # steps between logged training scalars
    valid_every: int = 1000                   # steps between validation NLL evaluations (0: never)
    valid_clips: int = 20                     # validate on at most this many held-out clips ...
    valid_max_seconds: float = 0.0            # ... each cut to its first this-many seconds (0: whole utterances)
    audio_every: int = 0                      # steps between TensorBoard audio samples (0: none)
    audio_seconds: float = 4.0                # length of the vocoded sample (the first validation clip's mel)
    infer_options: dict = field(default_factory=dict)  # passed to model.infer for samples, e.g. {sigma: 0.6}
    ckpt_every: int = 1000                    # steps between checkpoints (last.pt); one is also written at the end
    best_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # weights of best.pt: fp16/bf16 halve the file and are
                                              # upcast to float32 on load (last.pt always keeps float32)
    keep_every: int = 0                       # also keep a copy step-N.pt every this many steps (0: none)
    out_dir: str = ""                         # output directory ("" : exp/<config file name>); --out-dir overrides
    tensorboard: bool = True
    progress: bool = True                     # tqdm bar when stderr is a terminal (plain log lines otherwise)


@dataclass
class RunConfig:
    model: str = ""                                   # waveglow | wavenet | student
    model_config: dict = field(default_factory=dict)  # the model's config fields (unset: paper defaults)
    mel: dict = field(default_factory=dict)           # MelConfig fields; or preset: NAME (+ stats: FILE) and overrides
    teacher: str | None = None                        # student: path of the frozen teacher checkpoint
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
            raise WavflowError(f"{path}: expected a mapping of keys (model, data, train, ...), "
                               f"got {type(raw).__name__}")
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
    model_config = check_fields(model_config_class, raw.get("model_config") or {}, "model_config")
    # The config dataclass refuses every value that cannot build a model (by name, as a WavflowError): find
    # out now, before any data is read or a teacher loaded. Checks that need the mel come when the model is built.
    config_from_dict(model_config_class, model_config)
    mel = resolve_mel(raw.get("mel") or {})
    teacher = raw.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise WavflowError(f"teacher: expected a checkpoint path, got {teacher!r}")
    data = from_dict(DataConfig, raw.get("data") or {}, "data")
    train = from_dict(TrainConfig, raw.get("train") or {}, "train")
    config = RunConfig(model=model, model_config=model_config, mel=mel, teacher=teacher, data=data, train=train)
    check_values(config)
    return config


def resolve_mel(section: Any) -> dict[str, Any]:
    """The `mel:` section as complete MelConfig fields: `preset: NAME` (wavflow.frontend.PRESETS) with any field
    overridden, and `stats: FILE` for features normalised with dataset statistics (design.md section 8). The
    checkpoint stores the result, so a vocoder carries its convention whatever preset named it."""
    if not isinstance(section, dict):
        raise WavflowError(f"mel: expected a mapping of keys to values, got {section!r}")
    fields = dict(section)
    preset, stats = fields.pop("preset", None), fields.pop("stats", None)
    fields = check_fields(MelConfig, fields, "mel")
    if preset is None and stats is None:
        MelConfig(**fields)  # every value checked now, before any data is read
        return fields
    if preset is not None and not isinstance(preset, str):
        raise WavflowError(f"mel.preset: expected a preset name, got {preset!r}")
    config = MelConfig.preset(preset or "tacotron2", **fields)
    if stats is not None:
        if not isinstance(stats, str):
            raise WavflowError(f"mel.stats: expected a statistics file path, got {stats!r}")
        config = config.with_stats(*load_stats(stats, config.n_mels))
    return config.to_dict()


def check_values(c: RunConfig) -> None:
    """Refuse values of the right type that no run can use (the Trainer checks again: a RunConfig made in code)."""
    d, t = c.data, c.train
    positive = {"data.batch_size": d.batch_size, "data.segment_length": d.segment_length,
                "train.max_steps": t.max_steps, "train.log_every": t.log_every, "train.ckpt_every": t.ckpt_every}
    non_negative = {"data.n_valid": d.n_valid, "data.num_workers": d.num_workers, "train.valid_every": t.valid_every,
                    "train.valid_clips": t.valid_clips, "train.valid_max_seconds": t.valid_max_seconds,
                    "train.audio_every": t.audio_every, "train.keep_every": t.keep_every,
                    "train.grad_clip": t.grad_clip, "train.lr_decay_every": t.lr_decay_every,
                    "train.weight_decay": t.weight_decay, "train.threads": t.threads, "train.seed": t.seed,
                    "train.max_minutes": t.max_minutes, "train.warmup_steps": t.warmup_steps}
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


def resample_warning(dataset: LJSpeech) -> str | None:
    """A line to print when the clips are not at the mel's sample rate (they are resampled as they load), from
    the first clip's header."""
    rate = dataset.mel_config.sample_rate
    if not dataset.paths:
        return None
    try:
        found = sf.info(str(dataset.paths[0])).samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None  # loading names the problem
    if found == rate:
        return None
    return (f"warning: {dataset.paths[0].name} is at {found} Hz; every clip is resampled to mel.sample_rate="
            f"{rate} Hz as it loads (resample the dataset once beforehand to save the time)")


def check_segment_length(dataset: LJSpeech, segment_length: int, root: str) -> None:
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


def default_out_dir(config_path: str | os.PathLike | None) -> Path:
    return Path("exp") / (Path(config_path).stem if config_path else "run")
