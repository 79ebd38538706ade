"""The source module (wavflow/source.py) and the WaveGlow that reads it: the excitation against its definition,
the phase-locked training track against a known phase, the source-conditioned and energy-prior WaveGlow's exact
inverse, log-determinant and likelihood, sampling, streaming, checkpoints and the training data path."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from wavflow import pitch as pitch_module
from wavflow.checkpoint import load, model_payload, save_checkpoint
from wavflow.data import CropSampler, DeviceCrops, LJSpeech
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.inference import synthesize
from wavflow.metrics import pooled_nll
from wavflow.models.waveglow import WaveGlow, WaveGlowConfig
from wavflow.models.wavenet import WaveNet, WaveNetConfig
from wavflow.pitch import PitchTrack, tracks_at
from wavflow.source import (
    PitchPredictor,
    SourceTrack,
    anchors_from,
    excitation,
    free_track,
    fundamental_phase,
    harmonic_mean,
    locked_track,
    phase_steps,
)
from wavflow.streaming import stream

from synth_helpers import REPO, live_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FS, HOP = 22050, 256


def _reference_excitation(f0: torch.Tensor, voiced: torch.Tensor, detune: torch.Tensor, phase0: float,
                          amplitude: float) -> torch.Tensor:
    """The definition, sample by sample in float64: the interpolated F0 summed into a phase, then every
    harmonic below Nyquist summed explicitly, gated by the interpolated voicing."""
    f = torch.where(voiced > 0, f0, torch.full_like(f0, 100.0)).double()[0]
    v, d = voiced.double()[0], detune.double()[0]
    frames = f.shape[0]
    t = torch.arange(frames * HOP, dtype=torch.float64)
    k, j = (t // HOP).long(), t % HOP
    nxt = torch.clamp(k + 1, max=frames - 1)
    freq = f[k] + (f[nxt] - f[k]) * j / HOP
    gate = v[k] + (v[nxt] - v[k]) * j / HOP
    phase = phase0 + 2 * math.pi * torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.float64), (freq + d[k])[:-1]]),
                                                 0) / FS
    n = torch.clamp(torch.floor(FS / 2 / freq), min=1)
    harmonics = torch.arange(1, int(n.max()) + 1, dtype=torch.float64)
    terms = torch.cos(phase[:, None] * harmonics) * (harmonics <= n[:, None])
    return (amplitude * torch.sqrt(2 / n) * terms.sum(1) * gate).float()


def _track(frames: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f0 = 120 + 150 * torch.rand(1, frames, generator=g)
    voiced = (torch.rand(1, frames, generator=g) > 0.25).float()
    return f0 * voiced, voiced


def test_excitation_is_the_sum_of_harmonics_below_nyquist():
    f0, voiced = _track()
    e = excitation(free_track(f0, voiced, HOP, FS), HOP, FS, amplitude=0.1)
    expected = _reference_excitation(f0, voiced, torch.zeros_like(f0), 0.0, 0.1)
    assert e.shape == (1, 40 * HOP)
    torch.testing.assert_close(e[0], expected, atol=2e-4, rtol=0)
    assert e.abs().max() > 0.5  # a pulse train: the harmonics add up at each period


def test_excitation_rms_follows_the_amplitude_and_silence_in_unvoiced_frames():
    f0, voiced = torch.full((1, 60), 180.0), torch.ones(1, 60)
    voiced[:, 30:] = 0
    f0 = f0 * voiced
    e = excitation(free_track(f0, voiced, HOP, FS), HOP, FS, amplitude=0.1)[0]
    assert abs(float(e[2 * HOP: 28 * HOP].pow(2).mean().sqrt()) - 0.1) < 0.002
    assert float(e[30 * HOP:].abs().max()) == 0.0
    spectrum = torch.fft.rfft(e[: 28 * HOP] * torch.hann_window(28 * HOP)).abs()
    bins = torch.fft.rfftfreq(28 * HOP, 1 / FS)
    peak = float(bins[spectrum.argmax()])
    assert abs(peak / 180.0 - round(peak / 180.0)) < 0.02  # energy sits at the harmonics of 180 Hz


def test_a_window_of_frames_gives_the_same_samples_as_the_whole():
    f0, voiced = _track(80, seed=3)
    whole_track = free_track(f0, voiced, HOP, FS)
    whole = excitation(whole_track, HOP, FS)
    for start, stop in ((0, 7), (13, 40), (55, 80)):
        part = excitation(whole_track.frames(start, stop), HOP, FS, num_samples=(stop - start) * HOP)
        assert torch.equal(part, whole[:, start * HOP: stop * HOP])
    # the anchors of a prefix are the whole's prefix, bit for bit (the streamer's window relies on it)
    prefix = free_track(f0[:, :50], voiced[:, :50], HOP, FS)
    assert torch.equal(prefix.anchors[:, :49], whole_track.anchors[:, :49])


def test_harmonic_mean_is_the_sum_of_its_harmonics_below_nyquist():
    """The definition, sample by sample in float64: amplitudes and voicing interpolated between frame centres,
    harmonic m kept while m F0 < fs / 2 (at 65 Hz all 8; at 3 kHz only the first 3)."""
    f0 = torch.tensor([[65.0, 80.0, 3000.0, 2900.0, 200.0, 0.0, 150.0]])
    voiced = (f0 > 0).float()
    g = torch.Generator().manual_seed(0)
    amps = 0.1 * torch.randn(1, 16, 7, generator=g, dtype=torch.float64)
    track = free_track(f0, voiced, HOP, FS).with_amplitudes(amps)
    mean = harmonic_mean(track, HOP, FS)
    f = torch.where(voiced > 0, f0, torch.full_like(f0, 100.0)).double()[0]
    t = torch.arange(7 * HOP, dtype=torch.float64)
    k, j = (t // HOP).long(), t % HOP
    nxt = torch.clamp(k + 1, max=6)
    freq = f[k] + (f[nxt] - f[k]) * j / HOP
    gate = voiced.double()[0][k] + (voiced.double()[0][nxt] - voiced.double()[0][k]) * j / HOP
    phase = 2 * math.pi * torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.float64), freq[:-1]]), 0) / FS
    m = torch.arange(1, 9, dtype=torch.float64)
    a = amps[0, :8, k] + (amps[0, :8, nxt] - amps[0, :8, k]) * j / HOP  # [8, T]
    b = amps[0, 8:, k] + (amps[0, 8:, nxt] - amps[0, 8:, k]) * j / HOP
    below = m[:, None] * freq[None] < FS / 2
    expected = ((a * torch.cos(m[:, None] * phase) + b * torch.sin(m[:, None] * phase)) * below).sum(0) * gate
    torch.testing.assert_close(mean[0], expected, atol=1e-9, rtol=0)
    assert mean.dtype == torch.float64
    # made a block of frames at a time or all at once: the same samples; a window of frames: the whole's
    assert torch.equal(harmonic_mean(track, HOP, FS, block=2), harmonic_mean(track, HOP, FS, block=None))
    assert torch.equal(harmonic_mean(track.frames(2, 5), HOP, FS, num_samples=3 * HOP), mean[:, 2 * HOP: 5 * HOP])


def test_harmonic_amplitudes_start_silent_and_learn_from_the_likelihood():
    model = source_model(dtype=torch.float32, source_harmonics=4)
    with torch.no_grad():
        model.harmonics.out.weight.zero_()
    audio, f0, _ = _harmonic_signal(0.4)
    mel = mel_spectrogram(audio, MelConfig())
    track = model.source_track(mel)
    assert model.harmonic_mean(track, audio.shape[1]).abs().max() == 0  # zero-initialised output conv
    loss, _ = model.training_loss(audio, mel, pitch=(f0, torch.ones_like(f0)))
    loss.backward()
    assert model.harmonics.out.weight.grad.abs().sum() > 0


def test_phase_steps_are_the_sum_of_the_interpolated_frequency():
    f = torch.tensor([[100.0, 300.0, 150.0]], dtype=torch.float64)
    steps = phase_steps(f, torch.tensor([[5.0, 0.0, 0.0]], dtype=torch.float64), HOP, FS)
    j = torch.arange(HOP, dtype=torch.float64)
    expected0 = 2 * math.pi / FS * (100.0 + 200.0 * j / HOP + 5.0).sum()
    torch.testing.assert_close(steps[0, 0], expected0, atol=1e-9, rtol=0)
    assert torch.equal(anchors_from(steps)[0, 0], torch.tensor(0.0, dtype=torch.float64))


def _harmonic_signal(seconds: float = 1.5, phase0: float = 1.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * FS), dtype=torch.float64) / FS
    f_true = 170 + 50 * torch.sin(2 * math.pi * 0.8 * t)
    phase = phase0 + 2 * math.pi * torch.cumsum(f_true, 0) / FS
    audio = 0.3 * torch.cos(phase) + 0.1 * torch.cos(2 * phase + 0.4) + 0.005 * torch.randn(t.shape, generator=g,
                                                                                                dtype=torch.float64)
    frames = audio.shape[0] // HOP + 1
    centres = torch.clamp(torch.arange(frames) * HOP, max=audio.shape[0] - 1)
    return audio.float()[None], f_true[centres].float()[None], phase[centres]


def test_fundamental_phase_is_measured_at_each_frame_centre():
    audio, f0, true_phase = _harmonic_signal()
    measured = fundamental_phase(audio, f0, HOP, FS)[0].double()
    error = torch.remainder(measured - true_phase + math.pi, 2 * math.pi) - math.pi
    assert error[4:-4].abs().max() < 0.1  # radians, away from the zero-padded ends


def test_locked_track_passes_through_the_recordings_phase_at_voiced_frames():
    audio, f0, true_phase = _harmonic_signal()
    voiced = torch.ones_like(f0)
    voiced[:, 40:52] = 0  # a gap: the phase is caught again at the next voiced frame
    track = locked_track(audio, f0 * voiced, voiced, HOP, FS)
    error = torch.remainder(track.anchors[0] - true_phase + math.pi, 2 * math.pi) - math.pi
    inner = torch.zeros_like(error, dtype=torch.bool)
    inner[4:-4] = True
    assert error[inner & (voiced[0] > 0)].abs().max() < 0.1
    # ... and the excitation's own fundamental has the recording's phase (a free-running one does not)
    e = excitation(track, HOP, FS, num_samples=audio.shape[1])
    free = excitation(free_track(f0 * voiced, voiced, HOP, FS), HOP, FS, num_samples=audio.shape[1])
    recording = fundamental_phase(audio, f0, HOP, FS)[0, 4:38]
    for signal, within in ((e, True), (free, False)):
        gap = torch.remainder(fundamental_phase(signal, f0, HOP, FS)[0, 4:38] - recording + math.pi, 2 * math.pi)
        assert (gap - math.pi).abs().max() < 0.15 if within else (gap - math.pi).abs().max() > 0.5
    # the same, built by the definition with the track's detune and first anchor
    expected = _reference_excitation(f0 * voiced, voiced, track.detune, float(track.anchors[0, 0]), 0.1)
    torch.testing.assert_close(excitation(track, HOP, FS)[0], expected, atol=5e-4, rtol=0)


def test_pitch_predictor_outputs_and_loss():
    torch.manual_seed(0)
    net = PitchPredictor(80, channels=16)
    mel = torch.randn(2, 80, 30)
    log_f0, logit = net(mel)
    assert log_f0.shape == logit.shape == (2, 30)
    assert (log_f0 >= math.log(65) - 1e-5).all() and (log_f0 <= math.log(600) + 1e-5).all()
    f0 = torch.full((2, 34), 200.0)  # longer tracks are cut to the mel's frames
    voiced = torch.zeros(2, 34)
    voiced[:, :15] = 1
    loss, logs = net.loss(mel, f0, voiced)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, voiced[:, :30])
    octaves = ((log_f0 - math.log(200.0)).abs() / math.log(2))[:, :15].mean()
    torch.testing.assert_close(loss, bce + octaves)
    hz, v = net.predict(mel)
    assert torch.equal(v, (logit > 0).float()) and torch.equal(hz == 0, v == 0)
    # the predictor is local: a window of the mel gives the window's frames (reach frames from its edges)
    r = net.reach
    part = net(mel[..., 5:25])[0]
    torch.testing.assert_close(part[..., r:-r], log_f0[..., 5 + r: 25 - r])


# ---------------------------------------------------------------------------------------------------------------
# WaveGlow with a source and the energy prior

def source_model(seed: int = 0, dtype=torch.float64, **switches) -> WaveGlow:
    torch.manual_seed(seed)
    cfg = WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "source": True, "source_channels": 8, **switches})
    model = WaveGlow(cfg).to(dtype)
    with torch.no_grad():
        for coupling in model.coupling:
            coupling.net.end.weight.normal_(0.0, 0.05)
            coupling.net.end.bias.normal_(0.0, 0.05)
            # make the excitation's conditioning channels matter
            coupling.net.cond_layer.weight.add_(0.3 * torch.randn_like(coupling.net.cond_layer.weight))
        for conv in model.convinv:
            conv.weight.add_(0.2 * torch.randn_like(conv.weight))
        if model.filter is not None:
            model.filter.end.weight.normal_(0.0, 0.05)
            model.filter.end.bias.normal_(0.0, 0.05)
        if model.harmonics is not None:
            model.harmonics.out.weight.normal_(0.0, 0.01)
    return model


SWITCHES = {"source": {}, "source+energy": {"energy_prior": True}, "source+filter": {"source_filter": True},
            "source+filter+energy": {"source_filter": True, "energy_prior": True},
            "source+harmonics": {"source_harmonics": 6}, "source+harmonics+energy": {"source_harmonics": 6,
                                                                                     "energy_prior": True}}


def _inputs(samples: int, seed: int = 0, dtype=torch.float64, harmonics: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = 0.3 * torch.randn(1, samples, generator=g, dtype=dtype)
    mel = torch.randn(1, 80, samples // HOP + 1, generator=g, dtype=dtype) - 4.0
    frames = mel.shape[-1]
    voiced = (torch.rand(1, frames, generator=g) > 0.2).float()
    track = free_track((120 + 150 * torch.rand(1, frames, generator=g)) * voiced, voiced, HOP, FS)
    if harmonics:  # amplitudes a harmonic mean reads
        track = track.with_amplitudes(0.02 * torch.randn(1, 2 * harmonics, frames, generator=g, dtype=dtype))
    return audio, mel, track


def test_the_source_filter_puts_the_excitation_in_the_signal_path():
    """x = exp(log_s) y + mean before the flows, (mean, log_s) = WN(grouped excitation, conditioning): with z = 0
    and identity couplings the audio is the filter's mean, which follows the excitation."""
    torch.manual_seed(0)
    model = WaveGlow(WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "source": True, "source_channels": 8,
                                       "source_filter": True})).double()
    audio, mel, track = _inputs(512)
    cond = model.condition(mel, 512, track=track)
    assert torch.equal(model.filter(cond[:, -8:], cond), torch.zeros(1, 16, 64, dtype=torch.float64))  # identity
    with torch.no_grad():
        model.filter.end.weight.zero_()
        model.filter.end.weight[:8, :].normal_(0, 0.3)  # the mean reads the gated excitation; log_s stays 0
    silent = model.inverse(torch.zeros(1, 8, 64, dtype=torch.float64), mel, track)
    higher = free_track(track.f0 * 1.5, track.voiced, HOP, FS)
    assert silent.abs().max() > 1e-3
    assert not torch.allclose(silent, model.inverse(torch.zeros(1, 8, 64, dtype=torch.float64), mel, higher))
    with pytest.raises(WavflowError, match="source_filter=true .* needs source=true"):
        WaveGlowConfig(source_filter=True)


def test_source_channels_join_the_conditioning_and_change_the_flow():
    model = source_model()
    audio, mel, track = _inputs(512)
    assert model.coupling[0].net.cond_layer.weight.shape[1] == 81 * 8
    z1, _ = model(audio, mel, track)
    z2, _ = model(audio, mel, free_track(track.f0 * 2, track.voiced, HOP, FS))
    assert not torch.allclose(z1, z2)


@pytest.mark.parametrize("switches", SWITCHES)
def test_source_model_is_exactly_invertible(switches):
    model = source_model(**SWITCHES[switches])
    audio, mel, track = _inputs(1024 + 40, harmonics=SWITCHES[switches].get("source_harmonics", 0))
    z, _ = model(audio, mel, track)
    torch.testing.assert_close(model.inverse(z, mel, track), audio[:, : z.shape[-1] * 8], atol=1e-10, rtol=0)


@pytest.mark.parametrize("switches", SWITCHES)
def test_source_model_likelihood_is_change_of_variables(switches):
    """log p = log N(z; 0, (sigma s_g)^2) + log|det dz/dx|, the Jacobian by autograd, per sample."""
    energy_prior = SWITCHES[switches].get("energy_prior", False)
    model = source_model(seed=2, **SWITCHES[switches])
    audio, mel, track = _inputs(64, seed=1, harmonics=SWITCHES[switches].get("source_harmonics", 0))
    ll = model.log_likelihood(audio, mel, track)
    z, logdet = model(audio, mel, track)
    jac = torch.autograd.functional.jacobian(lambda a: model(a[None], mel, track)[0].reshape(-1), audio[0])
    slogdet = torch.linalg.slogdet(jac)[1]
    assert abs(slogdet.item()) > 0.5
    torch.testing.assert_close(logdet[0], slogdet, atol=1e-8, rtol=0)
    scale = model.prior_scale(mel, 8) if energy_prior else torch.ones(1, 1, 8, dtype=torch.float64)
    std = model.config.sigma * scale.expand_as(z)
    log_pz = torch.distributions.Normal(torch.zeros_like(z), std).log_prob(z).sum()
    torch.testing.assert_close(ll[0], (log_pz + slogdet) / 64, atol=1e-10, rtol=0)


def test_energy_prior_follows_the_mels_energy():
    model = source_model(energy_prior=True, dtype=torch.float32)
    mel_config = MelConfig()
    t = torch.arange(FS) / FS
    loud, quiet = 0.3 * torch.sin(2 * math.pi * 220 * t), 0.003 * torch.sin(2 * math.pi * 220 * t)
    audio = torch.cat([loud, quiet])[None]
    mel = mel_spectrogram(audio, mel_config)
    scale = model.prior_scale(mel, audio.shape[1] // 8)[0, 0]
    groups = FS // 8
    ratio = scale[groups // 4: groups * 3 // 4].mean() / scale[groups * 5 // 4: groups * 7 // 4].mean()
    assert 70 < ratio < 130  # 100x quieter -> a 100x narrower prior
    assert (scale >= 1e-3 - 1e-9).all()
    assert model.prior_scale(mel, 10) is not None
    assert WaveGlow(WaveGlowConfig.tiny()).prior_scale(mel, 10) is None


@pytest.mark.parametrize("switches", SWITCHES)
def test_infer_equals_the_inverse_of_the_predicted_source(switches):
    energy_prior = SWITCHES[switches].get("energy_prior", False)
    model = source_model(dtype=torch.float32, **SWITCHES[switches]).eval()
    mel = _inputs(30 * HOP, seed=4, dtype=torch.float32)[1][..., :30]
    noise = model.draw_noise(1, 30 * HOP, torch.Generator().manual_seed(0))
    audio = model.infer(mel, noise=noise, sigma=0.7)
    track = model.source_track(mel)
    z = 0.7 * noise * (model.prior_scale(mel, noise.shape[-1]) if energy_prior else 1.0)
    torch.testing.assert_close(audio, model.inverse(z, mel, track), atol=1e-4, rtol=0)
    assert track.voiced.sum() > 0 and model.excitation(track, 30 * HOP).abs().max() > 0  # some frames are voiced
    if model.harmonics is not None:
        assert model.harmonic_mean(track, 30 * HOP).abs().max() > 1e-3


@pytest.mark.parametrize("switches", ["source+filter+energy", "source+harmonics+energy"])
@pytest.mark.parametrize("chunk", [0.0116, 0.0813])
def test_source_model_streams_like_the_whole_utterance(chunk, switches):
    model = source_model(dtype=torch.float32, **SWITCHES[switches]).eval()
    with torch.no_grad():
        model.source.out.bias.copy_(torch.tensor([0.0, 3.0]))  # voiced throughout: the phase must carry
    mel = _inputs(40 * HOP, seed=6, dtype=torch.float32)[1][..., :40]
    whole = synthesize(mel[0].numpy(), model=model, seed=3)
    streamed = torch.cat(list(stream(mel[0].numpy(), chunk, model=model, seed=3)))
    assert streamed.shape == whole.shape == (40 * HOP,)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)


def test_training_loss_adds_pitch_and_spectral_terms_and_needs_pitch():
    model = source_model(dtype=torch.float32, spectral_weight=0.5)
    audio, mel, _ = _inputs(4096, dtype=torch.float32)
    f0, voiced = torch.full((1, mel.shape[-1] + 2), 150.0), torch.ones(1, mel.shape[-1] + 2)
    loss, logs = model.training_loss(audio, mel, pitch=(f0, voiced))
    assert set(logs) == {"nll", "pitch/voicing_bce", "pitch/f0_octaves", "spectral/sc", "spectral/logmag"}
    expected = logs["nll"] + logs["pitch/voicing_bce"] + logs["pitch/f0_octaves"] \
        + 0.5 * (logs["spectral/sc"] + logs["spectral/logmag"])
    assert abs(loss.item() - expected) < 1e-4
    loss.backward()
    assert model.source.inp.weight.grad.abs().sum() > 0
    assert model.coupling[0].net.end.weight.grad.abs().sum() > 0
    with pytest.raises(WavflowError, match="pitch tracks"):
        model.training_loss(audio, mel)


def test_phase_locked_training_excitation_differs_from_the_free_one():
    audio, f0, _ = _harmonic_signal(0.5)
    mel = mel_spectrogram(audio, MelConfig())
    voiced = torch.ones_like(f0)
    models = {p: source_model(dtype=torch.float32, source_phase=p) for p in ("recording", "free")}
    losses = {p: m.training_loss(audio, mel, pitch=(f0, voiced))[1]["nll"] for p, m in models.items()}
    assert losses["recording"] != losses["free"]


def _source_teacher() -> WaveNet:
    torch.manual_seed(0)
    return live_source(WaveNet(WaveNetConfig.tiny(source_harmonics=4, source_channels=8)))


@pytest.mark.parametrize("family", ["waveglow", "wavenet"])
def test_nll_given_the_recordings_pitch_is_the_held_out_training_nll(family):
    """pooled_nll with the recordings' pitch tracks scores a source model as its training loss does (phase-locked
    to the recording); without them, from its predicted pitch with the phase running free, as it samples."""
    model = (source_model(dtype=torch.float32, source_harmonics=6) if family == "waveglow"
             else _source_teacher()).eval()
    audio, f0, _ = _harmonic_signal(0.5)
    mel = mel_spectrogram(audio, model.mel_config)
    frames = mel.shape[-1]
    k = np.arange(frames)
    track = PitchTrack(np.where(k % 5 != 0, 150.0, 0.0).astype(np.float32), k % 5 != 0)
    total, count = pooled_nll(model, [audio[0]], pitch=[track])
    assert count == audio.shape[-1]
    with torch.no_grad():
        _, logs = model.training_loss(audio, mel, pitch=tracks_at([track], [0], frames, HOP))
    assert total / count == pytest.approx(logs["nll"], rel=1e-5, abs=1e-6)
    free, _ = pooled_nll(model, [audio[0]])
    assert abs(free - total) / count > 1e-3
    assert free / count == pytest.approx(-model.log_likelihood(audio, mel).item(), rel=1e-5, abs=1e-6)


def test_bad_switches_are_refused_by_name():
    for bad, name in (({"source_phase": "locked"}, "source_phase"), ({"spectral_weight": -1.0}, "spectral_weight"),
                      ({"source": 1}, "source"), ({"source_channels": 0}, "source_channels")):
        with pytest.raises(WavflowError, match=name):
            WaveGlowConfig(**bad)


def test_checkpoint_round_trip_keeps_the_source(tmp_path):
    model = source_model(dtype=torch.float32, energy_prior=True).eval()
    path = tmp_path / "source.pt"
    save_checkpoint(path, model_payload(model))
    loaded = load(path).eval()
    assert loaded.config.source and loaded.config.energy_prior
    mel = _inputs(20 * HOP, dtype=torch.float32)[1][..., :20]
    torch.testing.assert_close(synthesize(mel[0].numpy(), model=loaded, seed=1),
                               synthesize(mel[0].numpy(), model=model, seed=1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Training data: crops with their pitch

def _fake_tracker(audio, settings):
    """A stand-in for pYIN (seconds per clip): F0 rising with the frame index, every third frame unvoiced."""
    frames = 1 + len(audio) // settings.hop_length
    k = np.arange(frames)
    voiced = k % 3 != 0
    return PitchTrack(np.where(voiced, 100.0 + k, 0.0).astype(np.float32), voiced)


def test_crops_carry_their_pitch_on_both_data_paths(ljspeech_root, tmp_path, monkeypatch):
    monkeypatch.setattr(pitch_module, "track_pitch", _fake_tracker)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(pitch_module, "cache_dir", lambda root: tmp_path / "pitch")
    data = LJSpeech(ljspeech_root, "train", n_valid=3, segment_length=4096)
    data.attach_pitch()
    sampler = CropSampler(data, seed=7)
    items = list(iter(sampler))[:4]
    loaded = [data[item] for item in items]
    device_batch = next(DeviceCrops(data, "cpu").batches(sampler, 4))
    for b, (audio, f0, voiced) in enumerate(loaded):
        torch.testing.assert_close(device_batch[0][b], audio, rtol=0, atol=0)
        torch.testing.assert_close(device_batch[1][b], f0, rtol=0, atol=0)
        torch.testing.assert_close(device_batch[2][b], voiced, rtol=0, atol=0)
        assert f0.shape == (4096 // HOP + 1,)
    # a crop at a whole-hop offset reads the clip's own frames
    index, offset = 0, 3 * HOP
    f0, voiced = data.crop_pitch([index], [offset])
    track = data.pitch[index]
    assert torch.equal(voiced[0, :5].bool(), torch.from_numpy(track.voiced[3:8]))
    torch.testing.assert_close(f0[0, :5], torch.from_numpy(track.f0[3:8]))


def test_a_source_model_trains_on_crops_with_pitch(ljspeech_root, tmp_path, monkeypatch):
    from wavflow.train import train

    monkeypatch.setattr(pitch_module, "track_pitch", _fake_tracker)
    monkeypatch.setattr(pitch_module, "cache_dir", lambda root: tmp_path / "pitch")
    trainer = train(REPO / "recipes/ljspeech/conf/waveglow.cpu.yaml", overrides=[
        f"data.root={ljspeech_root}", "data.n_valid=3", "data.segment_length=2048", "data.batch_size=2",
        "model_config.n_flows=2", "model_config.wn_layers=2", "model_config.wn_channels=8",
        "model_config.source=true", "model_config.source_channels=8", "model_config.energy_prior=true",
        "train.max_steps=3", "train.valid_every=3", "train.valid_clips=1", "train.valid_max_seconds=0.5",
        "train.progress=false"], out_dir=tmp_path / "run")
    assert len(trainer.losses) == 3 and all(math.isfinite(v) for v in trainer.losses)
    # every clip tracked once: the 30 training clips, and the 3 validation clips for the NLL given their pitch
    assert len(list((tmp_path / "pitch").glob("*.npz"))) == 33
    valid = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
             if "valid/nll" in r]
    assert valid and all(math.isfinite(r["valid/nll_given_pitch"]) for r in valid)
    model = load(tmp_path / "run" / "last.pt")
    assert model.config.source and isinstance(model.source_track(torch.randn(1, 80, 5)), SourceTrack)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_a_plain_waveglow_grows_a_source_and_vocodes_what_it_did(weight_norm):
    torch.manual_seed(0)
    plain = WaveGlow(WaveGlowConfig.tiny())
    with torch.no_grad():
        for c in plain.coupling:
            c.net.end.weight.normal_(0.0, 0.05)
            c.net.cond_layer.bias.normal_(0.0, 0.1)
    if not weight_norm:
        plain.remove_weight_norm()
    plain.eval()
    grown = plain.grown(WaveGlowConfig(**{**plain.config.__dict__, "source": True, "source_harmonics": 8,
                                          "source_filter": True, "source_channels": 8})).eval()
    assert grown.config.source and grown.harmonics is not None and grown.filter is not None
    mel = _inputs(20 * HOP, seed=2, dtype=torch.float32)[1][..., :20]
    noise = plain.draw_noise(1, 20 * HOP, torch.Generator().manual_seed(0))
    # The grown convolutions have zero input columns appended: the same sums, but a CPU kernel may order them
    # differently for the wider input (seen as a rare last-bit difference in float32), so the audio is compared in
    # float64, where reordering moves it by ~1e-16 and any real change by far more.
    grown64, plain64 = grown.double(), copy.deepcopy(plain).double()
    torch.testing.assert_close(grown64.infer(mel.double(), noise=noise.double()),
                               plain64.infer(mel.double(), noise=noise.double()), rtol=0, atol=1e-12)
    grown.float()
    audio, mel = _inputs(20 * HOP, seed=3, dtype=torch.float32)[:2]  # and the same likelihood of a recording
    with torch.no_grad():
        mine, theirs = grown.log_likelihood(audio, mel[..., :20]), plain.log_likelihood(audio, mel[..., :20])
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert grown.coupling[0].net.cond_layer.weight.shape[1] == 81 * 8
    for bad, name in (({"n_flows": 2}, "n_flows"), ({"energy_prior": True}, "energy_prior")):
        with pytest.raises(WavflowError, match=f"cannot grow .*{name}"):
            plain.grown(WaveGlowConfig(**{**plain.config.__dict__, "source": True, **bad}))
    with pytest.raises(WavflowError, match="cannot grow"):  # a source is never taken away
        grown.grown(plain.config)


def test_init_from_a_plain_checkpoint_with_a_source_in_the_config_grows_it(ljspeech_root, tmp_path, monkeypatch):
    from wavflow.train import train

    monkeypatch.setattr(pitch_module, "track_pitch", _fake_tracker)
    monkeypatch.setattr(pitch_module, "cache_dir", lambda root: tmp_path / "pitch")
    torch.manual_seed(0)
    plain = WaveGlow(WaveGlowConfig(n_flows=2, n_early_every=4, n_early_size=2, wn_layers=2, wn_channels=8,
                                    upsample_frames=1))
    save_checkpoint(tmp_path / "plain.pt", model_payload(plain, step=7))
    trainer = train(REPO / "recipes/ljspeech/conf/waveglow.cpu.yaml", overrides=[
        f"data.root={ljspeech_root}", "data.n_valid=3", "data.segment_length=2048", "data.batch_size=2",
        "model_config.n_flows=2", "model_config.wn_layers=2", "model_config.wn_channels=8",
        "model_config.source=true", "model_config.source_harmonics=4", "model_config.source_channels=8",
        "train.max_steps=2", "train.valid_every=2", "train.valid_clips=1", "train.valid_max_seconds=0.5",
        "train.progress=false"], out_dir=tmp_path / "run", init=tmp_path / "plain.pt")
    assert trainer.model.config.source and trainer.model.config.source_harmonics == 4
    assert trainer.state.init_from["step"] == 7 and len(trainer.losses) == 2
