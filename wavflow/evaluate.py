"""Evaluate vocoders on held-out LJSpeech clips: likelihood, copy-synthesis distances, Griffin-Lim as the floor.

    python -m wavflow.evaluate checkpoints/waveglow.pt checkpoints/wavenet.pt --data-root LJSpeech-1.1 \\
        --json eval.json --plot eval.png --report eval-report --metrics pesq,stoi,dnsmos,pitch

For every checkpoint, on the validation clips (the last --n-valid clips of metadata.csv, as wavflow.data splits):

  nll         held-out negative log-likelihood, nats per audio sample on the scale of design.md section 2
              (model.log_likelihood), pooled: total nats / total samples. Exact, in one parallel pass, for
              WaveGlow and the WaveNet teacher, on the whole clips. The IAF student's density of real audio
              needs its flows inverted one sample at a time, far slower than a parallel pass, so for the
              student only the first --nll-max-seconds of each clip are scored (default 1; 0: whole clips);
              the JSON's nll_seconds_per_clip says what each row used.
  copy-synthesis from the ground-truth mel (model.infer), scored against the real recording, mean over clips:
    logmel_l1     mean |log-mel(vocoded) - log-mel(real)| over bands and frames (natural log, design.md section 1 mel)
    mrstft_sc     spectral convergence, multi-resolution (wavflow.losses.stft_loss, 3 resolutions)
    mrstft_logmag L1 distance of log STFT magnitudes, same resolutions; mrstft = sc + logmag
    pesq_wb       PESQ wide band (ITU-T P.862.2), both signals resampled to 16 kHz        [--metrics pesq]
    stoi          short-time objective intelligibility at 22.05 kHz                        [--metrics stoi]
    dnsmos_*      DNSMOS P.835 (sig, bak, ovrl) and P.808 of the vocoded audio alone        [--metrics dnsmos]
    gpe           gross pitch error: share of the frames voiced in both that are > 20% off  [--metrics pitch]
    vde           voicing decision error: share of the frames voiced in one of the two      [--metrics pitch]
    f0_rmse_cents RMS of 1200 log2(F0 / F0 of the recording), frames voiced in both          [--metrics pitch]

The pitch metrics hold the pYIN track of the vocoded audio (wavflow.pitch.track_pitch, 65-600 Hz, one frame per
frame of the metric mel) against the recording's, tracked once per clip; gpe and f0_rmse_cents are NaN (null in
the JSON) for a clip with no frame voiced in both, and the means leave such clips out.

Two reference rows come first: the real recordings themselves (the ceiling: distances 0, their own DNSMOS) and
Griffin-Lim from the same mel (the floor a neural vocoder has to beat): the log-mel is inverted to a linear
magnitude with librosa's non-negative least squares against the Slaney mel basis, then --griffin-lim-iters
iterations of Griffin-Lim (hop 256, window 1024) estimate the phase.

The optional metrics other than pitch (librosa only) need `pip install 'wavflow[metrics]'` (pesq, pystoi,
speechmos + onnxruntime; DNSMOS's ONNX models ship inside speechmos, so everything runs offline). Every metric is
a function of wavflow.metrics; this module runs them over the checkpoints and writes the table, the JSON and the
figure.

--report DIR writes an HTML report (wavflow.report) that opens from the file system: DIR/index.html with the
metrics table, the settings and the checkpoints, and per clip each system's audio (FLAC), log-mel spectrogram and,
with --metrics pitch, F0 contour over the recording's. Its audio is the very audio that was scored, and its pitch
contours the very tracks the pitch metrics compared.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .checkpoint import file_sha256, load_with_step
from .cli import ArgumentParser, check_writable_dir, number, resolve_device, run_cli
from .data import Clip, LJSpeech, validation_clips
from .errors import WavflowError
from .fileio import atomic_write
from .frontend import MelConfig, mel_spectrogram
from .metrics import METRIC_KEYS, OPTIONAL_METRICS, clip_metrics, griffin_lim, pooled_nll, require_metrics
from .pitch import PitchSettings, PitchTrack
from .report import write_report

# ----------------------------------------------------------------------------------------------------------------
# Validation clips

def load_clips(root: Path, n_valid: int, max_clips: int | None, max_seconds: float | None,
               mel_config: MelConfig) -> list[Clip]:
    """The validation clips (wavflow.data's split: the last `n_valid` lines of metadata.csv, never trained on),
    read at the mel config's rate, each cut to at most `max_seconds` and to a whole number of hops."""
    clips = validation_clips(LJSpeech(root, split="valid", n_valid=n_valid, mel_config=mel_config), max_clips,
                             max_seconds)
    hop = mel_config.hop_length
    for clip in clips:  # F = n / hop + 1 frames vocode to n + hop samples, of which the first n are compared
        if clip.audio.shape[0] < 4 * hop:
            raise WavflowError(f"{clip.path}: {clip.full_samples} samples, too short to evaluate (need {4 * hop})")
    return clips


def recording_pitch(clips: list[Clip], metric_mel: MelConfig, optional: dict[str, Callable]) -> dict[str, PitchTrack]:
    """The recordings' pitch tracks [F] by clip id, at the metric mel's frames: tracked once, held against every
    system's audio. Empty unless the pitch metrics were asked for."""
    if "pitch" not in optional:
        return {}
    settings = PitchSettings.for_mel(metric_mel)
    return {clip.id: optional["pitch"](clip.audio, settings) for clip in clips}


# ----------------------------------------------------------------------------------------------------------------
# Systems: the recordings, Griffin-Lim and each checkpoint

@dataclass
class SystemResult:
    name: str
    kind: str  # "reference" | "griffin-lim" | "vocoder"
    per_clip: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    nll_nats: float | None = None
    nll_samples: int = 0
    synthesis_seconds: float = 0.0
    audio_seconds: float = 0.0
    # By clip id, what was scored: the audio [T] (CPU float32) and, with the pitch metrics, its pitch track [F].
    # The figure and the HTML report show these very tensors.
    audio: dict[str, torch.Tensor] = field(default_factory=dict)
    pitch: dict[str, PitchTrack] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "kind": self.kind, **self.info}
        row["nll_nats"] = self.nll_nats
        row["nll_bits"] = None if self.nll_nats is None else self.nll_nats / math.log(2)
        row["nll_samples"] = self.nll_samples if self.nll_nats is not None else None
        for key in METRIC_KEYS:
            values = [c[key] for c in self.per_clip if c.get(key) is not None]
            finite = [v for v in values if math.isfinite(v)]
            row[key] = float(np.mean(finite)) if finite else (math.nan if values else None)
        row["rtf"] = self.synthesis_seconds / self.audio_seconds if self.kind == "vocoder" and self.audio_seconds else None
        row["per_clip"] = self.per_clip
        return row


@dataclass
class Checkpoint:
    """A checkpoint under evaluation: its model, ready to vocode, and what the report says of the file."""
    path: Path
    model: torch.nn.Module
    step: int | None
    sha256: str
    parameters: int  # as trained (weight norm's g and v counted apart, as the checkpoint stores them)


def load_model(path: Path, device: torch.device) -> Checkpoint:
    """A checkpoint as a model in eval mode with weight norm folded, plus the training step it holds."""
    model, step = load_with_step(path, device)
    parameters = sum(p.numel() for p in model.parameters())
    model.remove_weight_norm()
    return Checkpoint(path, model, step, file_sha256(path), parameters)


def evaluate_checkpoint(checkpoint: Checkpoint, clips: list[Clip], *, device: torch.device, metric_mel: MelConfig,
                        optional: dict[str, Callable], nll_cap: int | None, skip_nll: bool, seed: int,
                        infer_options: dict[str, Any], log: Callable[[str], None],
                        name: str | None = None, reference_pitch: dict[str, PitchTrack] | None = None
                        ) -> SystemResult:
    """`reference_pitch`: the recordings' tracks by clip id (recording_pitch), so the pitch metrics track only
    the vocoded audio."""
    path, model = checkpoint.path, checkpoint.model
    sr = model.mel_config.sample_rate
    pitch = reference_pitch or {}
    result = SystemResult(name or default_name(path), "vocoder", info={
        "checkpoint": str(path), "sha256": checkpoint.sha256, "model_type": model.model_type,
        "parameters": checkpoint.parameters, "step": checkpoint.step,
    })
    if not skip_nll:
        t0 = time.perf_counter()
        # a likelihood of real audio that runs step by step (Vocoder.sequential_likelihood) scores the clips' starts
        cap = nll_cap if model.sequential_likelihood else None
        total, samples = pooled_nll(model, [c.audio for c in clips], max_samples=cap, device=device,
                                    labels=[c.path for c in clips])
        result.nll_nats, result.nll_samples = total / samples, samples
        result.info["nll_seconds_per_clip"] = None if cap is None else cap / sr
        result.info["nll_wall_seconds"] = time.perf_counter() - t0
        log(f"  {path.stem}: NLL {result.nll_nats:.4f} nats/sample over {result.nll_samples} samples")
    options = {k: v for k, v in infer_options.items() if k in model.infer_options}
    result.info["infer_options"] = options
    # One short untimed call first, so the RTF leaves out one-off costs (numba compilation, allocator warm-up).
    with torch.no_grad():
        model.infer(mel_spectrogram(clips[0].audio[: 16 * model.mel_config.hop_length].to(device)[None],
                                    model.mel_config), generator=torch.Generator(device=device).manual_seed(seed),
                    **options)
    for i, clip in enumerate(clips):
        mel = mel_spectrogram(clip.audio.to(device)[None], model.mel_config)
        gen = torch.Generator(device=device).manual_seed(seed + i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            audio = model.infer(mel, generator=gen, **options)
        if device.type == "cuda":
            torch.cuda.synchronize()
        result.synthesis_seconds += time.perf_counter() - t0
        result.audio_seconds += audio.shape[-1] / sr
        if audio.shape[-1] != mel.shape[-1] * model.mel_config.hop_length:
            raise RuntimeError(f"{path.stem}: infer returned {audio.shape[-1]} samples for {mel.shape[-1]} frames")
        audio = audio[0, : clip.audio.shape[0]].float().cpu()
        if not torch.isfinite(audio).all():
            raise WavflowError(f"{path}: the model vocoded non-finite samples for {clip.id}; is the checkpoint trained?")
        score_clip(result, clip, audio, metric_mel, optional, pitch.get(clip.id))
    return result


def score_clip(result: SystemResult, clip: Clip, audio: torch.Tensor, metric_mel: MelConfig,
               optional: dict[str, Callable], reference_pitch: PitchTrack | None) -> None:
    """Score one system's audio [T] of a clip against the recording (clip_metrics) into `result.per_clip`, and
    keep the audio and, with the pitch metrics, its pitch track [F] in `result`. The track is made here and handed
    to clip_metrics, so pYIN runs once per system and clip; the recordings' own row (`audio` is `clip.audio`)
    reuses `reference_pitch`, the recording's track [F]."""
    track = None
    if "pitch" in optional:
        settings = PitchSettings.for_mel(metric_mel)
        if audio is clip.audio and reference_pitch is None:
            reference_pitch = optional["pitch"](audio, settings)
        track = reference_pitch if audio is clip.audio else optional["pitch"](audio.detach().float().cpu(), settings)
        result.pitch[clip.id] = track
    result.per_clip.append({"id": clip.id, **clip_metrics(audio, clip.audio, metric_mel.sample_rate, metric_mel,
                                                           optional, reference_pitch=reference_pitch,
                                                           estimate_pitch=track)})
    result.audio[clip.id] = audio


def default_name(path: Path) -> str:
    """A checkpoint's row name: its file name, with its directory's where the file name says nothing of the
    model (the trainer's best.pt / last.pt / step-N.pt)."""
    generic = path.stem in ("best", "last") or path.stem.startswith("step-")
    return f"{path.parent.name}/{path.stem}" if generic and path.parent.name else path.stem


def evaluate_references(clips: list[Clip], metric_mel: MelConfig, optional: dict[str, Callable], gl_iters: int,
                        seed: int, reference_pitch: dict[str, PitchTrack] | None = None) -> list[SystemResult]:
    """The recordings row and the Griffin-Lim row; `reference_pitch` as for evaluate_checkpoint."""
    pitch = reference_pitch or {}
    real = SystemResult("real", "reference", info={"description": "the recordings themselves"})
    for clip in clips:
        score_clip(real, clip, clip.audio, metric_mel, optional, pitch.get(clip.id))
    systems = [real]
    if gl_iters > 0:
        gl = SystemResult(f"griffin-lim-{gl_iters}", "griffin-lim",
                          info={"description": f"librosa NNLS mel inversion + {gl_iters} Griffin-Lim iterations",
                                "iterations": gl_iters})
        for i, clip in enumerate(clips):
            mel = mel_spectrogram(clip.audio[None], metric_mel)[0]
            audio = griffin_lim(mel, metric_mel, gl_iters, clip.audio.shape[0], seed=seed + i)
            score_clip(gl, clip, audio, metric_mel, optional, pitch.get(clip.id))
        systems.append(gl)
    return systems


# ----------------------------------------------------------------------------------------------------------------
# Report: markdown table, JSON, figure

MARKDOWN_COLUMNS = (("nll_nats", "NLL (nats)", "{:.3f}"), ("logmel_l1", "log-mel L1", "{:.3f}"), ("mrstft", "MR-STFT", "{:.3f}"),
           ("pesq_wb", "PESQ-WB", "{:.2f}"), ("stoi", "STOI", "{:.3f}"), ("dnsmos_ovrl", "DNSMOS OVRL", "{:.2f}"),
           ("dnsmos_p808", "DNSMOS P.808", "{:.2f}"), ("gpe", "GPE", "{:.3f}"), ("vde", "VDE", "{:.3f}"),
           ("f0_rmse_cents", "F0 RMSE (cents)", "{:.1f}"), ("rtf", "RTF", "{:.3g}"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in MARKDOWN_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| system | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("-" if v is None else ("nan" if isinstance(v, float) and math.isnan(v) else fmt.format(v)))
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    notes = [f"{r['name']}: NLL over the first {r['nll_seconds_per_clip']:.2f} s of each clip"
             for r in rows if r.get("nll_seconds_per_clip") is not None and r.get("nll_nats") is not None]
    return "\n".join(lines + ([""] + notes if notes else []))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def plot_spectrograms(path: Path, clip: Clip, systems: list[SystemResult], mel_config: MelConfig) -> None:
    """One panel per system: the log-mel of its version of the first validation clip, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in systems if clip.id in s.audio]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 2.1 * len(shown)), sharex=True, squeeze=False)
    seconds = clip.audio.shape[0] / mel_config.sample_rate
    lo = mel_config.silence
    for ax, s in zip(axes[:, 0], shown):
        mel = mel_spectrogram(s.audio[clip.id][None], mel_config)[0].numpy()
        im = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=lo, vmax=2.0,
                       extent=(0.0, seconds, 0, mel.shape[0]), interpolation="nearest")
        l1 = s.per_clip[0]["logmel_l1"]
        title = "ground truth" if s.kind == "reference" else f"{s.name}  (log-mel L1 {l1:.3f})"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("mel band")
    axes[-1, 0].set_xlabel(f"time (s): {clip.id}")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="ln mel", shrink=0.9)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Command line

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


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m wavflow.evaluate",
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
    p.add_argument("--sigma", type=float, default=None, help="WaveGlow's noise std at inference (its default: 0.6)")
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


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  (the table alone goes to stdout)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if metrics == ["all"]:
        metrics = list(OPTIONAL_METRICS)
    unknown = [m for m in metrics if m not in OPTIONAL_METRICS]
    if unknown:
        raise WavflowError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(OPTIONAL_METRICS)}, all")
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
    nll_cap = None if args.nll_max_seconds == 0 else max(4, int(args.nll_max_seconds * metric_mel.sample_rate) // hop) * hop
    # Each model gets the options its infer() takes: sigma reaches WaveGlow, temperature the teacher and student.
    infer_options = {k: v for k, v in (("sigma", args.sigma), ("temperature", args.temperature)) if v is not None}
    taken: set[str] = {s.name for s in systems}
    for checkpoint, name in zip(models, names):
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


if __name__ == "__main__":
    run_cli("python -m wavflow.evaluate", main)
