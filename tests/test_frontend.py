import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_basis, mel_spectrogram
from wavflow.melinput import load_mel

from synth_helpers import clip as fixture_clip


def librosa_reference(y: np.ndarray) -> np.ndarray:
    """design.md section 1 written independently with librosa: STFT magnitude, Slaney mel basis, ln(max(., 1e-5))."""
    spec = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=True,
                               pad_mode="reflect"))
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    return np.log(np.maximum(basis @ spec, 1e-5))


@pytest.mark.parametrize("clip", ["LJ002-0020", "LJ001-0002"])
def test_mel_matches_librosa_reference(ljspeech_root, clip):
    y, sr = sf.read(fixture_clip(clip), dtype="float32")
    assert sr == 22050
    ours = mel_spectrogram(torch.from_numpy(y))[0].numpy()
    ref = librosa_reference(y)
    assert ours.shape == ref.shape == (80, len(y) // 256 + 1)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("n", [513, 1000, 16000, 16384, 22050])
def test_frame_count(n):
    mel = mel_spectrogram(torch.randn(2, n) * 0.1)
    assert mel.shape == (2, 80, n // 256 + 1)


def test_silence_floor():
    mel = mel_spectrogram(torch.zeros(4096))
    assert torch.allclose(mel, torch.full_like(mel, np.log(1e-5)))


def test_mel_basis_matches_librosa():
    ours = mel_basis(MelConfig()).numpy()
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    assert np.abs(ours - ref).max() < 1e-7


def test_load_mel_layouts(tmp_path):
    mel = np.random.randn(80, 37).astype(np.float32)
    for name, arr in {"a": mel, "b": mel.T, "c": mel[None]}.items():
        np.save(tmp_path / f"{name}.npy", arr)
        np.testing.assert_array_equal(load_mel(tmp_path / f"{name}.npy"), mel)


@pytest.mark.parametrize("arr,match", [
    (np.zeros((80, 10), np.int16), "dtype"),
    (np.zeros((81, 10), np.float32), "shape"),
    (np.zeros((2, 80, 10), np.float32), "shape"),
    (np.zeros((80, 0), np.float32), "zero frames"),
    (np.full((80, 10), np.nan, np.float32), "NaN"),
])
def test_load_mel_refuses(tmp_path, arr, match):
    np.save(tmp_path / "m.npy", arr)
    with pytest.raises(WavflowError, match=match):
        load_mel(tmp_path / "m.npy")


def test_load_mel_refuses_pickle_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    np.save(tmp_path / "evil.npy", np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(WavflowError, match="pickled"):
        load_mel(tmp_path / "evil.npy")
    assert not marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------------------------
# Other toolkits' conventions, each pinned to an independent librosa implementation of its source's recipe.

def _librosa_mel(y: np.ndarray, sr: int, n_fft: int, hop: int, win: int, fmin: float, fmax: float, *, center: bool,
                 eps: float, log, floor: float, htk: bool = False, norm="slaney") -> np.ndarray:
    if center:
        stft = librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=win, window="hann", center=True,
                            pad_mode="reflect")
    else:  # HiFi-GAN: reflect-pad (n_fft - hop) / 2 per side, then an uncentred STFT
        pad = (n_fft - hop) // 2
        stft = librosa.stft(np.pad(y, (pad, pad), mode="reflect"), n_fft=n_fft, hop_length=hop, win_length=win,
                            window="hann", center=False)
    spec = np.sqrt(np.abs(stft) ** 2 + eps)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=80, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
    return log(np.maximum(basis @ spec, floor))


@pytest.mark.parametrize("preset,reference", [
    ("tacotron2", {"center": True, "eps": 0.0, "log": np.log, "floor": 1e-5, "fmin": 0.0, "fmax": 8000.0}),
    ("hifigan", {"center": False, "eps": 1e-9, "log": np.log, "floor": 1e-5, "fmin": 0.0, "fmax": 8000.0}),
    ("parallel_wavegan", {"center": True, "eps": 0.0, "log": np.log10, "floor": 1e-10, "fmin": 80.0, "fmax": 7600.0}),
    ("espnet", {"center": True, "eps": 0.0, "log": np.log10, "floor": 1e-10, "fmin": 80.0, "fmax": 7600.0}),
])
def test_preset_matches_its_librosa_reference(short_clip, preset, reference):
    y, sr = sf.read(short_clip, dtype="float32")
    config = MelConfig.preset(preset)
    ours = mel_spectrogram(torch.from_numpy(y), config)[0].numpy()
    ref = _librosa_mel(y, 22050, 1024, 256, 1024, **reference)
    assert ours.shape == ref.shape == (80, config.num_frames(len(y)))
    assert np.abs(ours - ref).max() < 1e-4


def test_hifigan_frames_are_t_over_hop_and_half_a_hop_later(short_clip):
    y, _ = sf.read(short_clip, dtype="float32")
    y = y[: 256 * 40]
    hifi = mel_spectrogram(torch.from_numpy(y), MelConfig.preset("hifigan", magnitude_eps=0.0))[0]
    taco = mel_spectrogram(torch.from_numpy(y), MelConfig())[0]
    assert hifi.shape[1] == 40 and taco.shape[1] == 41
    # frame i of HiFi-GAN's framing is centred 128 samples (half a hop) after Tacotron 2's frame i: a shifted
    # signal's centred mel reproduces it away from the edges (without the 1e-9 added to |X|^2, which is all
    # that differs otherwise)
    shifted = mel_spectrogram(torch.from_numpy(np.ascontiguousarray(y[128:])), MelConfig())[0]
    np.testing.assert_allclose(hifi[:, 4:30].numpy(), shifted[:, 4:30].numpy(), atol=1e-5)


@pytest.mark.parametrize("rate,hop,n_fft,fmax", [(16000, 200, 800, 8000.0), (24000, 300, 1200, 12000.0),
                                                 (44100, 512, 2048, 22050.0)])
def test_other_rates_and_hops_match_librosa(short_clip, rate, hop, n_fft, fmax):
    from wavflow.audio import resample

    y22, _ = sf.read(short_clip, dtype="float32")
    y = resample(torch.from_numpy(y22), 22050, rate).numpy()
    config = MelConfig(sample_rate=rate, hop_length=hop, n_fft=n_fft, win_length=n_fft, fmax=fmax)
    ours = mel_spectrogram(torch.from_numpy(y), config)[0].numpy()
    ref = _librosa_mel(y, rate, n_fft, hop, n_fft, 0.0, fmax, center=True, eps=0.0, log=np.log, floor=1e-5)
    assert ours.shape == ref.shape == (80, len(y) // hop + 1)
    assert np.abs(ours - ref).max() < 1e-4


def test_htk_scale_without_area_norm_matches_librosa(short_clip):
    y, _ = sf.read(short_clip, dtype="float32")
    config = MelConfig(mel_scale="htk", mel_norm=None)
    ours = mel_spectrogram(torch.from_numpy(y), config)[0].numpy()
    ref = _librosa_mel(y, 22050, 1024, 256, 1024, 0.0, 8000.0, center=True, eps=0.0, log=np.log, floor=1e-5,
                       htk=True, norm=None)
    assert np.abs(ours - ref).max() < 1e-4


def test_statistics_normalise_and_decompress_inverts(short_clip, tmp_path):
    from wavflow.melinput import load_stats

    y, _ = sf.read(short_clip, dtype="float32")
    plain = MelConfig.preset("parallel_wavegan")
    logmel = mel_spectrogram(torch.from_numpy(y), plain)[0].double()
    mean, std = logmel.mean(dim=1).numpy(), logmel.std(dim=1).numpy()
    np.save(tmp_path / "stats.npy", np.stack([mean, std]))
    m, s = load_stats(tmp_path / "stats.npy", 80)
    normed = plain.with_stats(m, s)
    got = mel_spectrogram(torch.from_numpy(y), normed)[0].double()
    torch.testing.assert_close(got, (logmel - torch.from_numpy(mean)[:, None]) / torch.from_numpy(std)[:, None],
                               rtol=0, atol=1e-5)
    assert normed.silence == pytest.approx(float(((-10.0 - mean) / std).mean()))
    linear = torch.rand(80, 7, dtype=torch.float64) + 1e-3
    for config in (MelConfig(), plain, normed):
        torch.testing.assert_close(config.decompress(config.compress(linear)), linear)
    with pytest.raises(WavflowError, match=r"statistics of shape \(3,\)"):
        np.save(tmp_path / "bad.npy", np.zeros(3))
        load_stats(tmp_path / "bad.npy", 80)
    with pytest.raises(WavflowError, match="positive scale"):
        np.save(tmp_path / "zero.npy", np.stack([mean, 0 * std]))
        load_stats(tmp_path / "zero.npy", 80)


@pytest.mark.parametrize("fields,needle", [
    ({"log_base": "2"}, "log_base='2'"), ({"fmax": 12000.0}, "fmax=12000.0"), ({"hop_length": 0}, "hop_length=0"),
    ({"win_length": 2048}, "win_length=2048"), ({"mean": (0.0,) * 80}, "mean and std come together"),
    ({"mean": (0.0,) * 3, "std": (1.0,) * 3}, "mean has 3 values for 80 bands"), ({"clip_val": 0.0}, "clip_val=0.0"),
    ({"mel_scale": "bark"}, "mel_scale='bark'"), ({"center": False, "hop_length": 255}, "differ by an even number"),
])
def test_bad_mel_settings_are_refused_by_name(fields, needle):
    with pytest.raises(WavflowError, match="invalid MelConfig") as e:
        MelConfig(**fields)
    assert needle in str(e.value)


def test_unknown_preset_is_named():
    with pytest.raises(WavflowError, match="unknown mel preset 'kaldi'; known: tacotron2, hifigan"):
        MelConfig.preset("kaldi")
