"""The WaveNet teacher with a source (`WaveNetConfig.source_harmonics`): the harmonic mean shifts the Gaussian's mean
and the excitation joins the conditioning. Exact checks: generated audio is what the density's inverse gives for
the same noise, causality by gradient, naive == cached == cached_torch, a grown teacher computes what it did, and
the trainer feeds it pitch tracks. Its stream (chunked == whole) is tested beside the student's, in
test_student_source.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from wavflow import pitch as pitch_module
from wavflow.checkpoint import load, model_from_payload, model_payload, save_checkpoint
from wavflow.errors import WavflowError
from wavflow.models.wavenet import WaveNet, WaveNetConfig
from wavflow.pitch import PitchTrack

from synth_helpers import REPO, live_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOP = 256


def _teacher(seed: int = 0, **kw) -> WaveNet:
    """A tiny source teacher with every source weight moved off its zero start: voiced throughout (a loud
    harmonic mean), an excitation that reaches the gates, and a livelier head."""
    torch.manual_seed(seed)
    model = WaveNet(WaveNetConfig.tiny(source_harmonics=4, source_channels=8, **kw)).eval()
    with torch.no_grad():
        model.out2.weight.mul_(4)
    return live_source(model)


def _mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) - 4


def test_the_source_is_in_the_density_and_the_samples():
    model = _teacher()
    mel = _mel(1, 6, seed=1)
    track = model.source_track(mel)
    h = model.mean_of(track, 6 * HOP)
    assert track.voiced.all() and h.abs().max() > 0.05
    assert (model.conditioning(mel, 6 * HOP, track) - model.upsampler(mel)).abs().max() > 0.01
    # the generated audio is h plus a residual drawn from the stack's Gaussian: inverting the density recovers
    # the noise wherever the sample was not clamped
    noise = model.draw_noise(1, 6 * HOP, torch.Generator().manual_seed(2))
    audio = model.generate(mel, method="naive", noise=noise, temperature=1.0)
    with torch.no_grad():
        mu, log_sigma = model.dist.mu_log_sigma(model(audio, mel))
    inside = (audio - h).abs() < 0.999  # the residual was not clamped
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(((audio - mu) * torch.exp(-log_sigma))[inside], noise[:, 0][inside],
                               atol=2e-3, rtol=0)
    # the mean includes h: the stack alone, on the residual, gives the rest
    with torch.no_grad():
        plain = model.head(model.stack(torch.nn.functional.pad(audio - h, (1, -1))[:, None],
                                       model.conditioning(mel, 6 * HOP, track)))
    torch.testing.assert_close(mu, plain[:, 0] + h, atol=1e-6, rtol=0)


def test_causality_by_gradient():
    model = _teacher(seed=3)
    mel = _mel(1, 2, seed=4)
    audio = (0.1 * torch.randn(1, 2 * HOP)).requires_grad_(True)
    t = 300
    model(audio, mel)[0, :, t].sum().backward()
    grad = audio.grad[0]
    assert torch.all(grad[t:] == 0) and grad[:t].abs().sum() > 0


def test_naive_cached_and_batched_generation_agree():
    model = _teacher(seed=5)
    mel = _mel(2, 3, seed=6)
    runs = {m: model.generate(mel, method=m, temperature=0.8, generator=torch.Generator().manual_seed(7))
            for m in ("naive", "cached", "cached_torch")}
    assert runs["naive"].abs().max() > 0.05
    torch.testing.assert_close(runs["cached"], runs["naive"], atol=1e-4, rtol=0)
    torch.testing.assert_close(runs["cached_torch"], runs["naive"], atol=1e-4, rtol=0)
    alone = model.generate(mel[1:], method="cached", temperature=0.8,
                           noise=model.draw_noise(2, 3 * HOP, torch.Generator().manual_seed(7))[1:])
    torch.testing.assert_close(alone[0], runs["cached"][1], atol=1e-4, rtol=0)


def test_a_plain_teacher_grows_a_source_and_computes_what_it_did():
    torch.manual_seed(0)
    plain = WaveNet(WaveNetConfig.tiny()).eval()
    grown = plain.grown(WaveNetConfig.tiny(source_harmonics=4, source_channels=8)).eval()
    assert grown.source is not None and grown.needs_pitch and not plain.needs_pitch
    mel = _mel(1, 4, seed=1)
    noise = plain.draw_noise(1, 4 * HOP, torch.Generator().manual_seed(0))
    assert torch.equal(grown.generate(mel, noise=noise), plain.generate(mel, noise=noise))
    audio = 0.1 * torch.randn(1, 4 * HOP)
    with torch.no_grad():
        torch.testing.assert_close(grown.log_likelihood(audio, mel), plain.log_likelihood(audio, mel),
                                   atol=1e-6, rtol=0)
    with pytest.raises(WavflowError, match="cannot grow .*layers"):
        plain.grown(WaveNetConfig.tiny(layers=4, source_harmonics=4))
    with pytest.raises(WavflowError, match="cannot grow .*source_harmonics"):  # a source is never taken away
        grown.grown(plain.config)
    assert grown.grown(WaveNetConfig.tiny(source_harmonics=4, source_channels=8, pitch_weight=0.5)) is not None


def test_training_loss_needs_pitch_and_trains_the_source():
    model = _teacher(seed=2).train()
    audio, mel = 0.1 * torch.randn(2, 4 * HOP), _mel(2, 5, seed=3)
    f0, voiced = torch.full((2, 5), 120.0), torch.ones(2, 5)
    with pytest.raises(WavflowError, match="pitch tracks"):
        model.training_loss(audio, mel)
    loss, logs = model.training_loss(audio, mel, pitch=(f0, voiced))
    assert math.isfinite(loss.item()) and {"nll", "pitch/voicing_bce", "pitch/f0_octaves"} <= set(logs)
    loss.backward()
    for part in (model.source, model.harmonics, model.excite):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # the pitch term is weighted as configured
    model.config.pitch_weight = 0.0
    loss0, logs0 = model.training_loss(audio, mel, pitch=(f0, voiced))
    torch.testing.assert_close(loss0, torch.tensor(logs0["nll"]), atol=1e-6, rtol=0)


def test_bad_source_configs_are_refused_by_name():
    with pytest.raises(WavflowError, match="source_harmonics=4 needs output gaussian"):
        WaveNetConfig.tiny(source_harmonics=4, output="mixture")
    with pytest.raises(WavflowError, match="source_phase='locked'"):
        WaveNetConfig.tiny(source_harmonics=4, source_phase="locked")
    with pytest.raises(WavflowError, match="source_harmonics=-1"):
        WaveNetConfig.tiny(source_harmonics=-1)


def test_checkpoint_round_trip_keeps_the_source(tmp_path):
    model = _teacher(seed=4)
    save_checkpoint(tmp_path / "t.pt", model_payload(model, step=3))
    again = load(tmp_path / "t.pt")
    assert again.config.source_harmonics == 4 and again.source is not None
    mel = _mel(1, 3, seed=5)
    noise = model.draw_noise(1, 3 * HOP, torch.Generator().manual_seed(1))
    assert torch.equal(again.generate(mel, noise=noise), model.generate(mel, noise=noise))
    assert model_from_payload(model_payload(model), "x").config == model.config


def _fake_tracker(audio, settings):
    """A stand-in for pYIN (seconds per clip): F0 rising with the frame index, every third frame unvoiced."""
    frames = 1 + len(audio) // settings.hop_length
    k = np.arange(frames)
    voiced = k % 3 != 0
    return PitchTrack(np.where(voiced, 100.0 + k, 0.0).astype(np.float32), voiced)


def test_init_from_a_plain_teacher_with_a_source_in_the_config_grows_and_trains_it(ljspeech_root, tmp_path,
                                                                                    monkeypatch):
    from wavflow.train import train

    monkeypatch.setattr(pitch_module, "track_pitch", _fake_tracker)
    monkeypatch.setattr(pitch_module, "cache_dir", lambda root: tmp_path / "pitch")
    torch.manual_seed(0)
    recipe = REPO / "recipes/ljspeech/conf/wavenet.tiny.yaml"
    plain = WaveNet(WaveNetConfig(**yaml.safe_load(recipe.read_text())["model_config"]))
    save_checkpoint(tmp_path / "plain.pt", model_payload(plain, step=7))
    trainer = train(recipe, overrides=[
        f"data.root={ljspeech_root}", "data.n_valid=3", "data.segment_length=2048", "data.batch_size=2",
        "model_config.source_harmonics=4", "model_config.source_channels=8",
        "train.max_steps=2", "train.valid_every=2", "train.valid_clips=1", "train.valid_max_seconds=0.5",
        "train.progress=false"], out_dir=tmp_path / "run", init=tmp_path / "plain.pt")
    assert trainer.model.config.source_harmonics == 4 and trainer.state.init_from["step"] == 7
    assert len(trainer.losses) == 2 and all(math.isfinite(v) for v in trainer.losses)
    # every clip tracked once: the 30 training clips, and the 3 validation clips for the NLL given their pitch
    assert len(list((tmp_path / "pitch").glob("*.npz"))) == 33
    valid = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
             if "valid/nll" in r]
    assert valid and all(math.isfinite(r["valid/nll_given_pitch"]) for r in valid)
    model = load(tmp_path / "run" / "last.pt")
    assert model.needs_pitch and model.generate(_mel(1, 2), noise=torch.zeros(1, 1, 2 * HOP)).shape == (1, 2 * HOP)
