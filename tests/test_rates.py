"""Other sample rates and hops end to end: WaveGlow's groups and upsampler derived from the hop (or refused in one
line), then tiny models of all three families trained on fixture clips resampled to 16 kHz / hop 200 and
24 kHz / hop 300, each vocoding exactly F * hop samples at its own rate, through the API, the command line,
streaming and the ESPnet adapter.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torchaudio.functional import resample as torchaudio_resample

from wavflow.checkpoint import load as load_model
from wavflow.checkpoint import read_checkpoint
from wavflow.commands import synthesize as synth_cli
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.inference import synthesize
from wavflow.models import config_to_dict, upsample_factors
from wavflow.models.student import StudentConfig
from wavflow.models.waveglow import WaveGlow, WaveGlowConfig
from wavflow.models.waveglow_config import group_size
from wavflow.models.wavenet import WaveNetConfig
from wavflow.streaming import stream
from wavflow.train import train

from synth_helpers import clip, run_in_process

# (name, mel settings): ESPnet / ParallelWaveGAN's log10 80-7600 Hz bands at two common rates, and HiFi-GAN's
# natural-log convention at 44.1 kHz / hop 512.
RATES = {
    "16k": {"preset": "espnet", "sample_rate": 16000, "n_fft": 1024, "hop_length": 200, "win_length": 800},
    "24k": {"preset": "parallel_wavegan", "sample_rate": 24000, "n_fft": 2048, "hop_length": 300,
            "win_length": 1200},
    "44k": {"preset": "hifigan", "sample_rate": 44100, "n_fft": 2048, "hop_length": 512, "win_length": 2048,
            "fmax": 22050.0},  # HiFi-GAN's uncentred frames (T // hop of them), natural log
}
# groups derived from the hop; a one-frame upsampler kernel (the tiny recipe's), whatever the hop
TINY_WAVEGLOW = dataclasses.replace(WaveGlowConfig.tiny(), n_group=None, upsample_frames=1)


# ------------------------------------------------------------------------------------------------ WaveGlow shapes

@pytest.mark.parametrize("hop, n_group", [(256, 8), (200, 8), (300, 10), (512, 8), (240, 8), (150, 10), (6, 6),
                                          (4, 4), (2, 2)])
def test_waveglow_groups_come_from_the_hop(hop, n_group):
    assert group_size(hop) == n_group
    assert hop % n_group == 0 and n_group % 2 == 0
    # the rule: no even divisor of the hop lies nearer 8 (a tie goes to the larger)
    assert all(abs(d - 8) > abs(n_group - 8) or (abs(d - 8) == abs(n_group - 8) and d <= n_group)
               for d in range(2, hop + 1, 2) if hop % d == 0)


def test_waveglow_resolves_groups_and_kernel_and_refuses_what_the_hop_cannot_take():
    at24k = MelConfig.preset("parallel_wavegan", sample_rate=24000, n_fft=2048, hop_length=300, win_length=1200)
    model = WaveGlow(WaveGlowConfig.tiny().__class__(n_flows=4, n_early_every=2, n_early_size=2, wn_layers=2,
                                                     wn_channels=16), at24k)
    assert (model.config.n_group, model.config.upsample_kernel, model.config.upsample_frames) == (10, 1200, 4)
    assert model.upsample.weight.shape == (80, 80, 1200) and model.upsample.stride == (300,)
    assert WaveGlow(TINY_WAVEGLOW, at24k).config.upsample_kernel == 300  # one frame
    # NVIDIA's model at hop 256, and a resolved config resolves to itself
    assert WaveGlow().config == WaveGlowConfig(n_group=8, upsample_kernel=1024, upsample_frames=4)
    assert WaveGlow().config.resolved(256) == WaveGlow().config
    with pytest.raises(WavflowError, match="upsample_kernel 256 and upsample_frames 4 disagree at hop 256"):
        WaveGlow(dataclasses.replace(TINY_WAVEGLOW, upsample_kernel=256, upsample_frames=4))
    with pytest.raises(WavflowError, match=r"^invalid WaveGlowConfig: n_group 8 must divide the hop length 300 "):
        WaveGlow(WaveGlowConfig.tiny(), MelConfig(sample_rate=24000, n_fft=2048, hop_length=300, win_length=1200))
    with pytest.raises(WavflowError, match="upsample_kernel 1000 must be a multiple of the hop length 300"):
        WaveGlow(dataclasses.replace(TINY_WAVEGLOW, upsample_kernel=1000),
                 MelConfig(sample_rate=24000, n_fft=2048, hop_length=300, win_length=1200))
    with pytest.raises(WavflowError, match="the hop length 275 is odd"):
        WaveGlow(TINY_WAVEGLOW, MelConfig(n_fft=1100, hop_length=275, win_length=1100))
    # hop 4 gives groups of 4, which 6 flows' early outputs empty: refused by the config's own check
    with pytest.raises(WavflowError, match="fewer than 2 channels"):
        WaveGlow(dataclasses.replace(TINY_WAVEGLOW, n_flows=6), MelConfig(n_fft=64, hop_length=4, win_length=64))


# --------------------------------------------------------------------------------------------- trained at a rate

@pytest.fixture(scope="module", params=sorted(RATES))
def trained(request, tmp_path_factory, ljspeech_root):
    """Tiny WaveGlow, teacher and student, a few steps each on three 22,050 Hz fixture clips resampled to the
    rate. Learning is not the point (test_train covers it): the settings, shapes and lengths are."""
    name = request.param
    root = tmp_path_factory.mktemp(f"clips{name}")
    (root / "wavs").mkdir()
    ids = ["LJ002-0020", "LJ001-0002", "LJ001-0008"]
    for i in ids:
        (root / "wavs" / clip(i).name).symlink_to(clip(i))
    (root / "metadata.csv").write_text("".join(f"{i}|text|text\n" for i in ids))
    out = tmp_path_factory.mktemp(f"runs{name}")
    hop = RATES[name]["hop_length"]

    def run(model: str, model_config, **extra):
        config = {"model": model, "model_config": config_to_dict(model_config), "mel": dict(RATES[name]),
                  "data": {"root": str(root), "n_valid": 1, "segment_length": 16 * hop, "batch_size": 2,
                           "num_workers": 0},
                  "train": {"lr": 1e-3, "max_steps": 2, "log_every": 1, "valid_every": 0, "ckpt_every": 2,
                            "tensorboard": False, "threads": 1, "progress": False}, **extra}
        path = out / f"{model}.yaml"
        path.write_text(yaml.safe_dump(config))
        return train(path, out / model)

    trainers = {"waveglow": run("waveglow", TINY_WAVEGLOW),
                "wavenet": run("wavenet", WaveNetConfig.tiny())}
    trainers["student"] = run("student", StudentConfig.tiny(), teacher=str(out / "wavenet" / "last.pt"))
    return name, out, trainers


def test_training_at_the_rate_stores_its_convention_in_every_checkpoint(trained):
    name, out, trainers = trained
    settings = {k: v for k, v in RATES[name].items() if k != "preset"}
    for family, trainer in trainers.items():
        assert all(np.isfinite(trainer.losses)) and len(trainer.losses) == 2
        ck = read_checkpoint(out / family / "last.pt")
        # every field: the preset's, with the rate's overrides
        assert ck["mel_config"] == MelConfig.preset(RATES[name]["preset"], **settings).to_dict()
    glow = read_checkpoint(out / "waveglow" / "last.pt")["model_config"]
    assert glow["n_group"] == group_size(settings["hop_length"])  # numbers in the file, not None
    assert (glow["upsample_kernel"], glow["upsample_frames"]) == (settings["hop_length"], 1)
    for family in ("wavenet", "student"):  # upsampling stages derived from the hop
        model = load_model(out / family / "last.pt")
        assert np.prod(upsample_factors(model.config, model.mel_config)) == settings["hop_length"]


def test_the_resample_warning_is_printed_once_in_one_line(ljspeech_root, tmp_path, capfd):
    root = tmp_path / "clips"
    (root / "wavs").mkdir(parents=True)
    ids = ["LJ002-0020", "LJ001-0002"]
    for i in ids:
        (root / "wavs" / clip(i).name).symlink_to(clip(i))
    (root / "metadata.csv").write_text("".join(f"{i}|t|t\n" for i in ids))
    config = {"model": "waveglow", "model_config": config_to_dict(TINY_WAVEGLOW), "mel": dict(RATES["16k"]),
              "data": {"root": str(root), "n_valid": 0, "segment_length": 3200, "batch_size": 2, "num_workers": 0},
              "train": {"max_steps": 1, "ckpt_every": 1, "valid_every": 0, "tensorboard": False, "threads": 1,
                        "progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    train(tmp_path / "c.yaml", tmp_path / "out")
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("wavflow.train: warning:")]
    assert len(lines) == 1 and "at 22050 Hz" in lines[0] and "resampled to mel.sample_rate=16000 Hz" in lines[0]


@pytest.mark.parametrize("family", ["waveglow", "wavenet", "student"])
def test_each_family_vocodes_exactly_frames_times_hop_at_its_rate(trained, family, tmp_path, capsys):
    name, out, _ = trained
    ckpt = out / family / "last.pt"
    model = load_model(ckpt)
    mc = model.mel_config
    y, sr = sf.read(clip("LJ001-0008"), dtype="float32")
    y = torchaudio_resample(torch.from_numpy(y), sr, mc.sample_rate)[: int(0.4 * mc.sample_rate)]
    mel = mel_spectrogram(y, mc)[0].numpy()
    frames = mel.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mel of the checkpoint's own convention draws no warning
        audio = synthesize(mel, ckpt, seed=3)
    assert audio.shape == (frames * mc.hop_length,) and torch.isfinite(audio).all()
    if family != "wavenet":  # the teacher's stream equality is test_streaming's; here the shapes at a rate
        chunks = list(stream(mel, 0.05, ckpt, seed=3))
        assert torch.allclose(torch.cat(chunks), audio, atol=1e-5)
    # the command line writes a WAV at the checkpoint's rate
    np.save(tmp_path / "m.npy", mel)
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "m.npy", "--checkpoint", ckpt, "-o", tmp_path / "a.wav",
                                                    "-q"], capsys, prog=synth_cli.PROG)
    assert code == 0 and err == ""
    info = sf.info(tmp_path / "a.wav")
    assert info.samplerate == mc.sample_rate and info.frames == frames * mc.hop_length
    # ESPnet's call: feats [T, n_mels] -> wav [T * hop], fs the checkpoint's rate
    from wavflow.espnet import EspnetVocoder
    vocoder = EspnetVocoder(ckpt, seed=3)
    assert vocoder.fs == mc.sample_rate
    assert vocoder(torch.from_numpy(mel.T.copy())).shape == (frames * mc.hop_length,)


def test_a_mel_of_the_other_log_base_is_refused_or_warned_about(trained, tmp_path, capsys):
    name, out, _ = trained
    ckpt = out / "waveglow" / "last.pt"
    mc = load_model(ckpt).mel_config
    y, sr = sf.read(clip("LJ001-0008"), dtype="float32")
    y = torchaudio_resample(torch.from_numpy(y), sr, mc.sample_rate)
    cli = ["--checkpoint", ckpt, "-o", tmp_path / "out"]
    if mc.log_base == "e":  # a natural-log checkpoint given log10 features, then values far below its floor
        np.save(tmp_path / "log10.npy", mel_spectrogram(y, dataclasses.replace(mc, log_base="10"))[0].numpy())
        code, _, err = run_in_process(synth_cli.run, [tmp_path / "log10.npy", *cli, "-q"], capsys,
                                      prog=synth_cli.PROG)
        assert code == 0 and err.count("\n") == 1 and "is it log10 or normalised?" in err
        np.save(tmp_path / "low.npy", np.full((80, 20), -30, np.float32))
        code, _, err = run_in_process(synth_cli.run, [tmp_path / "low.npy", *cli], capsys, prog=synth_cli.PROG)
        assert code == 2 and "below this checkpoint's silence floor -11.51" in err
        assert not (tmp_path / "out" / "low.wav").exists()
        return
    ln_config = dataclasses.replace(mc, log_base="e", clip_val=1e-5)
    # a TTS model's natural-log mel seldom reaches the floor: quietest 1% near -9, nothing below -10.5
    speech = np.maximum(mel_spectrogram(y, ln_config)[0].numpy(), -10.5)
    silent = mel_spectrogram(torch.cat([torch.zeros(mc.sample_rate // 10), y]), ln_config)[0].numpy()  # -11.51
    assert np.percentile(speech, 1) < -8 and silent.min() < -11.5
    np.save(tmp_path / "speech.npy", speech)
    np.save(tmp_path / "silent.npy", silent)
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "silent.npy", *cli], capsys, prog=synth_cli.PROG)
    assert code == 2 and err.count("\n") == 1 and "below this checkpoint's silence floor -10.00" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "speech.npy", *cli, "-q"], capsys, prog=synth_cli.PROG)
    assert code == 0 and err.count("\n") == 1 and "warning" in err and "is it natural-log?" in err
    # the same speech in the checkpoint's own convention passes silently
    np.save(tmp_path / "own.npy", mel_spectrogram(y, mc)[0].numpy())
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "own.npy", *cli, "-q"], capsys, prog=synth_cli.PROG)
    assert code == 0 and err == ""


def test_the_length_limit_is_ten_minutes_at_the_checkpoints_rate(trained, tmp_path, capsys):
    name, out, _ = trained
    ckpt = out / "waveglow" / "last.pt"
    mc = load_model(ckpt).mel_config
    limit = 600 * mc.sample_rate // mc.hop_length  # 48,000 frames at 16 and 24 kHz, not the default's 51,679
    np.save(tmp_path / "long.npy", np.full((80, limit + 1), -5, np.float32))
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "long.npy", "--checkpoint", ckpt, "-o",
                                                    tmp_path / "out"], capsys, prog=synth_cli.PROG)
    assert code == 2 and f"mel has {limit + 1} frames, more than the limit of {limit}" in err, err
    assert not (tmp_path / "out").exists()
