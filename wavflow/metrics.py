"""How wavflow scores a vocoder: held-out likelihood, and the distance of vocoded audio to the recording.

    pooled_nll    negative log-likelihood of held-out clips, nats per sample (design.md section 2), pooled:
                  total nats over total samples. The trainer's validation NLL and wavflow.evaluate's; for a
                  model with a source also given the recordings' pitch tracks
    logmel_l1     mean |log-mel(vocoded) - log-mel(real)| over bands and frames (the design.md section 1 mel)
    mrstft        multi-resolution STFT distance: spectral convergence + L1 of log magnitudes (losses.stft_loss)
    pesq_wb, stoi, dnsmos_*   optional (`pip install 'wavflow[metrics]'`): PESQ wide band and DNSMOS at 16 kHz,
                  STOI at the model's rate
    gpe, vde, f0_rmse_cents   optional (librosa only): pYIN pitch of vocoded audio against the recording's, one
                  frame per mel frame (wavflow.pitch.pitch_errors)
    griffin_lim   the floor a neural vocoder has to beat: NNLS mel inversion, then Griffin-Lim's phase
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from .audio import resample
from .errors import WavflowError
from .frontend import MelConfig, mel_spectrogram
from .losses import stft_loss
from .pitch import PitchSettings, PitchTrack, pitch_errors, track_pitch, tracks_at

OPTIONAL_METRICS = ("pesq", "stoi", "dnsmos", "pitch")
DNSMOS_KEYS = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808")
PITCH_KEYS = ("gpe", "vde", "f0_rmse_cents")  # of pitch_errors, which also gives voiced_both
# Every per-clip and per-system metric key, in table order; a metric that was not asked for is null in the JSON.
METRIC_KEYS = ("logmel_l1", "mrstft", "mrstft_sc", "mrstft_logmag", "pesq_wb", "stoi", *DNSMOS_KEYS, *PITCH_KEYS)
PESQ_RATE = 16000  # PESQ wide band and DNSMOS are defined at 16 kHz


# ----------------------------------------------------------------------------------------------------------------
# Likelihood

@torch.no_grad()
def pooled_nll(model: torch.nn.Module, clips: Iterable[torch.Tensor], mel_config: MelConfig | None = None, *,
               max_samples: int | None = None, device: torch.device | None = None,
               labels: Sequence[object] | None = None, pitch: Sequence[PitchTrack] | None = None
               ) -> tuple[float, int]:
    """Total negative log-likelihood in nats over the clips, and the number of audio samples it covers.

    Each clip [T] (its first `max_samples` when given) is scored in one piece with `model.log_likelihood`, the
    mean log-density per sample of design.md section 2, from the mel of `mel_config` (default: the model's);
    total / samples then weighs every sample alike, however the clips' lengths differ. `device`: where to move
    the clips first. With `labels` (one per clip), a clip whose log-likelihood is not finite is refused by its
    label; without, a non-finite total is returned as it is.

    A model with a source is scored as it samples, from its predicted pitch with the phase running free; with
    `pitch` (each clip's recorded pitch track, from its first sample) it is scored given the recording's track
    instead, as it trains (`recording_track`): the figure the training loss is an estimate of.
    """
    mel_config = mel_config if mel_config is not None else model.mel_config
    total, count = 0.0, 0
    for i, audio in enumerate(clips):
        n = audio.shape[0] if max_samples is None else min(audio.shape[0], max_samples)
        audio = audio[:n].unsqueeze(0)
        if device is not None:
            audio = audio.to(device)
        mel = mel_spectrogram(audio, mel_config)
        if pitch is None:
            ll = float(model.log_likelihood(audio, mel).double().sum())
        else:
            f0, voiced = (p.to(audio.device) for p in tracks_at([pitch[i]], [0], mel.shape[-1], mel_config.hop_length))
            ll = float(model.log_likelihood(audio, mel, model.recording_track(audio, mel, f0, voiced)).double().sum())
        if labels is not None and not math.isfinite(ll):
            raise WavflowError(f"{labels[i]}: the model's log-likelihood is not finite ({ll}); "
                               f"is the checkpoint trained?")
        total -= ll * n
        count += n
    return total, count


# ----------------------------------------------------------------------------------------------------------------
# Distances of vocoded audio to the recording

def _missing(package: str, metric: str) -> WavflowError:
    return WavflowError(f"the {metric} metric needs the '{package}' package: pip install 'wavflow[metrics]'")


def require_metrics(metrics: Sequence[str]) -> dict[str, Callable]:
    """Import the optional metric packages up front, so a missing one is reported before any work is done."""
    fns: dict[str, Callable] = {}
    for m in metrics:
        if m == "pesq":
            try:
                from pesq import pesq
            except ImportError:
                raise _missing("pesq", "pesq") from None
            fns[m] = pesq
        elif m == "stoi":
            try:
                from pystoi import stoi
            except ImportError:
                raise _missing("pystoi", "stoi") from None
            fns[m] = stoi
        elif m == "dnsmos":
            try:
                import onnxruntime  # noqa: F401  (speechmos imports it only when scoring)
            except ImportError:
                raise _missing("onnxruntime", "dnsmos") from None
            try:
                from speechmos import dnsmos
            except ImportError:
                raise _missing("speechmos", "dnsmos") from None
            fns[m] = dnsmos.run
        elif m == "pitch":
            fns[m] = track_pitch  # librosa's pYIN: a core dependency, nothing to install
    return fns


def logmel_l1(estimate: torch.Tensor, reference: torch.Tensor, mel_config: MelConfig = MelConfig()) -> float:
    """Mean |log-mel(estimate) - log-mel(reference)| over bands and frames; both [T] of the same length."""
    if estimate.shape != reference.shape:
        raise ValueError(f"logmel_l1: estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ")
    pair = torch.stack([estimate, reference]).double()
    mels = mel_spectrogram(pair, mel_config)
    return float((mels[0] - mels[1]).abs().mean())


def mrstft(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Multi-resolution STFT distance of two clips [T]: (spectral convergence, log-magnitude L1), in float64."""
    sc, logmag = stft_loss(estimate.double()[None], reference.double()[None])
    return float(sc), float(logmag)


def _to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate == PESQ_RATE:
        return audio
    return resample(torch.from_numpy(audio), sample_rate, PESQ_RATE).numpy()


def clip_metrics(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int, mel_config: MelConfig,
                 optional: dict[str, Callable], *, reference_pitch: PitchTrack | None = None,
                 estimate_pitch: PitchTrack | None = None) -> dict[str, float | None]:
    """All metrics of one vocoded clip [T] against its recording [T]; keys METRIC_KEYS, None where not asked.

    The pitch metrics track both clips at the frames of `mel_config` (PitchSettings.for_mel). `reference_pitch`:
    the recording's track [F] when already known (one track per recording, whatever the number of systems held
    against it); an estimate that is the reference tensor itself reuses the reference's track. `estimate_pitch`:
    the estimate's track [F] when the caller tracked it already (wavflow.evaluate keeps it for its report), so
    pYIN runs once per clip and system.
    """
    same = estimate is reference
    est = estimate.detach().float().cpu()
    ref = reference.detach().float().cpu()
    out: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    out["logmel_l1"] = logmel_l1(est, ref, mel_config)
    out["mrstft_sc"], out["mrstft_logmag"] = mrstft(est, ref)
    out["mrstft"] = out["mrstft_sc"] + out["mrstft_logmag"]
    est_np, ref_np = est.numpy(), ref.numpy()
    if "pesq" in optional or "dnsmos" in optional:
        est16 = np.clip(_to_16k(est_np, sample_rate), -1.0, 1.0).astype(np.float32)
        ref16 = np.clip(_to_16k(ref_np, sample_rate), -1.0, 1.0).astype(np.float32)
    if "pesq" in optional:
        try:
            out["pesq_wb"] = float(optional["pesq"](PESQ_RATE, ref16, est16, "wb"))
        except Exception:  # PESQ refuses clips it finds no speech in (e.g. a silent vocoder): no score, not 0
            out["pesq_wb"] = math.nan
    if "stoi" in optional:
        out["stoi"] = float(optional["stoi"](ref_np, est_np, sample_rate, extended=False))
    if "dnsmos" in optional:
        r = optional["dnsmos"](est16, PESQ_RATE)
        out.update(dnsmos_ovrl=float(r["ovrl_mos"]), dnsmos_sig=float(r["sig_mos"]), dnsmos_bak=float(r["bak_mos"]),
                   dnsmos_p808=float(r["p808_mos"]))
    if "pitch" in optional:
        settings = PitchSettings.for_mel(mel_config)
        ref_track = reference_pitch if reference_pitch is not None else optional["pitch"](ref, settings)
        est_track = (estimate_pitch if estimate_pitch is not None else ref_track if same
                     else optional["pitch"](est, settings))
        errors = pitch_errors(ref_track, est_track)  # NaN gpe and cents where no frame is voiced in both
        out.update({key: errors[key] for key in PITCH_KEYS})
    return out


def griffin_lim(log_mel: torch.Tensor, mel_config: MelConfig, n_iter: int, length: int, seed: int = 0) -> torch.Tensor:
    """Audio [length] from a log-mel [n_mels, F] by NNLS mel inversion and Griffin-Lim (librosa)."""
    import librosa

    c = mel_config
    mel = c.decompress(log_mel.detach().double().cpu()).numpy()  # magnitude mel (power 1), floor included
    magnitude = librosa.feature.inverse.mel_to_stft(mel, sr=c.sample_rate, n_fft=c.n_fft, power=1.0,
                                                     fmin=c.fmin, fmax=c.fmax, htk=c.mel_scale == "htk",
                                                     norm=c.mel_norm)
    audio = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=c.hop_length, win_length=c.win_length,
                               n_fft=c.n_fft, window="hann", center=True, length=length, random_state=seed)
    return torch.from_numpy(audio.astype(np.float32))
