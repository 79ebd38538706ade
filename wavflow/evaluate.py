"""Evaluate vocoders on held-out LJSpeech clips: likelihood, copy-synthesis distances, Griffin-Lim as the floor.

    wavflow evaluate checkpoints/waveglow.pt checkpoints/wavenet.pt --data-root LJSpeech-1.1 \\
        --json eval.json --plot eval.png --report eval-report --metrics pesq,stoi,dnsmos,pitch

For every checkpoint, on the validation clips (the last --n-valid clips of metadata.csv, as wavflow.data splits):

  nll         held-out negative log-likelihood, nats per audio sample on the scale of design.md section 2
              (model.log_likelihood), pooled: total nats / total samples. Exact, in one parallel pass, for
              WaveGlow and the WaveNet teacher, on the whole clips. The IAF student's density of real audio
              needs its flows inverted one sample at a time, far slower than a parallel pass, so for the
              student only the first --nll-max-seconds of each clip are scored (default 1; 0: whole clips);
              the JSON's nll_seconds_per_clip says what each row used. A model with a source is scored as
              it samples (predicted pitch, the phase running free); with --metrics pitch also given the
              recordings' pitch tracks, as it trains: the JSON's nll_given_pitch_nats.
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
a function of wavflow.metrics; this module runs them over the checkpoints and makes the table, the JSON and the
figure. The command line (`wavflow evaluate`, also `python -m wavflow.evaluate`) is wavflow.commands.evaluate.

--report DIR writes an HTML report (wavflow.report) that opens from the file system: DIR/index.html with the
metrics table, the settings and the checkpoints, and per clip each system's audio (FLAC), log-mel spectrogram and,
with --metrics pitch, F0 contour over the recording's. Its audio is the very audio that was scored, and its pitch
contours the very tracks the pitch metrics compared.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import file_sha256, load_with_step
from .data import Clip, LJSpeech, validation_clips
from .errors import WavflowError
from .fileio import atomic_write
from .frontend import MelConfig, mel_spectrogram
from .metrics import METRIC_KEYS, clip_metrics, griffin_lim, pooled_nll
from .pitch import PitchSettings, PitchTrack

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
        timed = self.kind == "vocoder" and self.audio_seconds
        row["rtf"] = self.synthesis_seconds / self.audio_seconds if timed else None
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
        if getattr(model, "needs_pitch", False) and pitch and metric_mel == model.mel_config:
            # a model with a source samples from its predicted pitch, the phase running free (the NLL above);
            # given the recording's pitch and phase, as it trains, is the held-out twin of its training NLL
            total, _ = pooled_nll(model, [c.audio for c in clips], max_samples=cap, device=device,
                                  labels=[c.path for c in clips], pitch=[pitch[c.id] for c in clips])
            result.info["nll_given_pitch_nats"] = total / samples
            log(f"  {path.stem}: NLL given the recordings' pitch {total / samples:.4f} nats/sample")
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
            raise WavflowError(f"{path}: the model vocoded non-finite samples for {clip.id}; "
                               "is the checkpoint trained?")
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

MARKDOWN_COLUMNS = (("nll_nats", "NLL (nats)", "{:.3f}"), ("logmel_l1", "log-mel L1", "{:.3f}"),
           ("mrstft", "MR-STFT", "{:.3f}"), ("pesq_wb", "PESQ-WB", "{:.2f}"), ("stoi", "STOI", "{:.3f}"),
           ("dnsmos_ovrl", "DNSMOS OVRL", "{:.2f}"),
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
    for ax, s in zip(axes[:, 0], shown, strict=True):
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


if __name__ == "__main__":
    from wavflow.commands.evaluate import main

    main(prog="python -m wavflow.evaluate")  # help and errors name the command as it was typed
