"""wavflow.pitch: the tracker's frames and F0 on a tone of known pitch, the metrics' exact values, the crops'
interpolation, the cache."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import wavflow.pitch
from wavflow.audio import load_audio, save_wav
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.pitch import PitchCache, PitchSettings, PitchTrack, pitch_errors, track_pitch, tracks_at

SR = 22050
HOP = 256
T = SR // 2  # 11025 samples, not a whole number of hops: 1 + T // hop = 44 frames


def tone(f0: float = 200.0, samples: int = T, harmonics: int = 4) -> np.ndarray:
    """A harmonic tone [samples]: f0 and its first harmonics at falling amplitude."""
    t = np.arange(samples) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, harmonics + 1)).astype(np.float32)


def track(f0: list[float], voiced: list[bool] | None = None) -> PitchTrack:
    """A hand-built track; voiced where f0 > 0 unless given."""
    f = np.array(f0, np.float32)
    return PitchTrack(f, f > 0 if voiced is None else np.array(voiced, bool))


# ----------------------------------------------------------------------------------------------------------------
# Tracker

def test_tone_is_voiced_at_its_pitch_and_silence_is_not():
    settings = PitchSettings()
    assert settings == PitchSettings.for_mel(MelConfig())
    t = track_pitch(tone(), settings)
    assert len(t) == len(t.voiced) == 1 + T // HOP == 44
    assert t.f0.dtype == np.float32 and t.voiced.dtype == bool
    interior = slice(2, -2)  # the first and last frames see the zero padding
    assert t.voiced[interior].all()
    assert np.abs(t.f0[interior] / 200.0 - 1.0).max() < 0.02
    assert np.all(t.f0[~t.voiced] == 0.0)

    quiet = track_pitch(torch.zeros(T), settings)  # a tensor is taken as well as an array
    assert len(quiet) == 1 + T // HOP
    assert not quiet.voiced.any() and np.all(quiet.f0 == 0.0)


@pytest.mark.parametrize("preset", ["tacotron2", "hifigan"])
def test_track_frames_are_the_mel_frames(preset):
    """for_mel's track has the mel's frame count, centred or not (HiFi-GAN's (n_fft - hop) / 2 padding)."""
    config = MelConfig.preset(preset)
    audio = tone()
    t = track_pitch(audio, PitchSettings.for_mel(config))
    assert len(t) == mel_spectrogram(torch.from_numpy(audio)[None], config).shape[-1] == config.num_frames(T)
    assert t.voiced[2:-2].all() and np.abs(t.f0[2:-2] / 200.0 - 1.0).max() < 0.02


def test_too_short_audio_gives_an_unvoiced_track():
    t = track_pitch(np.zeros(100, np.float32))
    assert len(t) == 1 + 100 // HOP and not t.voiced.any()


# ----------------------------------------------------------------------------------------------------------------
# Metrics

def test_pitch_errors_exact():
    reference = track([200, 200, 200, 200, 200, 0, 0, 0])
    # frames 0-3 voiced in both: right, an octave up, 10% sharp, an octave down; frame 4 voiced in the reference
    # only, frame 5 in the estimate only
    estimate = track([200, 400, 220, 100, 0, 150, 0, 0])
    e = pitch_errors(reference, estimate)
    assert e["gpe"] == 0.5  # the two octave errors of 4 frames voiced in both; 10% is not gross
    assert e["vde"] == 0.25  # 2 of 8 frames
    assert e["voiced_both"] == 0.5
    cents = [0.0, 1200.0, 1200.0 * math.log2(1.1), -1200.0]
    assert e["f0_rmse_cents"] == pytest.approx(math.sqrt(sum(c * c for c in cents) / 4), rel=1e-12)

    same = pitch_errors(reference, reference)
    assert same == {"gpe": 0.0, "vde": 0.0, "f0_rmse_cents": 0.0, "voiced_both": 0.625}

    # 25% off is gross, 15% is not
    e = pitch_errors(track([200, 200]), track([250, 230]))
    assert e["gpe"] == 0.5 and e["vde"] == 0.0

    # no frame voiced in both: no gross error or cents to speak of, but every voicing decision differs
    e = pitch_errors(track([200, 0, 0]), track([0, 180, 0]))
    assert math.isnan(e["gpe"]) and math.isnan(e["f0_rmse_cents"])
    assert e["vde"] == pytest.approx(2 / 3, rel=1e-15) and e["voiced_both"] == 0.0

    # only the common frames count
    reference = track([200, 200])
    assert pitch_errors(reference, track([200, 400, 0, 0])) == pitch_errors(reference, track([200, 400]))
    empty = pitch_errors(track([]), track([200]))
    assert math.isnan(empty["gpe"]) and math.isnan(empty["vde"]) and math.isnan(empty["f0_rmse_cents"])


# ----------------------------------------------------------------------------------------------------------------
# Crops

def test_tracks_at_whole_hops_reproduce_the_frames():
    t = track([100, 150, 200, 250, 300, 0, 0, 211.3])
    f0, voiced = tracks_at([t], [0], 8, HOP)
    assert f0.dtype == voiced.dtype == torch.float32 and f0.shape == voiced.shape == (1, 8)
    assert np.array_equal(f0[0].numpy(), t.f0) and np.array_equal(voiced[0].numpy(), t.voiced.astype(np.float32))
    for k in (1, 2, 3):
        f0, voiced = tracks_at([t], [k * HOP], 8 - k, HOP)
        assert np.array_equal(f0[0].numpy(), t.f0[k:]), k
        assert np.array_equal(voiced[0].numpy(), t.voiced[k:].astype(np.float32)), k
    # random F0s: frame for frame, bit for bit
    rng = np.random.default_rng(0)
    many = PitchTrack(rng.uniform(65, 600, 2000).astype(np.float32), np.ones(2000, bool))
    assert np.array_equal(tracks_at([many], [5 * HOP], 1995, HOP)[0][0].numpy(), many.f0[5:])


def test_tracks_at_interpolates_log_f0_between_voiced_frames():
    t = track([100, 150, 200, 250, 300, 0, 0, 211.3])
    f0, voiced = tracks_at([t], [HOP // 2], 3, HOP)  # halfway between frames 0-1, 1-2, 2-3
    assert voiced[0].tolist() == [1.0, 1.0, 1.0]
    expected = [math.sqrt(100 * 150), math.sqrt(200 * 150), math.sqrt(200 * 250)]  # the geometric means
    assert f0[0].tolist() == pytest.approx(expected, rel=1e-6)
    # a quarter of a hop: log-F0 a quarter of the way
    f0, _ = tracks_at([t], [HOP // 4], 1, HOP)
    assert float(f0[0, 0]) == pytest.approx(100 * 1.5**0.25, rel=1e-6)
    # beside an unvoiced frame: the nearer frame's voicing and, voiced, its F0 as it is
    f0, voiced = tracks_at([t], [4 * HOP + HOP // 4], 3, HOP)  # at 4.25, 5.25, 6.25
    assert voiced[0].tolist() == [1.0, 0.0, 0.0] and f0[0].tolist() == [300.0, 0.0, 0.0]
    f0, voiced = tracks_at([t], [6 * HOP + 3 * HOP // 4], 1, HOP)  # at 6.75: frame 7's
    assert voiced[0].tolist() == [1.0] and float(f0[0, 0]) == pytest.approx(211.3, rel=1e-6)


def test_tracks_at_past_the_end_is_unvoiced():
    t = track([100, 150, 200, 250])
    f0, voiced = tracks_at([t, t, track([])], [2 * HOP, HOP // 2, 0], 4, HOP)
    assert f0.shape == (3, 4)
    assert voiced[0].tolist() == [1.0, 1.0, 0.0, 0.0] and f0[0].tolist() == [200.0, 250.0, 0.0, 0.0]
    assert voiced[1].tolist() == [1.0, 1.0, 1.0, 0.0] and float(f0[1, 3]) == 0.0  # 3.5 lies past frame 3
    assert not voiced[2].any() and not f0[2].any()  # an empty track: nothing voiced


# ----------------------------------------------------------------------------------------------------------------
# Cache

@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Calls of wavflow.pitch.track_pitch (the real tracker still runs)."""
    calls = [0]
    real = wavflow.pitch.track_pitch

    def counting(audio, settings=PitchSettings()):
        calls[0] += 1
        return real(audio, settings)

    monkeypatch.setattr(wavflow.pitch, "track_pitch", counting)
    return calls


def _tone_file(root: Path, name: str = "a.wav") -> tuple[Path, torch.Tensor]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    save_wav(path, tone(), SR)
    return path, load_audio(path, SR)


def test_cache_one_file_per_content_and_settings(tmp_path, counted):
    root = tmp_path / "data"
    path, audio = _tone_file(root)
    settings = PitchSettings()
    first = PitchCache(root, settings).get(path, audio)
    assert counted[0] == 1
    entries = sorted((root / ".wavflow-pitch").iterdir())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    assert [e.name for e in entries] == [f"{digest}-{settings.key()}.npz"]
    assert np.array_equal(first.f0, track_pitch(audio, settings).f0)  # the tracker's own answer

    again = PitchCache(root, settings).get(path, audio)  # a new cache object: read from the file
    assert counted[0] == 1
    assert np.array_equal(again.f0, first.f0) and np.array_equal(again.voiced, first.voiced)
    assert again.f0.dtype == np.float32 and again.voiced.dtype == bool

    copy = root / "b.wav"  # the same bytes under another name: the same entry
    shutil.copyfile(path, copy)
    assert np.array_equal(PitchCache(root, settings).get(copy, audio).f0, first.f0)
    assert counted[0] == 1 and len(list((root / ".wavflow-pitch").iterdir())) == 1

    other = PitchSettings(fmax=400.0)
    assert other.key() != settings.key()
    PitchCache(root, other).get(path, audio)
    assert counted[0] == 2
    assert sorted(e.name for e in (root / ".wavflow-pitch").iterdir()) == sorted(
        [f"{digest}-{settings.key()}.npz", f"{digest}-{other.key()}.npz"])

    entries[0].write_bytes(b"not an npz")  # a damaged entry is tracked again and rewritten
    assert np.array_equal(PitchCache(root, settings).get(path, audio).f0, first.f0)
    assert counted[0] == 3
    with np.load(entries[0]) as z:
        assert np.array_equal(z["f0"], first.f0)


def test_cache_of_an_unwritable_root_goes_to_the_user_cache(tmp_path, counted, monkeypatch):
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    root = tmp_path / "readonly"
    path, audio = _tone_file(root)
    root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):  # root ignores permissions: let the check answer as it would for others
            real_access = os.access

            def access(p, mode, *args, **kwargs):
                if mode & os.W_OK and Path(p).resolve() in (root.resolve(), (root / ".wavflow-pitch").resolve()):
                    return False
                return real_access(p, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", access)
        cache = PitchCache(root, PitchSettings())
        expected = xdg / "wavflow" / "pitch" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        assert cache.dir == expected
        first = cache.get(path, audio)
        assert counted[0] == 1
        assert [e.name for e in expected.iterdir()] == [cache.path_for(path).name]
        assert sorted(p.name for p in root.iterdir()) == ["a.wav"]  # nothing written beside the data
        assert np.array_equal(PitchCache(root, PitchSettings()).get(path, audio).f0, first.f0)
        assert counted[0] == 1
    finally:
        root.chmod(0o755)
