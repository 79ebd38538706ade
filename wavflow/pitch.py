"""Pitch tracks: per-frame F0 and voicing of a recording, cached beside the data, and the pitch metrics.

The tracker is pYIN (Mauch & Dixon 2014, `librosa.pyin`) with the settings of design.md section 9: F0 searched
in [65, 600] Hz, one frame per mel hop with the mel's centring, so frame k of a track is frame k of the mel of
the same audio (1 + T // hop frames). The same tracker labels the training clips (the source module's targets)
and judges vocoded audio against its recording (`pitch_errors`).

Tracks of dataset clips are computed once and cached as `.npz` files keyed by the sha256 of the audio file's
bytes and the tracker's settings (`PitchCache`): `ROOT/.wavflow-pitch/` beside the data where that is
writable, else the user's cache directory.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write

FMIN, FMAX = 65.0, 600.0  # Hz: the search range of the tracker and the range the source module predicts in
GROSS_ERROR = 0.2         # an F0 off by more than 20% of the reference is a gross pitch error


@dataclass(frozen=True)
class PitchSettings:
    """What a pitch track depends on besides the audio (part of the cache key)."""
    sample_rate: int = 22050
    hop_length: int = 256
    frame_length: int = 1024
    fmin: float = FMIN
    fmax: float = FMAX
    center: bool = True
    tracker: str = "pyin"

    @classmethod
    def for_mel(cls, mel_config) -> PitchSettings:
        """The settings whose frames are the mel's frames (same rate, hop, centring; window = n_fft)."""
        return cls(sample_rate=mel_config.sample_rate, hop_length=mel_config.hop_length,
                   frame_length=mel_config.n_fft, center=mel_config.center)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class PitchTrack:
    """f0 [F] in Hz (0 where unvoiced) and voiced [F] bool, frames one hop apart."""
    f0: np.ndarray
    voiced: np.ndarray

    def __len__(self) -> int:
        return len(self.f0)


def track_pitch(audio: np.ndarray | torch.Tensor, settings: PitchSettings = PitchSettings()) -> PitchTrack:
    """pYIN's F0 and voicing decision of mono audio [T] at settings.sample_rate, framed as the mel frames it:
    centred, 1 + T // hop frames; else HiFi-GAN's framing, (frame_length - hop) // 2 padding per side and
    T // hop frames, frame k starting at k * hop - that padding. Audio too short for one frame gives an empty
    track."""
    import librosa

    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    x = np.ascontiguousarray(x, dtype=np.float32)
    s = settings
    pad = 0 if s.center else (s.frame_length - s.hop_length) // 2
    frames = 1 + len(x) // s.hop_length if s.center else max(0, 1 + (len(x) + 2 * pad - s.frame_length) // s.hop_length)
    if len(x) < s.frame_length // 2 + 1 or frames == 0:
        return PitchTrack(np.zeros(frames, np.float32), np.zeros(frames, bool))
    if pad:  # pyin's own centring pads frame_length // 2; the non-centred mel pads (frame_length - hop) // 2
        x = np.pad(x, pad)
    f0, voiced, _ = librosa.pyin(x, fmin=s.fmin, fmax=s.fmax, sr=s.sample_rate, frame_length=s.frame_length,
                                 hop_length=s.hop_length, center=s.center)
    voiced = voiced & np.isfinite(f0)
    f0 = np.where(voiced, f0, 0.0).astype(np.float32)
    return PitchTrack(f0[:frames], voiced[:frames])


class PitchCache:
    """Pitch tracks of audio files, computed once per (file content, settings) and kept as .npz files."""

    def __init__(self, root: str | os.PathLike, settings: PitchSettings):
        self.settings = settings
        self.dir = cache_dir(Path(root))

    def path_for(self, audio_path: Path) -> Path:
        digest = hashlib.sha256(Path(audio_path).read_bytes()).hexdigest()[:24]
        return self.dir / f"{digest}-{self.settings.key()}.npz"

    def get(self, audio_path: Path, audio: torch.Tensor) -> PitchTrack:
        """The track of the file at `audio_path`, whose decoded samples (at the settings' rate) are `audio`."""
        path = self.path_for(audio_path)
        if path.is_file():
            try:
                with np.load(path) as z:
                    return PitchTrack(z["f0"].astype(np.float32), z["voiced"].astype(bool))
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is recomputed and rewritten
        track = track_pitch(audio, self.settings)
        buffer = io.BytesIO()
        np.savez(buffer, f0=track.f0, voiced=track.voiced)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(buffer.getvalue()))
        except OSError:
            pass  # a read-only cache only costs the time to track again
        return track


def cache_dir(root: Path) -> Path:
    """ROOT/.wavflow-pitch where the dataset root is writable, else ~/.cache/wavflow/pitch/<hash of ROOT>."""
    beside = root / ".wavflow-pitch"
    if beside.is_dir() and os.access(beside, os.W_OK) or not beside.exists() and os.access(root, os.W_OK):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "wavflow" / "pitch" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def tracks_at(tracks: Sequence[PitchTrack], offsets: Sequence[int], frames: int, hop: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pitch of crops: crop b starts `offsets[b]` samples into the clip of `tracks[b]`, and its frame k sits
    at sample offsets[b] + k * hop of the clip, between two of the track's frames. F0 is interpolated
    log-linearly between the two where both are voiced, the voicing is the nearer frame's, and frames past the
    clip's end are unvoiced. -> (f0 [B, frames] Hz, 0 where unvoiced; voiced [B, frames] float 0/1)."""
    f0 = np.zeros((len(tracks), frames), np.float32)
    voiced = np.zeros((len(tracks), frames), np.float32)
    for b, (track, offset) in enumerate(zip(tracks, offsets, strict=True)):
        n = len(track)
        if n == 0:
            continue
        pos = offset / hop + np.arange(frames)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
        hi = np.clip(lo + 1, 0, n - 1)
        frac = np.clip(pos - lo, 0.0, 1.0)
        near = np.where(frac < 0.5, lo, hi)
        inside = pos <= n - 1
        v = track.voiced[near] & inside
        both = track.voiced[lo] & track.voiced[hi]
        hz = track.f0.astype(np.float64)  # float32 logs would move a frame's F0 by an ulp even at frac 0
        log_lo = np.log(np.maximum(hz[lo], 1.0))
        log_hi = np.log(np.maximum(hz[hi], 1.0))
        interp = np.exp(np.where(both, (1 - frac) * log_lo + frac * log_hi, np.log(np.maximum(hz[near], 1.0))))
        f0[b] = np.where(v, interp, 0.0)
        voiced[b] = v
    return torch.from_numpy(f0), torch.from_numpy(voiced)


# ----------------------------------------------------------------------------------------------------------------
# Metrics (design.md section 9)

def pitch_errors(reference: PitchTrack, estimate: PitchTrack) -> dict[str, float]:
    """Pitch of vocoded audio against its recording, over their common frames:

      gpe              gross pitch error: share of the frames voiced in both whose F0 is off by more than 20%
                       (NaN where no frame is voiced in both)
      vde              voicing decision error: share of all frames whose voiced/unvoiced decision differs
      f0_rmse_cents    sqrt(mean((1200 log2(f_est / f_ref))^2)) over the frames voiced in both (NaN where none)
      voiced_both      share of frames voiced in both (how much the first and last figures rest on)
    """
    n = min(len(reference), len(estimate))
    if n == 0:
        return {"gpe": math.nan, "vde": math.nan, "f0_rmse_cents": math.nan, "voiced_both": 0.0}
    rv, ev = reference.voiced[:n], estimate.voiced[:n]
    both = rv & ev
    vde = float(np.mean(rv != ev))
    if not both.any():
        return {"gpe": math.nan, "vde": vde, "f0_rmse_cents": math.nan, "voiced_both": 0.0}
    ref, est = reference.f0[:n][both].astype(np.float64), estimate.f0[:n][both].astype(np.float64)
    gpe = float(np.mean(np.abs(est / ref - 1.0) > GROSS_ERROR))
    cents = 1200.0 * np.log2(est / ref)
    return {"gpe": gpe, "vde": vde, "f0_rmse_cents": float(np.sqrt(np.mean(cents**2))),
            "voiced_both": float(both.mean())}
