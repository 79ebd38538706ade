"""`python -m wavflow.mel`: audio files to Tacotron 2 mel .npy files."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from wavflow.audio import resample
from wavflow.commands import mel as mel_cli
from wavflow.frontend import mel_spectrogram

from synth_helpers import run_in_process, run_module, snapshot


def _main(argv, capsys):
    return run_in_process(mel_cli.run, argv, capsys, prog=mel_cli.PROG)


def test_mel_cli_equals_mel_spectrogram(short_clip, tmp_path):
    out = tmp_path / "clip.npy"
    r = run_module("mel", short_clip, "-o", out)
    assert r.returncode == 0, r.stderr
    got = np.load(out, allow_pickle=False)
    audio, sr = sf.read(str(short_clip), dtype="float32")
    assert sr == 22050
    expected = mel_spectrogram(torch.from_numpy(audio)[None])[0].numpy()
    assert got.dtype == np.float32 and got.shape == (80, len(audio) // 256 + 1)
    np.testing.assert_array_equal(got, expected)


def test_example_mel_in_repo_is_the_clips_mel(short_clip):
    from synth_helpers import REPO

    audio, _ = sf.read(str(short_clip), dtype="float32")
    np.testing.assert_array_equal(np.load(REPO / "examples" / "LJ002-0020.npy"),
                                  mel_spectrogram(torch.from_numpy(audio)[None])[0].numpy())


def test_mel_cli_reads_flac(ljspeech_root, tmp_path, capsys):
    flac = ljspeech_root / "wavs" / "LJ001-0002.flac"
    code, out, err = _main([flac, "-o", tmp_path / "m.npy"], capsys)
    assert code == 0, err
    audio, sr = sf.read(str(flac), dtype="float32")
    assert sr == 22050
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"),
                                  mel_spectrogram(torch.from_numpy(audio)[None])[0].numpy())
    assert "(80, " in out


def test_mel_cli_resamples_other_rates(short_clip, tmp_path, capsys):
    audio, _ = sf.read(str(short_clip), dtype="float32")
    at16k = resample(torch.from_numpy(audio), 22050, 16000).numpy()
    sf.write(str(tmp_path / "16k.wav"), at16k, 16000, subtype="FLOAT")
    code, _, err = _main([tmp_path / "16k.wav", "-o", tmp_path / "16k.npy"], capsys)
    assert code == 0, err
    got = np.load(tmp_path / "16k.npy")
    back = resample(torch.from_numpy(at16k), 16000, 22050)
    assert got.shape == (80, back.shape[0] // 256 + 1)
    np.testing.assert_allclose(got, mel_spectrogram(back[None])[0].numpy(), rtol=0, atol=1e-5)
    # and it is the speech's mel: close to the 22.05 kHz original below 8 kHz, apart from resampling error
    orig = mel_spectrogram(torch.from_numpy(audio)[None])[0].numpy()
    f = min(orig.shape[1], got.shape[1])
    loud = orig[:, :f] > -6  # bands well above the floor, where log differences are meaningful
    assert np.median(np.abs(got[:, :f] - orig[:, :f])[loud]) < 0.05


def test_mel_cli_several_inputs_and_default_output(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        sf.write(str(tmp_path / f"{name}.wav"), 0.1 * rng.standard_normal(5000).astype(np.float32), 22050)
    code, _, err = _main([tmp_path / "x.wav", tmp_path / "y.wav", "-o", tmp_path / "mels" / "deep", "-q"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "mels" / "deep").iterdir()) == ["x.npy", "y.npy"]
    code, _, err = _main([tmp_path / "x.wav", "-q"], capsys)  # no -o: next to the input
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.load(tmp_path / "mels" / "deep" / "x.npy"))
    assert np.load(tmp_path / "x.npy").shape == (80, 5000 // 256 + 1)
    before = snapshot(tmp_path)
    code, _, err = _main([tmp_path, "-o", tmp_path / "dir_in", "-q"], capsys)  # a directory of audio
    assert code == 0, err
    assert snapshot(tmp_path) - before == {"dir_in", "dir_in/x.npy", "dir_in/y.npy"}


def test_mel_cli_presets_and_statistics(short_clip, tmp_path, capsys):
    from wavflow.frontend import MelConfig

    audio, _ = sf.read(str(short_clip), dtype="float32")
    code, _, err = _main([short_clip, "-o", tmp_path / "pwg.npy", "--preset", "parallel_wavegan", "-q"], capsys)
    assert code == 0, err
    pwg = np.load(tmp_path / "pwg.npy")
    expected = mel_spectrogram(torch.from_numpy(audio)[None], MelConfig.preset("parallel_wavegan"))[0].numpy()
    np.testing.assert_array_equal(pwg, expected)
    assert pwg.min() >= -10.0 and np.load(tmp_path / "pwg.npy").shape == (80, len(audio) // 256 + 1)
    mean, scale = pwg.mean(axis=1), pwg.std(axis=1)
    np.save(tmp_path / "stats.npy", np.stack([mean, scale]))
    code, _, err = _main([short_clip, "-o", tmp_path / "norm.npy", "--preset", "parallel_wavegan", "--stats",
                          tmp_path / "stats.npy", "-q"], capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "norm.npy"), (pwg - mean[:, None]) / scale[:, None], atol=1e-5)
    code, _, err = _main([short_clip, "-o", tmp_path / "h.npy", "--preset", "hifigan", "-q"], capsys)
    assert code == 0 and np.load(tmp_path / "h.npy").shape == (80, len(audio) // 256)
    code, _, err = _main([short_clip, "-o", tmp_path / "x.npy", "--preset", "kaldi"], capsys)
    assert code == 2 and "--preset" in err and not (tmp_path / "x.npy").exists()
    np.save(tmp_path / "bad.npy", np.zeros((2, 40)))
    code, _, err = _main([short_clip, "-o", tmp_path / "y.npy", "--stats", tmp_path / "bad.npy"], capsys)
    assert code == 2 and "statistics for 40 bands; the mel has 80" in err and not (tmp_path / "y.npy").exists()


def test_mel_cli_other_rates_and_a_checkpoints_own_convention(short_clip, tmp_path, capsys):
    from wavflow.checkpoint import load
    from wavflow.frontend import MelConfig

    from synth_helpers import save_tiny_waveglow

    audio, _ = sf.read(str(short_clip), dtype="float32")
    at24k = resample(torch.from_numpy(audio), 22050, 24000)
    code, _, err = _main([short_clip, "-o", tmp_path / "24k.npy", "--preset", "espnet", "--sample-rate", "24000",
                          "--hop-length", "300", "--n-fft", "2048", "--win-length", "1200", "-q"], capsys)
    assert code == 0, err
    config = MelConfig.preset("espnet", sample_rate=24000, hop_length=300, n_fft=2048, win_length=1200)
    got = np.load(tmp_path / "24k.npy")
    assert got.shape == (80, at24k.shape[0] // 300 + 1)
    np.testing.assert_allclose(got, mel_spectrogram(at24k[None], config)[0].numpy(), rtol=0, atol=1e-5)
    # --n-fft alone brings the window with it; --sample-rate alone keeps fmax within Nyquist
    code, _, err = _main([short_clip, "-o", tmp_path / "8k.npy", "--sample-rate", "8000", "--n-fft", "512", "-q"],
                         capsys)
    assert code == 0, err
    at8k = resample(torch.from_numpy(audio), 22050, 8000)
    np.testing.assert_allclose(np.load(tmp_path / "8k.npy"), mel_spectrogram(at8k[None], MelConfig(
        sample_rate=8000, n_fft=512, win_length=512, fmax=4000.0))[0].numpy(), rtol=0, atol=1e-5)
    # a checkpoint's convention, its statistics included
    ckpt = save_tiny_waveglow(tmp_path / "tiny.pt")
    code, _, err = _main([short_clip, "-o", tmp_path / "c.npy", "--checkpoint", ckpt, "-q"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"),
                                  mel_spectrogram(torch.from_numpy(audio)[None], load(ckpt).mel_config)[0].numpy())
    for bad, message in [(["--checkpoint", ckpt, "--preset", "espnet"], "leave out --preset and --stats"),
                         (["--sample-rate", "16000", "--fmax", "9000"], "fmax=9000.0 must satisfy"),
                         (["--hop-length", "0"], "--hop-length: invalid positive integer value: '0'")]:
        code, _, err = _main([short_clip, "-o", tmp_path / "bad.npy", *bad], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "bad.npy").exists()
