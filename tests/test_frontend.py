import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, load_mel, mel_basis, mel_spectrogram

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
