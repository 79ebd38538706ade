"""`wavflow evaluate CHECKPOINT [...] --data-root LJSPEECH`: held-out likelihood and copy-synthesis quality of
checkpoints, with the recordings as the ceiling and Griffin-Lim as the floor (the metrics: wavflow.evaluate).

    wavflow evaluate checkpoints/waveglow.pt checkpoints/wavenet.pt --data-root LJSpeech-1.1 \\
        --json eval.json --plot eval.png --report eval-report --metrics pesq,stoi,dnsmos,pitch

The markdown table goes to stdout, progress to stderr. Bad input: one line on stderr, exit status 2, nothing
written.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

from ..cli import ArgumentParser, number, run_cli
from ..device import resolve_device
from ..errors import WavflowError
from ..evaluate import (
    _json_safe,
    evaluate_checkpoint,
    evaluate_references,
    load_clips,
    load_model,
    markdown_table,
    plot_spectrograms,
    recording_pitch,
)
from ..fileio import atomic_write, check_writable_dir
from ..frontend import MelConfig
from ..metrics import OPTIONAL_METRICS, require_metrics
from ..report import write_report

PROG = "wavflow evaluate"


def _writable_output(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise WavflowError(f"{flag} {p}: is a directory, expected a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        existing = next((a for a in parent.parents if a.exists()), None) if not parent.exists() else parent
        if existing is not None and not existing.is_dir():  # a file where the path needs a directory
            raise WavflowError(f"{flag} {p}: {existing} is not a directory")
        raise WavflowError(f"{flag} {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WavflowError(f"{flag} {p}: directory {parent} is not writable")
    return p


def build_parser(prog: str = PROG) -> ArgumentParser:
    p = ArgumentParser(prog=prog,
                       description="Held-out NLL and copy-synthesis quality of wavflow checkpoints, with "
                                   "Griffin-Lim as the floor.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="wavflow (or NVIDIA WaveGlow) checkpoints")
    p.add_argument("--names", default=None, help="comma-separated row names, one per checkpoint (default: the "
                   "file names; DIR/best for the trainer's best.pt)")
    p.add_argument("--data-root", required=True, help="LJSpeech root (metadata.csv + wavs/)")
    p.add_argument("--n-valid", type=int, default=20, help="the last N clips of metadata.csv are the validation set")
    p.add_argument("--max-clips", type=number(int, above=0, name="--max-clips"), default=None,
                   help="evaluate only the first N validation clips")
    p.add_argument("--max-seconds", type=number(float, above=0, name="--max-seconds"), default=None,
                   help="crop every clip to its first S seconds (for NLL and copy-synthesis alike)")
    p.add_argument("--nll-max-seconds", type=float, default=1.0,
                   help="the student's NLL scores the first S seconds of each clip (its inversion runs one sample "
                        "at a time); 0: whole clips. WaveGlow and the teacher always score whole clips "
                        "(use --max-seconds to cut every model's audio alike). Default 1")
    p.add_argument("--no-nll", action="store_true", help="skip the likelihood")
    p.add_argument("--metrics", default="",
                   help="optional metrics, comma-separated: pesq,stoi,dnsmos,pitch or 'all' (pesq, stoi and "
                        "dnsmos need wavflow[metrics]; pitch: GPE, VDE and F0 RMSE against the recording)")
    p.add_argument("--griffin-lim-iters", type=int, default=60, help="Griffin-Lim iterations; 0 leaves its row out")
    p.add_argument("--sigma", type=float, default=None,
                   help="WaveGlow's noise std at inference (default: each checkpoint's own)")
    p.add_argument("--temperature", type=float, default=None,
                   help="WaveNet teacher / student sampling temperature (their default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (clip i uses seed + i)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write every figure, per clip too, as JSON")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="log-mel spectrograms of the first clip")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write an HTML report into DIR (created if missing): DIR/index.html with the metrics table, "
                        "and per clip each system's audio, spectrogram and (with --metrics pitch) F0 contour, as "
                        "files beside it; it opens from the file system, with no server and no network")
    return p


def _writable_report_dir(path: str | None) -> Path | None:
    """--report's directory, refused in one line before any work where nothing can be written there."""
    if path is None:
        return None
    try:
        check_writable_dir(path)
    except WavflowError as e:
        raise WavflowError(f"--report {e}") from None
    return Path(path)


def run(argv: Sequence[str] | None, prog: str = PROG) -> int:
    """Parse `argv` and evaluate; every argument and checkpoint is checked before the first clip is scored."""
    args = build_parser(prog).parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  (the table alone goes to stdout)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if metrics == ["all"]:
        metrics = list(OPTIONAL_METRICS)
    unknown = [m for m in metrics if m not in OPTIONAL_METRICS]
    if unknown:
        raise WavflowError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: "
                           f"{', '.join(OPTIONAL_METRICS)}, all")
    if args.griffin_lim_iters < 0:
        raise WavflowError(f"--griffin-lim-iters must be >= 0, got {args.griffin_lim_iters}")
    if args.n_valid < 1:
        raise WavflowError(f"--n-valid must be at least 1, got {args.n_valid}")
    for name in ("sigma", "temperature"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise WavflowError(f"--{name} must be a finite number >= 0, got {value}")
    if not (math.isfinite(args.nll_max_seconds) and args.nll_max_seconds >= 0):
        raise WavflowError(f"--nll-max-seconds must be >= 0 (0: whole clips), got {args.nll_max_seconds}")
    json_path = _writable_output(args.json, "--json")
    plot_path = _writable_output(args.plot, "--plot")
    report_dir = _writable_report_dir(args.report)
    paths = [Path(c) for c in args.checkpoints]
    names = [n.strip() for n in args.names.split(",")] if args.names is not None else [None] * len(paths)
    if len(names) != len(paths) or not all(n is None or n for n in names):
        raise WavflowError(f"--names: give one non-empty name per checkpoint ({len(paths)}), got '{args.names}'")
    if len(set(names)) != len(names) and args.names is not None:
        raise WavflowError(f"--names: names must differ, got '{args.names}'")
    if args.names is not None and {"real", f"griffin-lim-{args.griffin_lim_iters}"} & set(names):
        raise WavflowError("--names: 'real' and 'griffin-lim-N' name the reference rows")
    for path in paths:
        if not path.is_file():
            raise WavflowError(f"{path}: no such checkpoint file")
    optional = require_metrics(metrics)
    device = resolve_device(args.device)

    # Every checkpoint is read before any work, so a bad one costs seconds, not an evaluation.
    models = [load_model(path, device) for path in paths]
    # The metric mel is the design.md section 1 mel at the models' sample rate, which they must share.
    rates = {m.model.mel_config.sample_rate for m in models}
    if len(rates) > 1:
        raise WavflowError(f"the checkpoints run at different sample rates ({', '.join(map(str, sorted(rates)))} Hz); "
                           "evaluate them separately")
    metric_mel = MelConfig(sample_rate=rates.pop())
    root = Path(args.data_root)
    clips = load_clips(root, args.n_valid, args.max_clips, args.max_seconds, metric_mel)
    seconds = sum(c.audio.shape[0] for c in clips) / metric_mel.sample_rate
    log(f"evaluate: {len(clips)} validation clip(s) ({seconds:.1f} s) from {root}, device {device}")

    t0 = time.perf_counter()
    pitch = recording_pitch(clips, metric_mel, optional)
    systems = evaluate_references(clips, metric_mel, optional, args.griffin_lim_iters, args.seed, pitch)
    log(f"  references done in {time.perf_counter() - t0:.1f} s")
    hop = metric_mel.hop_length
    nll_cap = (None if args.nll_max_seconds == 0
               else max(4, int(args.nll_max_seconds * metric_mel.sample_rate) // hop) * hop)
    # Each model gets the options its infer() takes: sigma reaches WaveGlow, temperature the teacher and student.
    infer_options = {k: v for k, v in (("sigma", args.sigma), ("temperature", args.temperature)) if v is not None}
    taken: set[str] = {s.name for s in systems}
    for checkpoint, name in zip(models, names, strict=True):
        t0 = time.perf_counter()
        result = evaluate_checkpoint(checkpoint, clips, device=device, metric_mel=metric_mel, optional=optional,
                                     nll_cap=nll_cap, skip_nll=args.no_nll, seed=args.seed,
                                     infer_options=infer_options, log=log, name=name, reference_pitch=pitch)
        base, k = result.name, 2
        while result.name in taken:  # two checkpoints with one file name: keep the rows apart
            result.name, k = f"{base}-{k}", k + 1
        taken.add(result.name)
        systems.append(result)
        log(f"  {result.name} done in {time.perf_counter() - t0:.1f} s")

    rows = [s.summary() for s in systems]
    print(markdown_table(rows))
    report = {
        "format": "wavflow-evaluate", "version": 1,
        "data_root": str(root), "n_valid": args.n_valid,
        "clips": [{"id": c.id, "seconds": c.audio.shape[0] / metric_mel.sample_rate,
                   "full_seconds": c.full_samples / metric_mel.sample_rate} for c in clips],
        "sample_rate": metric_mel.sample_rate,
        "metrics": ["nll_nats", "logmel_l1", "mrstft", *metrics],
        "settings": {"max_clips": args.max_clips, "max_seconds": args.max_seconds,
                     "student_nll_max_seconds": None if nll_cap is None else nll_cap / metric_mel.sample_rate,
                     "griffin_lim_iters": args.griffin_lim_iters, "seed": args.seed, "sigma": args.sigma,
                     "temperature": args.temperature,
                     "device": str(device), "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version()},
        "systems": rows,
    }
    if json_path is not None:
        text = json.dumps(_json_safe(report), indent=1)
        atomic_write(json_path, lambda f: f.write((text + "\n").encode()))
        log(f"  wrote {json_path}")
    if plot_path is not None:
        plot_spectrograms(plot_path, clips[0], systems, metric_mel)
        log(f"  wrote {plot_path}")
    if report_dir is not None:
        index = write_report(report_dir, report, {s.name: s.audio for s in systems}, metric_mel.sample_rate,
                             metric_mel, {s.name: s.pitch for s in systems} if "pitch" in optional else None)
        log(f"  wrote {index}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> NoReturn:
    """`wavflow evaluate`: bad input is one line on stderr and exit status 2."""
    run_cli(prog, lambda args: run(args, prog), argv)
