"""Synthesis: `python -m wavflow.synthesize` and `wavflow.synthesize()` with tiny random-weight checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow import device as device_module
from wavflow import inference, resources
from wavflow.audio import to_int16
from wavflow.commands import synthesize as synth_cli
from wavflow.errors import WavflowError
from wavflow.inference import synthesize

from synth_helpers import REPO, run_in_process, run_module, save_tiny_waveglow, tail_samples, tiny_waveglow

EXAMPLE = REPO / "examples" / "LJ002-0020.npy"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_waveglow(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def model():
    return tiny_waveglow()


@pytest.fixture(scope="module")
def example_mel():
    return np.load(EXAMPLE)


def _main(argv, capsys):
    return run_in_process(synth_cli.run, argv, capsys, prog=synth_cli.PROG)


def test_cli_vocodes_the_example_mel_end_to_end(ckpt, tmp_path, example_mel):
    out = tmp_path / "speech.wav"
    r = run_module("synthesize", EXAMPLE, "--checkpoint", ckpt, "-o", out, "--seed", "7")
    assert r.returncode == 0, r.stderr
    info = sf.info(str(out))
    assert (info.frames, info.samplerate, info.channels, info.subtype) == (example_mel.shape[1] * 256, 22050, 1,
                                                                           "PCM_16")
    # The file is the Python API's audio for the same checkpoint and seed, quantised to 16 bits.
    pcm, _ = sf.read(str(out), dtype="int16")
    expected = to_int16(synthesize(example_mel, ckpt, seed=7))
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 1  # one step: float sums may round either way
    assert np.mean(pcm == expected) > 0.99
    assert "RTF" in r.stderr + r.stdout and "real time" in r.stdout


def test_directory_input_batching_matches_one_by_one(ckpt, tmp_path, example_mel, capsys):
    mels = tmp_path / "mels"
    mels.mkdir()
    lengths = {"a": 24, "b": 17, "c": 24, "d": 9}
    for i, (name, f) in enumerate(lengths.items()):
        np.save(mels / f"{name}.npy", example_mel[:, 10 * i: 10 * i + f])
    (mels / "notes.txt").write_text("not a mel: ignored by the directory scan")
    code, _, err = _main([mels, "--checkpoint", ckpt, "-o", tmp_path / "batched", "--batch-size", "3", "--seed", "1",
                          "-q"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == ["a.wav", "b.wav", "c.wav", "d.wav"]
    for name, f in lengths.items():
        code, _, err = _main([mels / f"{name}.npy", "--checkpoint", ckpt, "-o", tmp_path / "single",
                              "--batch-size", "1", "--seed", "1", "-q"], capsys)
        assert code == 0, err
        batched, sr = sf.read(str(tmp_path / "batched" / f"{name}.wav"), dtype="int16")
        single, _ = sf.read(str(tmp_path / "single" / f"{name}.wav"), dtype="int16")
        assert sr == 22050 and len(batched) == len(single) == f * 256  # each file its own length
        diff = np.abs(batched.astype(np.int32) - single)
        # Sorted by length, batches are [a, c, b] and [d]: a, c and d are unpadded and must match throughout;
        # b is padded from 17 to 24 frames, which only its last tail_samples() can see.
        head = f * 256 - (tail_samples() if name == "b" else 0)
        assert diff[:head].max() <= 1, name


def test_batched_api_gives_each_mel_its_own_noise(model, example_mel):
    mels = [example_mel[:, :20], example_mel[:, 30:42], example_mel[:, 50:70]]
    single = [synthesize(m, model=model, seed=3, batch_size=1) for m in mels]
    batched = synthesize(mels, model=model, seed=3, batch_size=3)
    reordered = synthesize(mels[::-1], model=model, seed=3, batch_size=3)[::-1]
    tail = tail_samples()
    for s, b, r, m in zip(single, batched, reordered, mels, strict=True):
        t = m.shape[1] * 256
        assert s.shape == b.shape == r.shape == (t,)
        padded = m.shape[1] < 20
        head = t - tail if padded else t
        torch.testing.assert_close(b[:head], s[:head], rtol=0, atol=1e-5)
        torch.testing.assert_close(r, b, rtol=0, atol=1e-5)  # order within the batch does not matter
    # The same mel content gets the same noise; different content gets different noise.
    assert not torch.allclose(single[0][:1000], single[2][:1000])


def test_api_layouts_and_return_shapes(model, example_mel, tmp_path):
    mel = example_mel[:, :15]
    ref = synthesize(mel, model=model, seed=0)
    assert ref.shape == (15 * 256,) and ref.dtype == torch.float32
    torch.testing.assert_close(synthesize(mel.T.copy(), model=model, seed=0), ref, rtol=0, atol=0)  # (F, 80)
    torch.testing.assert_close(synthesize(torch.from_numpy(mel), model=model, seed=0), ref, rtol=0, atol=0)
    one = synthesize(mel[None], model=model, seed=0)  # (1, 80, F): a batch of one
    assert one.shape == (1, 15 * 256)
    torch.testing.assert_close(one[0], ref, rtol=0, atol=0)
    np.save(tmp_path / "m.npy", mel)
    torch.testing.assert_close(synthesize(tmp_path / "m.npy", model=model, seed=0), ref, rtol=0, atol=0)
    batch = torch.from_numpy(np.stack([mel, example_mel[:, 40:55]]))
    out = synthesize(batch, model=model, seed=0)
    assert out.shape == (2, 15 * 256)
    torch.testing.assert_close(out[0], ref, rtol=0, atol=1e-5)


def test_api_seed_and_model_options(model, example_mel):
    mel = example_mel[:, :12]
    a, b = synthesize(mel, model=model, seed=5), synthesize(mel, model=model, seed=5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, synthesize(mel, model=model, seed=6))
    torch.manual_seed(11)
    c = synthesize(mel, model=model)
    torch.manual_seed(11)
    assert torch.equal(c, synthesize(mel, model=model))  # seed=None follows torch's global generator
    # sigma reaches WaveGlow.infer: at sigma 0 the noise, hence the seed, no longer matters.
    z0 = synthesize(mel, model=model, seed=1, sigma=0.0)
    torch.testing.assert_close(z0, synthesize(mel, model=model, seed=2, sigma=0.0), rtol=0, atol=0)
    assert not torch.allclose(z0, a)
    with pytest.raises(WavflowError, match="temperature.*waveglow"):
        synthesize(mel, model=model, temperature=0.5)


def test_api_loads_a_checkpoint_and_refuses_bad_mels(ckpt, model, example_mel):
    mel = example_mel[:, :10]
    torch.testing.assert_close(synthesize(mel, ckpt, seed=2), synthesize(mel, model=model, seed=2), rtol=0, atol=1e-6)
    with pytest.raises(WavflowError, match=r"shape \(40, 10\)"):
        synthesize(mel[:40], ckpt)
    with pytest.raises(WavflowError, match="NaN"):
        synthesize(np.full((80, 5), np.nan, np.float32), ckpt)


def test_shipped_checkpoint_choice(monkeypatch, tmp_path, ckpt, capsys, example_mel):
    monkeypatch.setattr(resources, "_homes", lambda folder: [tmp_path / folder])
    with pytest.raises(WavflowError, match="waveglow-ljspeech-mini.pt: shipped waveglow checkpoint not found"):
        synthesize(example_mel[:, :5])
    code, _, err = _main([EXAMPLE, "--model", "wavenet", "-o", tmp_path / "o"], capsys)
    assert code == 2 and "wavenet-ljspeech-mini.pt" in err and len(err.splitlines()) == 1
    (tmp_path / "checkpoints").mkdir()
    save_tiny_waveglow(tmp_path / "checkpoints" / "waveglow-ljspeech-mini.pt")
    torch.testing.assert_close(synthesize(example_mel[:, :5], seed=0), synthesize(example_mel[:, :5], ckpt, seed=0))


def test_shipped_files_resolve_in_the_checkout_and_in_a_wheel(monkeypatch, tmp_path):
    assert resources.shipped_checkpoint("student") == REPO / "checkpoints" / "student-ljspeech-mini.pt"
    assert resources.example_mel() == REPO / "examples" / "LJ002-0020.npy"
    # A wheel puts them inside the package (pyproject.toml's package-dir): that copy is found from anywhere.
    package = tmp_path / "site-packages" / "wavflow"
    (package / "checkpoints").mkdir(parents=True)
    (package / "examples").mkdir()
    (package / "checkpoints" / "student-ljspeech-mini.pt").write_bytes(b"x")
    (package / "examples" / "LJ002-0020.npy").write_bytes(b"x")
    monkeypatch.setattr(resources, "__file__", str(package / "resources.py"))
    assert resources.shipped_checkpoint("student") == package / "checkpoints" / "student-ljspeech-mini.pt"
    assert resources.example_mel() == package / "examples" / "LJ002-0020.npy"
    with pytest.raises(WavflowError, match="wavenet-ljspeech-mini.pt: shipped wavenet checkpoint not found"):
        resources.shipped_checkpoint("wavenet")


def test_example_flag_vocodes_the_shipped_example(tmp_path, ckpt, capsys, example_mel):
    code, _, err = _main(["--example", "--checkpoint", ckpt, "-o", tmp_path / "e.wav", "-q"], capsys)
    assert code == 0, err
    audio, sr = sf.read(str(tmp_path / "e.wav"), dtype="float32")
    assert audio.shape == (example_mel.shape[1] * 256,) and sr == 22050
    code, _, err = _main(["-o", tmp_path / "none.wav"], capsys)
    assert code == 2 and "--example" in err and len(err.splitlines()) == 1


def test_progress_bar_reports_real_time_factor(model, example_mel, capsys):
    list(inference.vocode(model, [example_mel[:, :8], example_mel[:, 8:14]], seed=0, batch_size=1, progress=True))
    err = capsys.readouterr().err
    assert "RTF" in err and "wall/audio" in err and "x real time" in err and "s audio" in err


def test_wavenet_batch_noise_is_per_item(example_mel):
    """The teacher draws per-item noise too (its `noise` argument), so a batched item equals its solo run
    wherever the padding cannot reach (causal model: everything but the last frames' conditioning context)."""
    from wavflow.models import build_model
    from wavflow.models.wavenet import WaveNetConfig

    torch.manual_seed(0)
    teacher = build_model("wavenet", WaveNetConfig.tiny()).eval()
    mels = [example_mel[:, 40:46], example_mel[:, 60:64]]
    single = [synthesize(m, model=teacher, seed=4, batch_size=1) for m in mels]
    batched = synthesize(mels, model=teacher, seed=4, batch_size=2)
    torch.testing.assert_close(batched[0], single[0], rtol=0, atol=1e-5)  # the longest: no padding at all
    assert batched[1].shape == single[1].shape == (4 * 256,)
    # Padding frames reach back through the frame-context conv (kernel 5: 2 frames) and each x4 stage's
    # smoothing conv (kernel 5: 2 steps at 64, 16, 4 and 1 samples per step).
    head = (4 - 2) * 256 - 2 * (64 + 16 + 4 + 1)
    torch.testing.assert_close(batched[1][:head], single[1][:head], rtol=0, atol=1e-5)
    # temperature reaches the teacher through infer(**options): at 0 it emits its mean, whatever the seed.
    t0 = synthesize(mels[1], model=teacher, seed=1, temperature=0.0)
    torch.testing.assert_close(t0, synthesize(mels[1], model=teacher, seed=2, temperature=0.0), rtol=0, atol=0)
    assert not torch.allclose(t0, single[1])
    with pytest.raises(WavflowError, match="'sigma' does not apply to a wavenet"):
        synthesize(mels[1], model=teacher, sigma=0.5)


def test_denoise_applies_nvidias_denoiser_per_item(model, ckpt, example_mel, tmp_path, capsys):
    from wavflow.denoiser import Denoiser

    mels = [example_mel[:, :14], example_mel[:, 20:29]]
    plain = synthesize(mels, model=model, seed=8)
    clean = synthesize(mels, model=model, seed=8, denoise=0.05)
    reference = Denoiser(model)
    for p, c, m in zip(plain, clean, mels, strict=True):
        assert c.shape == (m.shape[1] * 256,)
        # each item is denoised after cropping to its own length, never across the batch padding
        torch.testing.assert_close(c, reference.denoise(p, strength=0.05), rtol=0, atol=1e-6)
        assert not torch.allclose(c, p)
    # and the command line's --denoise is the same
    np.save(tmp_path / "m.npy", mels[0])
    code, _, err = _main([tmp_path / "m.npy", "--checkpoint", ckpt, "--denoise", "0.05", "--seed", "8", "-q",
                          "-o", tmp_path / "m.wav"], capsys)
    assert code == 0, err
    pcm, _ = sf.read(str(tmp_path / "m.wav"), dtype="int16")
    assert np.abs(pcm.astype(np.int32) - to_int16(clean[0])).max() <= 1


def test_denoise_needs_a_waveglow(tmp_path, capsys, example_mel):
    from wavflow.checkpoint import model_payload, save_checkpoint
    from wavflow.models import build_model
    from wavflow.models.wavenet import WaveNetConfig

    save_checkpoint(tmp_path / "wn.pt", model_payload(build_model("wavenet", WaveNetConfig.tiny())))
    np.save(tmp_path / "m.npy", example_mel[:, :3])
    code, _, err = _main([tmp_path / "m.npy", "--checkpoint", tmp_path / "wn.pt", "--denoise", "0.1",
                          "-o", tmp_path / "out"], capsys)
    assert code == 2 and "--denoise needs a WaveGlow" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _tiny_family(family: str) -> torch.nn.Module:
    from wavflow.models import build_model
    from wavflow.models.student import StudentConfig
    from wavflow.models.wavenet import WaveNetConfig

    if family == "waveglow":
        return tiny_waveglow()
    torch.manual_seed(0)
    model = build_model(family, WaveNetConfig.tiny() if family == "wavenet" else StudentConfig.tiny()).eval()
    if family == "student":  # zero-initialised flow outputs would make the student the identity
        with torch.no_grad():
            for f in model.flows:
                f.out.weight.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("family", ["waveglow", "wavenet", "student"])
def test_every_family_implements_the_vocoder_interface(family, example_mel):
    from wavflow.models import Vocoder

    model = _tiny_family(family)
    assert isinstance(model, Vocoder) and model.model_type == family
    mel = torch.from_numpy(example_mel[None, :, 30:33].copy())
    T = 3 * 256
    noise = model.draw_noise(1, T, torch.Generator().manual_seed(0))
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert model.draw_noise(2, 2 * T).shape[-1] == 2 * noise.shape[-1]  # time last, proportional to the length
    # infer draws exactly draw_noise's noise from its generator
    audio = model.infer(mel, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, T) and audio.abs().max() > 0
    torch.testing.assert_close(model.infer(mel, noise=noise, frames=[3]), audio, rtol=0, atol=0)
    # an option outside infer_options is refused by the model and by the API, naming the model type
    with pytest.raises(WavflowError, match=f"'bogus' does not apply to a {family} model"):
        model.infer(mel, bogus=1)
    with pytest.raises(WavflowError, match=f"'bogus' does not apply to a {family} model"):
        inference.check_options(model, {"bogus": 1})
    assert inference.check_options(model, dict.fromkeys(model.infer_options)) == {}
    assert family == "waveglow" or "sigma" not in model.infer_options


def test_student_batch_noise_is_per_item(example_mel):
    """The student draws per-item noise through draw_noise like the others, so the longest mel of a batch gets
    the audio it gets alone, and a shorter one too wherever its padding cannot reach (causal flows: only the
    upsampler's view of its last frames)."""
    student = _tiny_family("student")
    mels = [example_mel[:, 40:46], example_mel[:, 60:64]]
    single = [synthesize(m, model=student, seed=4, batch_size=1) for m in mels]
    batched = synthesize(mels, model=student, seed=4, batch_size=2)
    torch.testing.assert_close(batched[0], single[0], rtol=0, atol=1e-5)  # the longest: no padding at all
    head = (4 - 2) * 256 - 2 * (64 + 16 + 4 + 1)  # as for the teacher's upsampler (test above)
    torch.testing.assert_close(batched[1][:head], single[1][:head], rtol=0, atol=1e-5)
    assert not torch.allclose(single[0][:1000], synthesize(mels[0], model=student, seed=5)[:1000])
    with pytest.raises(WavflowError, match="'sigma' does not apply to a student"):
        synthesize(mels[1], model=student, sigma=0.5)


# ---------------------------------------------------------------------------------------------------------------
# --dtype bf16

def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(monkeypatch, tmp_path, ckpt, capsys, example_mel):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"sse2", "avx2", "avx512f"})
    assert not device_module.native_bf16("cpu")
    out = tmp_path / "out"
    code, _, err = _main([EXAMPLE, "--checkpoint", ckpt, "--dtype", "bf16", "-o", out], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--dtype bf16" in err and "avx512_bf16" in err and "amx_bf16" in err
    assert not out.exists()  # refused before anything was written
    with pytest.raises(WavflowError, match="--dtype bf16"):
        synthesize(example_mel[:, :5], ckpt, dtype="bf16")
    with pytest.raises(WavflowError, match="dtype 'fp16'"):
        synthesize(example_mel[:, :5], ckpt, dtype="fp16")


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    for flags, expected in [({"avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True), ({"avx512f"}, False)]:
        monkeypatch.setattr(device_module, "cpu_flags", lambda flags=flags: flags)
        assert device_module.native_bf16("cpu") is expected
    monkeypatch.setattr(device_module, "cpu_flags", lambda: None)  # no /proc: torch's probe answers
    assert device_module.native_bf16("cpu") == bool(torch.cpu._is_avx512_bf16_supported()
                                                 or torch.cpu._is_amx_tile_supported())


def test_bf16_synthesis_is_close_to_fp32(monkeypatch, tmp_path, ckpt, capsys, example_mel):
    """With the capability check passed (bf16 is emulated on a CPU without it: same numbers, slower), WaveGlow
    in bf16 gives float32 audio within a small log-mel distance of fp32's for the same seed, through the API
    and the command line; the WaveNet teacher is refused."""
    from wavflow.metrics import logmel_l1

    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx512_bf16"})
    mel = example_mel[:, :40]
    full = synthesize(mel, ckpt, seed=3)
    half = synthesize(mel, ckpt, seed=3, dtype="bf16")
    assert half.dtype == torch.float32 and half.shape == full.shape and not torch.equal(half, full)
    assert logmel_l1(half, full) < 0.05
    wav = tmp_path / "h.wav"
    code, _, err = _main([EXAMPLE, "--checkpoint", ckpt, "--dtype", "bf16", "-o", wav, "-q"], capsys)
    assert code == 0, err
    written = sf.read(wav, dtype="float32")[0]
    reference = synthesize(np.load(EXAMPLE), ckpt, seed=0, dtype="bf16")
    np.testing.assert_allclose(written, to_int16(reference).astype(np.float32) / 32768, atol=1 / 32768)
    with pytest.raises(WavflowError, match="WaveNet teacher has no bf16 path"):
        synthesize(mel, model="wavenet", dtype="bf16")
    loaded = inference.load_vocoder(ckpt)
    with pytest.raises(WavflowError, match="the model passed is in float32"):
        synthesize(mel, model=loaded, dtype="bf16")
