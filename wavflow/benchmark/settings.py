"""The benchmark's settings: the command line's arguments (parsed by wavflow.commands.benchmark) checked into one
`Settings` before any model is built."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import WavflowError
from .entries import ENTRIES, ENTRY_BY_NAME, FAMILIES, ONNX_ROWS, Entry

DEFAULT_LENGTHS = (0.5, 1.0, 2.0, 4.0)
QUICK_LENGTHS = (0.05, 0.25)
NAIVE_LENGTH = 0.1       # seconds: naive WaveNet recomputes its whole receptive field for every sample


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


@dataclass
class Settings:
    lengths: tuple[float, ...]
    entries: tuple[Entry, ...]
    device: torch.device
    dtype: str
    threads: int | None                     # torch CPU threads to run with (None: leave torch's)
    repeats: int
    cpu_time: bool
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


def check_settings(args: argparse.Namespace) -> Settings:
    """Check every argument of the command line (wavflow.commands.benchmark.build_parser) and build the configs;
    no side effect on torch (the run applies --threads)."""
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

    configs = dict.fromkeys(FAMILIES, "tiny" if args.quick else "paper")
    for item in args.config:
        if "=" in item:
            configs.update(parse_family_pairs([item], "--config"))
        elif item in ("paper", "tiny"):
            configs = dict.fromkeys(FAMILIES, item)
        else:
            raise WavflowError(f"--config: expected paper, tiny or FAMILY=NAME, got '{item}'")

    if args.models is None:
        entries = [e for e in ENTRIES if e.default]
    else:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in ENTRY_BY_NAME]
        if unknown or not wanted:
            raise WavflowError(f"--models: unknown model '{unknown[0] if unknown else args.models}'; known: "
                               f"{', '.join(ENTRY_BY_NAME)}")
        entries = [ENTRY_BY_NAME[name] for name in dict.fromkeys(wanted)]

    config_objects = {e.family: preset_config(e.family, configs[e.family]) for e in entries
                      if e.family not in checkpoints}  # a bad preset fails here, before any work
    device = benchmark_device(args.device)
    onnx_rows = [e.name for e in entries if e.name in ONNX_ROWS]
    if onnx_rows:
        from .onnx_rows import available

        if not available():
            raise WavflowError(f"--models {onnx_rows[0]}: needs onnx and onnxruntime (pip install 'wavflow[onnx]')")
        if device.type != "cpu" or args.dtype != "fp32":
            raise WavflowError(f"--models {onnx_rows[0]}: onnxruntime's rows run on the CPU in fp32 (drop "
                               f"--device/--dtype, or run them separately)")
    if args.dtype == "bf16":
        from ..device import check_dtype

        check_dtype(args.dtype, device)  # emulated bf16 would time the emulation
    return Settings(lengths=lengths, entries=tuple(sorted(entries, key=ENTRIES.index)),
                    device=device, dtype=args.dtype, threads=args.threads,
                    repeats=args.repeats, cpu_time=args.cpu_time, checkpoints=checkpoints, configs=configs,
                    config_objects=config_objects, naive_length=naive_length, naive_all=args.naive_all, caps=caps,
                    batch=args.batch, quick=args.quick, seed=args.seed, mel=args.mel, json=args.json,
                    plot=args.plot, quiet=args.quiet)


def benchmark_device(name: str) -> torch.device:
    """wavflow's one device resolver, with a bare 'cuda' pinned to its index so the JSON names the card timed."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def preset_config(family: str, name: str) -> Any:
    """The config dataclass of `family` for a preset: 'paper' (the defaults), a preset classmethod of the config
    class ('tiny', 'parallel_wavenet', ...), or a YAML file: a training recipe (its model_config: mapping, as
    recipes/ljspeech/conf/*.yaml) or a bare mapping of config keys."""
    from ..models import config_from_dict, model_classes

    _, config_class = model_classes(family)
    if name == "paper":
        return config_class()
    if name.endswith((".yaml", ".yml")):
        import yaml

        path = Path(name)
        if not path.is_file():
            raise WavflowError(f"{path}: no such config file (--config {family})")
        keys = yaml.safe_load(path.read_text()) or {}
        if not isinstance(keys, dict):
            raise WavflowError(f"{path}: expected a mapping of config keys")
        if isinstance(keys.get("model_config"), dict):
            keys = keys["model_config"]
        return config_from_dict(config_class, keys)
    maker = None if name.startswith("_") else getattr(config_class, name, None)
    if not callable(maker):
        raise WavflowError(f"--config {family}={name}: {config_class.__name__} has no preset '{name}' "
                           "(use paper, tiny, a preset classmethod, or a .yaml file)")
    config = maker()
    if not isinstance(config, config_class):
        raise WavflowError(f"--config {family}={name}: preset returned {type(config).__name__}, "
                           f"not {config_class.__name__}")
    return config
