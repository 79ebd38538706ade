"""Autoregressive vs parallel sampling: `python -m wavflow.benchmark` (design.md section 6).

    python -m wavflow.benchmark                                  # paper-size configs, random weights, CPU
    python -m wavflow.benchmark --quick --json out.json --plot out.png      # tiny configs, ~1 min (CI)
    python -m wavflow.benchmark --device cuda --dtype fp16 --ar-max 0.5     # GPU; AR rows at short lengths only
    python -m wavflow.benchmark --checkpoint waveglow=wg.pt wavenet=wn.pt student=st.pt

Every model vocodes the same mel (examples/LJ002-0020.npy, tiled or cropped to each length) in one process, so
the ratios between rows hold on a noisy, shared machine. The rows are listed once, in ENTRIES:

    wavenet_naive    WaveNet teacher recomputing the receptive field for every sample (O(T x receptive field)):
                     run at one short length (--naive-length, 0.1 s) with the cached WaveNet beside it, and at
                     every length only with --naive-all; at paper size it takes minutes per second of audio
    wavenet_cached   WaveNet teacher with per-layer queues (a numba-compiled loop on CPU, torch steps replayed
                     as a CUDA graph on GPU)
    wavenet_batched  the cached generator on 16 utterances at once (--batch; 16 different stretches of the mel,
                     each of the row's length); samples/s is aggregate over the batch
    waveglow         WaveGlow, one parallel pass (sigma 0.6)
    student          the IAF student, one parallel pass

Protocol. Weight norm is folded into the weights first, as for any inference. At each length every parallel
model is warmed up once at that length (allocator and oneDNN/cuDNN plans are shape-specific); an
autoregressive generator does the same work per sample at any length, so it is warmed up once on a short clip
(which also compiles the numba loop; naive WaveNet: its first 64 samples, ~0.1 s each at paper size on a
CPU). Then the rows are timed round-robin, `--repeats` times (>= 3), and the median is quoted: interleaving
spreads a neighbour's load over all rows alike. The clock is time.perf_counter, read after
torch.cuda.synchronize() on a GPU. Every call uses the same seed, so every run does the same work.

What the columns mean:
- samples/s: audio samples produced per wall second (batched: all utterances together).
  RTF = wall seconds / audio seconds produced (< 1 is faster than real time); x real time = 1 / RTF.
- speed-up: samples/s over the cached WaveNet's at the same length.
- FLOPs/sample: COUNTED, with torch.utils.flop_counter's per-op formulas (matmuls and convolutions; element-wise
  work such as tanh, exp and sampling is not counted), divided by the audio samples of the call. The parallel
  models are counted over their warm-up call at that length. Naive WaveNet is counted over its own calls
  stopped after a few samples; its step cost is linear in the window it recomputes, so the total follows
  exactly (see `Runner.naive_flops`; a test checks it against counting every step). The cached generator's numba loop is
  invisible to a counter, so it is credited with the count of the teacher-forced torch forward
  `model(audio, mel)` over the same length: the same causal-conv, conditioning, residual, skip and output
  matmuls per sample and the same mel upsampling, which is exactly the arithmetic the queues evaluate.
- GFLOP/s = FLOPs/sample x samples/s; % peak divides it by the matmul peak this run measured on this device in
  the precision the row computes in (best of several large square matmuls, see `matmul_peak`).
- peak memory: working memory of the call above what was resident before it (weights excluded).
  GPU: torch.cuda.max_memory_allocated() - memory_allocated() before the call (tensors only, not the caching
  allocator's reserve). CPU: growth of the resident set, VmHWM - VmRSS from /proc/self/status, with the
  high-water mark reset (/proc/self/clear_refs) and freed heap returned to the OS (malloc_trim) before the
  call: it counts every allocation (torch, numpy, numba), not only tensors. Where /proc cannot be reset it
  falls back to ru_maxrss growth, which only shows new process-wide highs, and says so in the JSON.
- Precision (--dtype bf16/fp16): WaveGlow and the student run natively in that dtype, weights and mel cast, as
  NVIDIA runs its fp16 WaveGlow (the 1x1 inverses are computed in float64 and cast, where NVIDIA uses fp32);
  WaveNet runs under torch.autocast. The numba loop of the cached WaveNet always computes in fp32 (the table's
  JSON says which precision each row ran in).
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from . import resources
from .cli import ArgumentParser, run_cli
from .errors import WavflowError
from .frontend import MelConfig

PROG = "python -m wavflow.benchmark"

DEFAULT_LENGTHS = (0.5, 1.0, 2.0, 4.0)
QUICK_LENGTHS = (0.05, 0.25)
NAIVE_LENGTH = 0.1       # seconds; naive WaveNet at paper size costs ~4 GFLOP per sample
BATCH = 16               # utterances in the batched WaveNet row (--batch)
AR_WARMUP_SECONDS = 0.05  # the one warm-up of each autoregressive generator
WAVEGLOW_SIGMA = 0.6     # design.md section 3: the inference default
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------------------
# The rows: one place lists every model the benchmark compares and how it is called.

def _wavenet_naive(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.generate(mel, method="naive", generator=generator, progress=False)


def _wavenet_cached(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.generate(mel, method="cached", generator=generator, progress=False)


def _wavenet_batched(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # All utterances of one row have the same length, so `lengths` is the full length for each: the row
    # measures the batching itself (one compiled loop over all utterances), not padding.
    lengths = [mel.shape[-1] * model.mel_config.hop_length] * mel.shape[0]
    return model.generate(mel, method="cached", generator=generator, lengths=lengths, progress=False)


def _waveglow(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.infer(mel, sigma=WAVEGLOW_SIGMA, generator=generator)


def _student(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.infer(mel, generator=generator)


@dataclass(frozen=True)
class Entry:
    name: str                  # row key (table, JSON, --models)
    family: str                # model_type of the model it runs (wavflow.models.REGISTRY)
    label: str                 # as printed
    call: Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor]  # (model, mel [B, 80, F], generator) -> audio
    autoregressive: bool = False
    batch: int = 1             # utterances per call
    naive: bool = False        # runs at --naive-length only, unless --naive-all
    flops: str = "call"        # how FLOPs/sample are counted: "call" (over the warm-up call), "naive" (naive
                               # generation's own calls, see Runner.naive_flops), "teacher_forced" (the torch
                               # forward with the same matmuls: the numba loop is invisible to a counter)


ENTRIES: tuple[Entry, ...] = (
    Entry("wavenet_naive", "wavenet", "WaveNet naive", _wavenet_naive, autoregressive=True, naive=True,
          flops="naive"),
    Entry("wavenet_cached", "wavenet", "WaveNet cached", _wavenet_cached, autoregressive=True,
          flops="teacher_forced"),
    Entry("wavenet_batched", "wavenet", "WaveNet batched", _wavenet_batched, autoregressive=True,
          batch=BATCH, flops="teacher_forced"),
    Entry("waveglow", "waveglow", "WaveGlow", _waveglow),
    Entry("student", "student", "IAF student", _student),
)
ENTRY_BY_NAME = {e.name: e for e in ENTRIES}
FAMILIES = ("wavenet", "waveglow", "student")
# How --dtype bf16/fp16 is applied. The parallel models run natively in that dtype: weights and mel cast, the
# way NVIDIA runs its fp16 WaveGlow (its 1x1 inverses are computed in float64 and then cast, as NVIDIA computes
# them in fp32); their fast sampling paths accumulate with in-place matmuls, which torch.autocast leaves alone.
# WaveNet runs under torch.autocast: its generators keep fp32 sample buffers and queues between the matmuls.
CAST_FAMILIES = ("waveglow", "student")
REFERENCE = "wavenet_cached"  # the speed-up column divides by this row's samples/s


def family_available(family: str) -> bool:
    """Whether this checkout has the model's module (the three are written in parallel; a missing one is skipped)."""
    from .models import REGISTRY

    return importlib.util.find_spec(REGISTRY[family][0]) is not None


# ----------------------------------------------------------------------------------------------------------------
# Command line

def parse_lengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise WavflowError(f"--lengths: expected comma-separated seconds such as 0.5,1,2,4, got '{text}'") from None
    if not values:
        raise WavflowError("--lengths: no lengths given")
    bad = [v for v in values if not (math.isfinite(v) and 0 < v <= 600)]
    if bad:
        raise WavflowError(f"--lengths: each length must be in (0, 600] seconds, got {bad[0]:g}")
    return tuple(sorted(set(values)))


def parse_family_pairs(pairs: Sequence[str], flag: str) -> dict[str, str]:
    """['waveglow=PATH', ...] -> {family: value}; one bad pair is a one-line error naming it."""
    out: dict[str, str] = {}
    for pair in pairs:
        family, sep, value = pair.partition("=")
        if not sep or not value:
            raise WavflowError(f"{flag}: expected FAMILY=VALUE with FAMILY one of {', '.join(FAMILIES)}, got '{pair}'")
        if family not in FAMILIES:
            raise WavflowError(f"{flag}: unknown model family '{family}'; known: {', '.join(FAMILIES)}")
        out[family] = value
    return out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Time WaveNet (naive, cached, batched), WaveGlow and the IAF student "
                       "on one mel across audio lengths (design.md section 6).")
    p.add_argument("--lengths", default=None, help="comma-separated audio lengths in seconds "
                   f"(default {','.join(f'{v:g}' for v in DEFAULT_LENGTHS)}; --quick: "
                   f"{','.join(f'{v:g}' for v in QUICK_LENGTHS)})")
    p.add_argument("--models", default=None, help="comma-separated rows to run (default all): "
                   + ", ".join(e.name for e in ENTRIES))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="precision of the torch models "
                   "(bf16/fp16 via torch.autocast)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); the cached "
                   "WaveNet splits a batch over as many worker threads")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row after the warm-up; the median is "
                   "quoted (at least 3)")
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="FAMILY=PATH",
                   help="benchmark trained models: waveglow=PATH wavenet=PATH student=PATH (any subset)")
    for family in FAMILIES:
        p.add_argument(f"--{family}", metavar="PATH", default=None, help=f"{family} checkpoint (same as "
                       f"--checkpoint {family}=PATH)")
    p.add_argument("--config", nargs="+", default=[], metavar="PRESET|FAMILY=PRESET",
                   help="configs for models without a checkpoint (random weights): 'paper' (default) or 'tiny' "
                   "for all, or FAMILY=NAME where NAME is paper, tiny, another preset of the config class, or a "
                   "YAML file of config keys")
    p.add_argument("--mel", default=None, help="mel .npy (80 x F) or an audio file to take the mel from "
                   "(default: the example mel that ships with wavflow, LJ002-0020)")
    p.add_argument("--naive-length", type=float, default=None, metavar="SECONDS",
                   help=f"the one length naive WaveNet runs at, with the cached WaveNet beside it (default "
                   f"{NAIVE_LENGTH:g} s; --quick: the shortest length): it costs O(T * receptive field)")
    p.add_argument("--naive-all", action="store_true", help="also run naive WaveNet at every length of the sweep "
                   "(slow: minutes per second of audio at paper size on a CPU)")
    p.add_argument("--ar-max", type=float, default=None, metavar="SECONDS",
                   help="run the cached and batched WaveNet rows only at lengths up to this (default: every "
                   "length); on a GPU their per-sample kernel launches make long lengths take minutes")
    p.add_argument("--cap", nargs="+", default=[], metavar="MODEL=SECONDS",
                   help="run a row only at lengths up to SECONDS, e.g. --cap wavenet_batched=1 (16 utterances of "
                   "4 s take minutes per run on 2 CPU cores)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"utterances in the batched WaveNet row (default {BATCH})")
    p.add_argument("--quick", action="store_true", help="tiny configs, short lengths, smaller matmul probe: "
                   "under a minute on 2 CPU cores (what CI runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the sampling noise")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows (and the run's settings) as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG: wall time vs audio length, log-log")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


@dataclass
class Settings:
    lengths: tuple[float, ...]
    entries: tuple[Entry, ...]
    skipped: dict[str, str]                 # entry name -> why it is not run
    device: torch.device
    dtype: str
    threads: int
    repeats: int
    checkpoints: dict[str, str]
    configs: dict[str, str]                 # family -> preset name or YAML path
    config_objects: dict[str, Any]          # family -> its config dataclass, for families without a checkpoint
    naive_length: float
    naive_all: bool
    caps: dict[str, float]                  # row name -> longest length it runs at
    batch: int
    quick: bool
    seed: int
    mel: str | None
    json: str | None
    plot: str | None
    quiet: bool


def resolve_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise WavflowError(f"--device: expected cpu, cuda or cuda:N, got '{text}'") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise WavflowError(f"--device: expected cpu, cuda or cuda:N, got '{text}'")
    if not torch.cuda.is_available():
        raise WavflowError(f"--device {text}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False)")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise WavflowError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def parse_args(argv: Sequence[str] | None) -> Settings:
    args = build_parser().parse_args(argv)
    lengths = parse_lengths(args.lengths) if args.lengths is not None else (QUICK_LENGTHS if args.quick
                                                                            else DEFAULT_LENGTHS)
    if args.repeats < 3:
        raise WavflowError(f"--repeats: at least 3 timed runs (design.md section 6), got {args.repeats}")
    if args.batch < 1:
        raise WavflowError(f"--batch: must be at least 1, got {args.batch}")
    naive_length = args.naive_length if args.naive_length is not None else (min(lengths) if args.quick
                                                                            else NAIVE_LENGTH)
    if not (math.isfinite(naive_length) and 0 < naive_length <= 600):
        raise WavflowError(f"--naive-length: must be in (0, 600] seconds, got {naive_length:g}")
    if args.ar_max is not None and not (math.isfinite(args.ar_max) and args.ar_max > 0):
        raise WavflowError(f"--ar-max: must be a positive number of seconds, got {args.ar_max:g}")
    caps = {e.name: args.ar_max for e in ENTRIES if e.autoregressive and not e.naive and args.ar_max is not None}
    for item in args.cap:
        name, sep, value = item.partition("=")
        if name not in ENTRY_BY_NAME or not sep:
            raise WavflowError(f"--cap: expected MODEL=SECONDS with MODEL one of {', '.join(ENTRY_BY_NAME)}, "
                               f"got '{item}'")
        try:
            caps[name] = float(value)
        except ValueError:
            raise WavflowError(f"--cap {item}: '{value}' is not a number of seconds") from None
        if not (math.isfinite(caps[name]) and caps[name] > 0):
            raise WavflowError(f"--cap {item}: must be a positive number of seconds")
    if args.threads is not None and args.threads < 1:
        raise WavflowError(f"--threads: must be at least 1, got {args.threads}")

    checkpoints = parse_family_pairs(args.checkpoint, "--checkpoint")
    for family in FAMILIES:
        path = getattr(args, family)
        if path is not None:
            if family in checkpoints and checkpoints[family] != path:
                raise WavflowError(f"--{family} and --checkpoint {family}=... name different files")
            checkpoints[family] = path
    for family, path in checkpoints.items():  # before any model is built: a typo fails in a second
        if not Path(path).is_file():
            raise WavflowError(f"{path}: no such checkpoint file (--checkpoint {family})")

    configs = {family: "tiny" if args.quick else "paper" for family in FAMILIES}
    for item in args.config:
        if "=" in item:
            configs.update(parse_family_pairs([item], "--config"))
        elif item in ("paper", "tiny"):
            configs = {family: item for family in FAMILIES}
        else:
            raise WavflowError(f"--config: expected paper, tiny or FAMILY=NAME, got '{item}'")

    if args.models is None:
        wanted = [e.name for e in ENTRIES]
        explicit = False
    else:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in ENTRY_BY_NAME]
        if unknown or not wanted:
            raise WavflowError(f"--models: unknown model '{unknown[0] if unknown else args.models}'; known: "
                               f"{', '.join(ENTRY_BY_NAME)}")
        explicit = True
    entries, skipped = [], {}
    for name in wanted:
        entry = ENTRY_BY_NAME[name]
        if family_available(entry.family) or entry.family in checkpoints:
            entries.append(entry)
        elif explicit:
            raise WavflowError(f"--models {name}: this checkout has no {entry.family} model "
                               f"(wavflow/models/{entry.family}.py is missing)")
        else:
            skipped[name] = f"wavflow/models/{entry.family}.py is not in this checkout"
    if not entries:
        raise WavflowError("no model to benchmark: none of the model modules is in this checkout")

    config_objects = {e.family: preset_config(e.family, configs[e.family]) for e in entries
                      if e.family not in checkpoints}  # a bad preset fails here, before any work
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return Settings(lengths=lengths, entries=tuple(sorted(entries, key=ENTRIES.index)), skipped=skipped,
                    device=device, dtype=args.dtype, threads=torch.get_num_threads(), repeats=args.repeats,
                    checkpoints=checkpoints, configs=configs, config_objects=config_objects,
                    naive_length=naive_length, naive_all=args.naive_all,
                    caps=caps,
                    batch=args.batch, quick=args.quick,
                    seed=args.seed, mel=args.mel, json=args.json, plot=args.plot, quiet=args.quiet)


# ----------------------------------------------------------------------------------------------------------------
# Models

def preset_config(family: str, name: str) -> Any:
    """The config dataclass of `family` for a preset name ('paper' = the defaults) or a YAML file of its keys."""
    from .models import config_from_dict, model_classes

    _, config_class = model_classes(family)
    if name == "paper":
        return config_class()
    if name.endswith((".yaml", ".yml")):
        import yaml

        path = Path(name)
        if not path.is_file():
            raise WavflowError(f"{path}: no such config file (--config {family})")
        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict):
            raise WavflowError(f"{path}: expected a mapping of config keys")
        # A training recipe keeps the model's keys under model: (or model_config:); a bare file is the keys.
        for key in ("model", "model_config"):
            if isinstance(d.get(key), dict):
                d = d[key]
                d = d.get("config", d) if isinstance(d.get("config"), dict) else d
                break
        d = {k: v for k, v in d.items() if k != "type"}
        return config_from_dict(config_class, d)
    maker = getattr(config_class, name, None)
    if maker is None:  # a module-level preset function such as tiny_config()
        module = sys.modules[config_class.__module__]
        maker = getattr(module, f"{name}_config", None) or getattr(module, name, None)
    if not callable(maker):
        raise WavflowError(f"--config {family}={name}: {config_class.__name__} has no preset '{name}' "
                           "(use paper, tiny, a preset classmethod, or a .yaml file)")
    config = maker()
    if not isinstance(config, config_class):
        raise WavflowError(f"--config {family}={name}: preset returned {type(config).__name__}, "
                           f"not {config_class.__name__}")
    return config


@dataclass
class Loaded:
    model: torch.nn.Module
    source: str       # checkpoint path or "random weights, <preset> config"
    parameters: int   # as defined (weight norm counted), before folding it for inference


def load_model(family: str, settings: Settings) -> Loaded:
    from .checkpoint import load
    from .models import build_model

    if family in settings.checkpoints:
        path = settings.checkpoints[family]
        model = load(path, "cpu")
        if getattr(model, "model_type", None) != family:
            raise WavflowError(f"{path}: holds a {getattr(model, 'model_type', 'unknown')} model, "
                               f"passed as --checkpoint {family}")
        source = path
    else:
        torch.manual_seed(settings.seed)
        model = build_model(family, settings.config_objects[family], MelConfig())
        source = f"random weights, {settings.configs[family]} config"
        # Zero-initialised output layers (WaveGlow's WN end conv) would make untrained flows the identity and
        # skip nothing, but they could let an implementation short-cut; give every parameter a small random
        # value so the work done is that of a trained model.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 and not torch.any(p):
                    p.normal_(0.0, 1e-3)
    parameters = sum(p.numel() for p in model.parameters())
    if hasattr(model, "remove_weight_norm"):
        model.remove_weight_norm()
    model = model.to(settings.device).eval()
    if family in CAST_FAMILIES and settings.dtype != "fp32":
        model = model.to(DTYPES[settings.dtype])
    for p in model.parameters():
        p.requires_grad_(False)
    return Loaded(model, source, parameters)


# ----------------------------------------------------------------------------------------------------------------
# The mel input

def default_mel(path: str | None) -> tuple[np.ndarray, str]:
    """The one mel every row vocodes, [80, F] float32, and where it came from."""
    from .frontend import load_mel, mel_spectrogram

    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WavflowError(f"{p}: no such file (--mel)")
        if p.suffix == ".npy":
            return load_mel(p), str(p)
        from .audio import load_audio

        audio = load_audio(p, MelConfig().sample_rate)
        return mel_spectrogram(audio[None])[0].numpy().astype(np.float32), f"mel of {p}"
    example = resources.example_mel()
    return load_mel(example), example.name


def frames_for(seconds: float, mel_config: MelConfig = MelConfig()) -> int:
    return max(1, round(seconds * mel_config.sample_rate / mel_config.hop_length))


def tile_mel(mel: np.ndarray, frames: int, offset: int = 0) -> np.ndarray:
    """[80, F] -> [80, frames]: the mel repeated end to end from frame `offset`, cropped to `frames`."""
    reps = -(-(offset + frames) // mel.shape[1])
    return np.ascontiguousarray(np.tile(mel, (1, reps))[:, offset:offset + frames])


def mel_batch(mel: np.ndarray, frames: int, batch: int) -> torch.Tensor:
    """[batch, 80, frames]: utterance i starts i/batch of the way through the mel, so no two are the same."""
    step = mel.shape[1] / batch
    return torch.from_numpy(np.stack([tile_mel(mel, frames, int(i * step)) for i in range(batch)]))


# ----------------------------------------------------------------------------------------------------------------
# Measurement

def _mv_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    return 2 * a.shape[0] * a.shape[1]


def _addbmm_flops(mats1: torch.Tensor, mats2: torch.Tensor) -> int:
    return 2 * mats1.shape[0] * mats1.shape[1] * mats1.shape[2] * mats2.shape[2]


# Matrix-vector and summed batched products, which torch's table leaves out: (op, formula over its two factors).
_EXTRA_FLOPS = {
    torch.ops.aten.mv: lambda args: _mv_flops(args[0], args[1]),
    torch.ops.aten.addmv: lambda args: _mv_flops(args[1], args[2]),
    torch.ops.aten.addbmm: lambda args: _addbmm_flops(args[1], args[2]),
    torch.ops.aten.dot: lambda args: 2 * args[0].numel(),
}


class FlopCount(TorchDispatchMode):
    """Sum of the FLOPs of every matmul and convolution dispatched while active.

    The per-op formulas are torch.utils.flop_counter's (those of FlopCounterMode), applied also to the in-place
    variants (addmm_, baddbmm_: FlopCounterMode counts them as zero, and the fast WaveGlow and student paths
    accumulate with them), plus matrix-vector products. No module tracking: counting stays cheap per op.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        name = packet.__name__
        if name.endswith("_") and not name.startswith("_"):  # in place: same arithmetic as the plain op
            packet = getattr(torch.ops.aten, name[:-1], packet)
        formula = flop_registry.get(packet)
        if formula is not None:
            plain_kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            self.total += int(formula(*args, **plain_kwargs, out_val=out))
        elif packet in _EXTRA_FLOPS:
            self.total += int(_EXTRA_FLOPS[packet](args))
        return out


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn(): (its result, FLOPs of the matmuls and convolutions it ran)."""
    counter = FlopCount()
    with counter:
        out = fn()
    return out, counter.total


class Memory:
    """Peak working memory of one call (see the module docstring for exactly what is measured)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else self._cpu_kind()
        self._libc = None
        if device.type == "cpu":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                pass

    @staticmethod
    def _cpu_kind() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return "cpu peak RSS growth (VmHWM reset)"
        except OSError:
            return "cpu ru_maxrss growth (process-wide high-water mark)"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"/proc/self/status has no {key}")

    def _maxrss(self) -> int:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)  # freed heap back to the OS, so the growth below is this call's
        if "VmHWM" in self.kind:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = self._status("VmRSS")
        else:
            self.base = self._maxrss()

    def stop(self) -> int:
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        peak = self._status("VmHWM") if "VmHWM" in self.kind else self._maxrss()
        return max(0, peak - self.base)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    """GFLOP/s of the best of several large square matmuls on `device` in `dtype`: the roof the rows are held to."""
    n = (8192 if not quick else 4096) if device.type == "cuda" else (1024 if quick else 2048)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    best = math.inf
    for i in range(3 if quick else 6):
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if i:  # the first call pays for thread start-up and kernel selection
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def precision_context(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


@dataclass
class Row:
    model: str
    label: str
    family: str
    source: str
    parameters: int
    length_s: float               # per utterance
    batch: int
    samples: int                  # produced per call (all utterances)
    times_s: list[float]
    median_s: float
    samples_per_s: float
    rtf: float                    # wall s / audio s produced
    x_real_time: float
    speedup_vs_cached: float | None
    speedup_ref_length_s: float | None    # length of the cached row divided by (differs where it was capped)
    flops_per_sample: float
    flops_method: str
    gflops: float
    pct_peak: float               # of peak_gflops
    peak_gflops: float            # the measured matmul peak in the precision this row computes in
    peak_mem_bytes: int
    dtype: str
    note: str = ""


class Runner:
    """Holds the models, the mel and the clock; times every row of one length round-robin."""

    def __init__(self, settings: Settings, log: Callable[[str], None]):
        self.s = settings
        self.log = log
        self.device = settings.device
        self.memory = Memory(self.device)
        self.mel, self.mel_source = default_mel(settings.mel)
        self.models: dict[str, Loaded] = {}
        for family in dict.fromkeys(e.family for e in settings.entries):
            self.models[family] = load_model(family, settings)  # a bad checkpoint fails here, before any output
        for family, m in self.models.items():
            log(f"{family}: {m.source}, {m.parameters:,} parameters")
        self.warm: set[str] = set()

    def precision(self, entry: Entry | None = None):
        if entry is not None and entry.family in CAST_FAMILIES:
            return nullcontext()  # weights already in the dtype (load_model)
        return precision_context(self.device, self.s.dtype)

    def generator(self, entry: Entry | None = None) -> torch.Generator:
        # The same noise on every run: each timed call does exactly the same work. WaveNet draws its noise on the
        # CPU whatever the device (so a GPU reproduces CPU output), which needs a CPU generator.
        device = "cpu" if entry is not None and entry.family == "wavenet" else self.device
        return torch.Generator(device=device).manual_seed(self.s.seed)

    def batch(self, entry: Entry) -> int:
        return self.s.batch if entry.batch > 1 else 1

    def mel_for(self, entry: Entry, seconds: float) -> torch.Tensor:
        mel = mel_batch(self.mel, frames_for(seconds), self.batch(entry)).to(self.device)
        return mel.to(DTYPES[self.s.dtype]) if entry.family in CAST_FAMILIES else mel

    def call(self, entry: Entry, mel: torch.Tensor) -> torch.Tensor:
        model = self.models[entry.family].model
        with torch.no_grad(), self.precision(entry):
            return entry.call(model, mel, self.generator(entry))

    def check_audio(self, entry: Entry, audio: torch.Tensor, mel: torch.Tensor) -> None:
        expected = (mel.shape[0], mel.shape[-1] * MelConfig().hop_length)
        if tuple(audio.shape) != expected:
            raise RuntimeError(f"{entry.name} returned audio of shape {tuple(audio.shape)}, expected {expected}")
        if not torch.isfinite(audio.float()).all():
            self.log(f"warning: {entry.name} returned non-finite audio (its timing is kept)")

    def warm_up(self, entry: Entry, mel: torch.Tensor) -> tuple[float, str]:
        """Warm the row up and return its FLOPs per sample and how they were counted.

        A parallel model is warmed up at every length by a counted call at that length (counting adds
        dispatch overhead, so it never happens in a timed call). An autoregressive generator does the same
        work per sample at any length: it is warmed up once, on a short clip (the numba loop compiles then).
        """
        if entry.flops == "call":
            audio, flops = count_flops(lambda: self.call(entry, mel))
            synchronize(self.device)
            self.check_audio(entry, audio, mel)
            return flops / audio.numel(), "counted over the call"
        if entry.name not in self.warm:
            short = mel[..., :frames_for(AR_WARMUP_SECONDS)]
            if entry.flops == "naive":  # a naive step costs ~0.1 s at paper size on a CPU: 64 of them will do
                model = self.models[entry.family].model
                with torch.no_grad(), self.precision(entry):
                    model.generate(short, method="naive", generator=self.generator(entry),
                                   lengths=[64] * short.shape[0], progress=False)
            else:
                self.check_audio(entry, self.call(entry, short), short)
            synchronize(self.device)
            self.warm.add(entry.name)
        if entry.flops == "naive":
            return self.naive_flops(entry, mel), "counted over naive calls, linear past the receptive field"
        return self.teacher_forced_flops(entry, mel), "teacher-forced torch forward"

    def naive_flops(self, entry: Entry, mel: torch.Tensor) -> float:
        """FLOPs per sample of naive generation over this mel, counted over the generator's own calls.

        Step t runs the stack over the window of the last w_t = min(t + 1, R) samples (R the receptive field)
        and the output head on the newest, so its cost is a * w_t + b, on top of the mel upsampling U done once.
        Counting is slow (about 5x the call), so instead of counting T steps this counts the calls that stop
        after 1, 2, 3, 4 and 8 samples (`lengths`): three give U, a and b, the other two must agree exactly,
        and then the total for T samples is U + a * sum_t w_t + b * T. Should they disagree (a generator of
        another shape), the calls stopping after R and R + 16 samples are counted: every step past R costs
        the same. A test checks both against counting every step.
        """
        model = self.models[entry.family].model
        B, T = mel.shape[0], mel.shape[-1] * model.mel_config.hop_length
        R = int(getattr(model, "receptive_field", T))

        def counted(n: int) -> int:
            with torch.no_grad(), self.precision(entry):
                return count_flops(lambda: model.generate(mel, method="naive", generator=self.generator(entry),
                                                          lengths=[n] * B, progress=False))[1]

        def window_sum(n: int) -> int:  # sum over t < n of min(t + 1, R)
            return n * (n + 1) // 2 if n <= R else R * (R + 1) // 2 + (n - R) * R

        if T <= 16:
            return counted(T) / (B * T)
        if R > 8:
            c1, c2, c3, c4, c8 = (counted(n) for n in (1, 2, 3, 4, 8))
            a = (c3 - c2) - (c2 - c1)
            b = (c2 - c1) - 2 * a
            u = c1 - a - b
            if c4 - c3 == 4 * a + b and c8 == u + a * window_sum(8) + b * 8:
                return (u + a * window_sum(T) + b * T) / (B * T)
        m = 16
        if T <= R + m:
            return counted(T) / (B * T)
        first, second = counted(R), counted(R + m)
        return (first + (T - R) * (second - first) / m) / (B * T)

    def teacher_forced_flops(self, entry: Entry, mel: torch.Tensor) -> float:
        """FLOPs per sample of WaveNet's teacher-forced forward on one utterance of this length.

        The cached generator performs these very matmuls step by step (causal conv taps, conditioning
        projections, residual, skip, output head; the mel upsampler once up front), so this is its count.
        """
        model = self.models[entry.family].model
        mel = mel[:1]
        samples = mel.shape[-1] * model.mel_config.hop_length
        audio = torch.rand(1, samples, generator=self.generator(), device=self.device) * 1.6 - 0.8
        with torch.no_grad(), self.precision(entry):
            _, flops = count_flops(lambda: model(audio, mel))
        return flops / samples

    def time_once(self, entry: Entry, mel: torch.Tensor) -> tuple[float, int]:
        self.memory.start()
        synchronize(self.device)
        t0 = time.perf_counter()
        audio = self.call(entry, mel)
        synchronize(self.device)
        elapsed = time.perf_counter() - t0
        peak = self.memory.stop()
        self.check_audio(entry, audio, mel)
        return elapsed, peak

    def run_length(self, seconds: float, entries: Sequence[Entry], peaks: dict[str, float]) -> list[Row]:
        hop, sr = MelConfig().hop_length, MelConfig().sample_rate
        mels = {e.name: self.mel_for(e, seconds) for e in entries}
        flops = {}
        for e in entries:
            self.log(f"{seconds:g} s  warm-up {e.name}")
            flops[e.name] = self.warm_up(e, mels[e.name])
        times: dict[str, list[float]] = {e.name: [] for e in entries}
        mem_peaks: dict[str, int] = {e.name: 0 for e in entries}
        for r in range(self.s.repeats):
            for e in entries:
                elapsed, peak = self.time_once(e, mels[e.name])
                times[e.name].append(elapsed)
                mem_peaks[e.name] = max(mem_peaks[e.name], peak)
                self.log(f"{seconds:g} s  {e.name} run {r + 1}/{self.s.repeats}: {elapsed:.3f} s")
        rows = []
        for e in entries:
            loaded = self.models[e.family]
            batch, frames = mels[e.name].shape[0], mels[e.name].shape[-1]
            samples = batch * frames * hop
            median = statistics.median(times[e.name])
            per_sample, method = flops[e.name]
            sps = samples / median
            audio_s = samples / sr
            gflops = per_sample * sps / 1e9
            rows.append(Row(model=e.name, label=e.label, family=e.family, source=loaded.source,
                            parameters=loaded.parameters, length_s=frames * hop / sr, batch=batch, samples=samples,
                            times_s=times[e.name], median_s=median, samples_per_s=sps, rtf=median / audio_s,
                            x_real_time=audio_s / median, speedup_vs_cached=None, speedup_ref_length_s=None,
                            flops_per_sample=per_sample,
                            flops_method=method, gflops=gflops, pct_peak=100.0 * gflops / self.peak_for(e, peaks),
                            peak_gflops=self.peak_for(e, peaks),
                            peak_mem_bytes=mem_peaks[e.name], dtype=self.row_dtype(e), note=self.note(e, batch)))
        return rows

    def peak_for(self, entry: Entry, peaks: dict[str, float]) -> float:
        return peaks["fp32" if self.row_dtype(entry).startswith("fp32") else self.s.dtype]

    def row_dtype(self, entry: Entry) -> str:
        if entry.flops == "teacher_forced" and self.device.type == "cpu":
            return "fp32 (numba loop)"
        if self.s.dtype == "fp32" or entry.family in CAST_FAMILIES:
            return self.s.dtype
        return f"{self.s.dtype} autocast"

    def note(self, entry: Entry, batch: int) -> str:
        if entry.naive:
            return "naive: O(T x receptive field), run at one short length"
        if batch > 1:
            return f"{batch} utterances, aggregate samples/s"
        return ""


def plan(settings: Settings) -> list[tuple[float, list[Entry]]]:
    """(length, rows) in the order they run: every row at every sweep length, except naive WaveNet, which runs at
    --naive-length (with the cached WaveNet beside it, so their ratio is taken at one length) and, with
    --naive-all, at every sweep length too."""
    naive_at = {settings.naive_length} | (set(settings.lengths) if settings.naive_all else set())
    out = []
    for seconds in sorted(set(settings.lengths) | {settings.naive_length}):
        entries = []
        for e in settings.entries:
            if e.naive:
                keep = seconds in naive_at
            elif e.name in settings.caps and seconds > settings.caps[e.name] + 1e-9:
                keep = False
            elif seconds in settings.lengths:
                keep = True
            else:  # the extra naive length: only the reference goes with it
                keep = e.name == REFERENCE
            if keep:
                entries.append(e)
        if seconds not in settings.lengths and not any(e.naive for e in entries):
            continue  # naive not asked for: no extra length
        if entries:
            out.append((seconds, entries))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report

def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def format_table(rows: Sequence[Row]) -> str:
    header = ("model", "parameters", "MFLOP/sample", "length s", "median s", "samples/s", "RTF", "x real time",
              "speed-up vs cached", "GFLOP/s", "% peak", "peak mem MiB")
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    for r in rows:
        label = r.label + (" *" if r.note.startswith("naive") else "")
        cells = (label, f"{r.parameters / 1e6:.2f} M", _fmt(r.flops_per_sample / 1e6), f"{r.length_s:.2f}",
                 _fmt(r.median_s), _fmt(r.samples_per_s), _fmt(r.rtf), _fmt(r.x_real_time),
                 _fmt(r.speedup_vs_cached) + ("" if r.speedup_ref_length_s in (None, r.length_s) else " †"),
                 _fmt(r.gflops), _fmt(r.pct_peak, 2), f"{r.peak_mem_bytes / 2**20:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_speedups(rows: Sequence[Row]) -> None:
    """samples/s over the cached WaveNet's at the same length; where the cached row was capped (--cap, --ar-max),
    over its longest one: its samples/s hardly depends on the length (a fixed cost per sample)."""
    refs = sorted((r for r in rows if r.model == REFERENCE), key=lambda r: r.length_s)
    if not refs:
        return
    for r in rows:
        ref = next((c for c in refs if abs(c.length_s - r.length_s) < 1e-9), None)
        if ref is None and r.length_s > refs[-1].length_s:
            ref = refs[-1]
        if ref is not None:
            r.speedup_vs_cached = r.samples_per_s / ref.samples_per_s
            r.speedup_ref_length_s = ref.length_s


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """The ratios the model issues ask for, where the rows to form them were run."""
    by = {(r.model, round(r.length_s, 3)): r for r in rows}
    out = []
    for r in rows:
        if r.model == "wavenet_naive":
            c = by.get(("wavenet_cached", round(r.length_s, 3)))
            if c is not None:
                out.append(f"WaveNet cached / naive at {r.length_s:.2f} s: {c.samples_per_s / r.samples_per_s:,.1f}x")
    for r in rows:
        if r.model in ("student", "waveglow", "wavenet_batched") and r.speedup_vs_cached is not None:
            against = ("" if r.speedup_ref_length_s == r.length_s
                       else f" (cached WaveNet at {r.speedup_ref_length_s:.2f} s)")
            out.append(f"{r.label} / WaveNet cached at {r.length_s:.2f} s{against}: {r.speedup_vs_cached:,.1f}x")
    return out


def write_plot(path: str, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    lengths = sorted({round(r.length_s, 2) for r in rows})
    for entry in ENTRIES:
        mine = sorted((r for r in rows if r.model == entry.name), key=lambda r: r.length_s)
        if not mine:
            continue
        label = mine[0].label
        if mine[0].batch > 1:
            label += f" ({mine[0].batch} utterances per call)"
        if mine[0].note.startswith("naive") and len(mine) == 1:
            label += " (one short length only)"
        ax.plot([r.length_s for r in mine], [r.median_s for r in mine], marker="o", label=label)
    lo, hi = min(lengths), max(lengths)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="real time (wall = audio)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(lengths, [f"{float(f'{v:.2g}'):g}" for v in lengths])  # 4.005 s (whole frames) reads 4
    ax.minorticks_off()
    ax.set_xlabel("audio length per utterance (s)")
    ax.set_ylabel("wall time, median (s)")
    ax.set_title(f"wavflow sampling time: {meta['machine']}\n{meta['device']}, {meta['dtype']}, "
                 f"torch threads: {meta['torch_threads']}", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    log = (lambda msg: None) if settings.quiet else (lambda msg: print(f"[benchmark] {msg}", file=sys.stderr,
                                                                       flush=True))
    for out in (settings.json, settings.plot):  # refuse an unwritable output before minutes of timing
        if out is not None and Path(out).parent.exists() is False:
            raise WavflowError(f"{out}: its directory does not exist")
    runner = Runner(settings, log)
    log(f"measuring the {settings.dtype} matmul peak on {settings.device}")
    peaks = {settings.dtype: matmul_peak(settings.device, DTYPES[settings.dtype], settings.quick)}
    if settings.dtype != "fp32" and settings.device.type == "cpu" and any(e.flops == "teacher_forced"
                                                                          for e in settings.entries):
        peaks["fp32"] = matmul_peak(settings.device, torch.float32, settings.quick)  # for the numba rows
    peak = peaks[settings.dtype]
    rows: list[Row] = []
    for seconds, entries in plan(settings):
        rows += runner.run_length(seconds, entries, peaks)
    add_speedups(rows)
    meta = {
        "machine": machine_description(settings.device),
        "device": str(settings.device),
        "dtype": settings.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if settings.device.type == "cuda" else None,
        "matmul_peak_gflops": peak,
        "matmul_peak_gflops_by_dtype": peaks,
        "repeats": settings.repeats,
        "lengths_s": list(settings.lengths),
        "mel": runner.mel_source,
        "models": {f: {"source": m.source, "parameters": m.parameters} for f, m in runner.models.items()},
        "skipped": settings.skipped,
        "memory": runner.memory.kind,
        "quick": settings.quick,
        "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"wavflow benchmark: {meta['machine']}, device {meta['device']}, {settings.dtype}, "
          f"{meta['torch_threads']} torch threads, torch {torch.__version__}")
    print("matmul peak measured: " + ", ".join(f"{v:,.0f} GFLOP/s ({k})" for k, v in peaks.items())
          + f"; mel: {runner.mel_source}; median of {settings.repeats} runs after a warm-up")
    precisions = sorted({(r.label, r.dtype) for r in rows})
    if settings.dtype != "fp32":
        print("precision: " + ", ".join(f"{label} {dtype}" for label, dtype in precisions))
    for family, m in runner.models.items():
        print(f"{family}: {m.source}, {m.parameters:,} parameters")
    print()
    print(format_table(rows))
    print()
    if any(r.note.startswith("naive") for r in rows):
        print("* naive WaveNet recomputes the receptive field for every sample (O(T x receptive field)); it runs at "
              "--naive-length only (--naive-all for every length); past the first receptive field its cost per "
              "sample does not depend on the length, so its ratio to the cached row holds at any length.")
    if any(r.speedup_ref_length_s not in (None, r.length_s) for r in rows):
        print("† over the cached WaveNet at the longest length it ran (capped below): its samples/s hardly depends "
              "on the length.")
    for name, cap in settings.caps.items():
        if any(e.name == name for e in settings.entries):
            print(f"{ENTRY_BY_NAME[name].label} ran only at lengths up to {cap:g} s (--cap / --ar-max).")
    for name, why in settings.skipped.items():
        print(f"skipped {name}: {why}")
    for line in summary_lines(rows):
        print(line)
    if settings.json is not None:
        Path(settings.json).write_text(json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]},
                                                  indent=1))
    if settings.plot is not None:
        write_plot(settings.plot, rows, meta)
    return 0


if __name__ == "__main__":
    run_cli(PROG, main)
