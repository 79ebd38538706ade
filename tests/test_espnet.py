"""wavflow behind ESPnet / ParallelWaveGAN-style front ends: the adapter and mel-convention conversions."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.errors import WavflowError
from wavflow.espnet import EspnetVocoder
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.inference import synthesize
from wavflow.melinput import convention_problem, renormalise

from synth_helpers import save_tiny_waveglow


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_waveglow(tmp_path_factory.mktemp("esp") / "tiny.pt")


def test_called_as_espnet_text2speech_calls_its_vocoder(ckpt, short_clip):
    """espnet2's Text2Speech does `wav = self.vocoder(feat_gen_denorm)` with features [T, odim] and reads the
    vocoder's `fs`: exactly that, on a tensor."""
    vocoder = EspnetVocoder(ckpt, seed=3)
    assert isinstance(vocoder, torch.nn.Module) and vocoder.fs == 22050
    y, _ = sf.read(short_clip, dtype="float32")
    feats = mel_spectrogram(torch.from_numpy(y))[0].T.contiguous()  # [T, 80]
    wav = vocoder(feats)
    assert wav.shape == (feats.shape[0] * 256,) and wav.dtype == torch.float32
    torch.testing.assert_close(wav, synthesize(feats.T.numpy(), ckpt, seed=3))  # the same seeded vocoding
    torch.testing.assert_close(vocoder(feats), wav)  # a sentence vocodes the same way every time
    with pytest.raises(WavflowError, match=r"features of shape \(80, 7\): expected \[frames, 80\]"):
        vocoder(torch.zeros(80, 7))


def test_normalised_features_are_denormalised_with_stats(ckpt, short_clip, tmp_path):
    y, _ = sf.read(short_clip, dtype="float32")
    logmel = mel_spectrogram(torch.from_numpy(y))[0].numpy()
    mean, scale = logmel.mean(axis=1), logmel.std(axis=1)
    np.save(tmp_path / "stats.npy", np.stack([mean, scale]))
    normed = (logmel - mean[:, None]) / scale[:, None]
    # sigma 0: no noise, whose seed hashes the mel's bytes and so changes with the last bit of any feature
    plain = EspnetVocoder(ckpt, sigma=0.0)(torch.from_numpy(logmel.T.copy()))
    via_stats = EspnetVocoder(ckpt, sigma=0.0, stats=tmp_path / "stats.npy")(torch.from_numpy(normed.T.copy()))
    # the denormalised features differ from the originals by float32 rounding only
    assert (via_stats - plain).abs().max() < 1e-3
    np.testing.assert_allclose(renormalise(normed, MelConfig(), (mean, scale)), logmel, atol=1e-5)
    # into a vocoder that itself expects normalised features: its own statistics are applied
    theirs = MelConfig().with_stats(np.zeros(80), 2 * np.ones(80))
    np.testing.assert_allclose(renormalise(normed, theirs, (mean, scale)), logmel / 2, atol=1e-5)


def test_a_mel_of_another_convention_is_named(short_clip):
    y, _ = sf.read(short_clip, dtype="float32")
    ln = mel_spectrogram(torch.from_numpy(y))[0].numpy()
    log10 = mel_spectrogram(torch.from_numpy(y), MelConfig.preset("parallel_wavegan"))[0].numpy()
    assert convention_problem(ln, MelConfig()) is None
    assert convention_problem(log10, MelConfig.preset("parallel_wavegan")) is None
    message, refuse = convention_problem(ln, MelConfig.preset("parallel_wavegan"))
    assert refuse and "below this checkpoint's silence floor -10.00" in message
    message, refuse = convention_problem(log10, MelConfig())
    assert not refuse and "log10 or normalised" in message


def test_synthesize_and_stream_take_the_tts_models_stats_and_warn_about_another_convention(ckpt, short_clip,
                                                                                           tmp_path):
    from wavflow.streaming import stream

    y, _ = sf.read(short_clip, dtype="float32")
    logmel = mel_spectrogram(torch.from_numpy(y[:8000]))[0].numpy()
    mean, scale = logmel.mean(axis=1), logmel.std(axis=1) + 0.5
    np.save(tmp_path / "stats.npy", np.stack([mean, scale]))
    normed = (logmel - mean[:, None]) / scale[:, None]
    plain = synthesize(logmel, ckpt, sigma=0.0)
    for stats in (tmp_path / "stats.npy", (mean, scale)):  # a file or the arrays
        assert (synthesize(normed, ckpt, sigma=0.0, stats=stats) - plain).abs().max() < 1e-3
    with_stats = synthesize(normed, ckpt, seed=4, stats=(mean, scale))
    torch.testing.assert_close(torch.cat(list(stream(normed, 0.1, ckpt, seed=4, stats=(mean, scale)))), with_stats,
                               rtol=0, atol=1e-5)  # streaming renormalises the same way
    # normalised features without their stats look like nothing a natural-log model was trained on: a warning
    with pytest.warns(UserWarning, match="log10 or normalised"):
        synthesize(normed, ckpt, sigma=0.0)
    with pytest.raises(WavflowError, match="stats: mean and std must each hold 80 finite values"):
        synthesize(normed, ckpt, stats=(mean[:40], scale[:40]))
    with pytest.raises(WavflowError, match=r"mel\[1\]: values go down to -30.00, below"):
        synthesize([logmel, np.full_like(logmel, -30)], ckpt)


def test_espnet_feats_stats_npz_gives_the_same_normalisation(ckpt, short_clip, tmp_path):
    """ESPnet2's GlobalMVN statistics (count, sum, sum_square over frames) read as per-band mean and std."""
    from wavflow.melinput import load_stats

    y, _ = sf.read(short_clip, dtype="float32")
    frames = mel_spectrogram(torch.from_numpy(y))[0].numpy().T.astype(np.float64)  # [T, 80], ESPnet's layout
    np.savez(tmp_path / "feats_stats.npz", count=np.array(len(frames)), sum=frames.sum(0),
             sum_square=(frames ** 2).sum(0))
    mean, std = load_stats(tmp_path / "feats_stats.npz", 80)
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, frames.std(0), rtol=1e-6)
    np.savez(tmp_path / "other.npz", mean=frames.mean(0))
    with pytest.raises(WavflowError, match="expected ESPnet's arrays 'count', 'sum' and 'sum_square', found mean"):
        load_stats(tmp_path / "other.npz", 80)
    np.savez(tmp_path / "zero.npz", count=np.array(0), sum=frames.sum(0), sum_square=(frames ** 2).sum(0))
    with pytest.raises(WavflowError, match="'count' must be one positive number"):
        load_stats(tmp_path / "zero.npz", 80)
