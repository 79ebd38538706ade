"""WaveNet teacher: causality, receptive field, teacher forcing vs step-by-step evaluation, naive == cached ==
batched generation for the same noise (every output distribution), likelihood units, a short training run."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from wavflow.audio import load_audio
from wavflow.checkpoint import model_from_payload, model_payload
from wavflow.errors import WavflowError
from wavflow.frontend import mel_spectrogram
from wavflow.models import build_model
from wavflow.models.wavenet import WaveNet, WaveNetConfig

from synth_helpers import clip

OUTPUTS = ("gaussian", "mixture", "mulaw")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(output: str = "gaussian", seed: int = 0, **kw) -> WaveNet:
    torch.manual_seed(seed)
    model = WaveNet(WaveNetConfig.tiny(output=output, **kw)).eval()
    with torch.no_grad():  # a livelier head than the default init, so samples depend visibly on the past
        model.out2.weight.mul_(4)
    return model


def _mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) - 4


@pytest.mark.parametrize("layers,cycles,kernel,rf", [(24, 4, 3, 505), (30, 3, 3, 6139), (12, 2, 3, 253)])
def test_receptive_field_of_configs(layers, cycles, kernel, rf):
    cfg = WaveNetConfig(layers=layers, cycles=cycles, kernel_size=kernel, residual_channels=4, gate_channels=4,
                        skip_channels=4, upsample_channels=4)
    assert WaveNet(cfg).receptive_field == rf


def test_default_config_is_the_spec_teacher():
    cfg = WaveNetConfig()
    assert (cfg.layers, cfg.cycles, cfg.kernel_size) == (24, 4, 3)
    assert (cfg.residual_channels, cfg.gate_channels, cfg.skip_channels, cfg.output) == (128, 256, 128, "gaussian")
    assert cfg.log_scale_min == -9.0 and cfg.upsample_factors is None  # derived from the hop: 4 x 4 x 4 x 4
    n = sum(p.numel() for p in WaveNet(cfg).parameters())
    assert 3.6e6 < n < 4.0e6, n  # "about 3.7M parameters" (issue 4)


@pytest.mark.parametrize("kernel", [2, 3])
def test_causality_by_gradient_and_measured_reach(kernel):
    """d params[t] / d x[t'] is exactly zero for t' >= t, and nonzero back to t - RF (the shift adds one)."""
    model = _tiny(kernel_size=kernel, layers=6, cycles=2).double()
    rf = model.receptive_field
    T = rf + 40
    audio = (torch.rand(1, T, dtype=torch.float64) - 0.5).requires_grad_(True)
    mel = _mel(1, T // 256 + 1).double()
    t = T - 7
    model(audio, mel)[0, :, t].sum().backward()
    g = audio.grad[0].abs()
    assert torch.all(g[t:] == 0), "x_t (or the future) leaks into its own prediction"
    assert torch.all(g[: t - rf] == 0), "prediction sees beyond the receptive field"
    assert g[t - 1] != 0 and g[t - rf] != 0, "measured reach differs from (k-1) * sum(dilations) + 1"


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", ["cached", "cached_torch"])  # on the CPU "cached" is the compiled loop
def test_teacher_forcing_on_generated_audio_reproduces_it(output, method):
    """Generation and the teacher-forced forward compute the same distributions: run `forward` on the audio a
    generator made and sample those parameters with the same noise, and the same audio comes back."""
    model = _tiny(output)
    T = 3 * 256
    mel = _mel(2, 3)
    noise = model.draw_noise(2, T, torch.Generator().manual_seed(2))
    audio = model.generate(mel, method=method, temperature=0.9, noise=noise)
    with torch.no_grad():
        again = model.dist.sample(model(audio, mel), 0.9, noise=noise)
    assert audio.abs().max() > 0.01
    if output == "mulaw":  # exact level indices
        assert torch.equal(model.dist.encode(again), model.dist.encode(audio))
    else:
        torch.testing.assert_close(again, audio, atol=1e-5, rtol=0)


def test_importing_the_teacher_does_not_load_numba():
    code = "import sys, wavflow.models.wavenet, wavflow.models.student; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("output", OUTPUTS)
def test_naive_cached_and_batched_generation_agree(output):
    model = _tiny(output, seed=3)
    mel = _mel(2, 2, seed=4)
    T = 512
    runs = {m: model.generate(mel, method=m, temperature=0.8, generator=torch.Generator().manual_seed(5))
            for m in ("naive", "cached", "cached_torch")}
    assert runs["naive"].shape == (2, T)
    assert runs["naive"].abs().max() > 0.01 and torch.all(runs["naive"].abs() <= 1)
    if output == "mulaw":  # exact level indices
        idx = {m: model.dist.encode(a) for m, a in runs.items()}
        assert torch.equal(idx["cached"], idx["naive"]) and torch.equal(idx["cached_torch"], idx["naive"])
    else:
        torch.testing.assert_close(runs["cached"], runs["naive"], atol=1e-4, rtol=0)
        torch.testing.assert_close(runs["cached_torch"], runs["naive"], atol=1e-4, rtol=0)
    # the same generator gives the same audio again; another seed gives other audio
    again = model.generate(mel, method="cached", temperature=0.8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again, runs["cached"])
    other = model.generate(mel, method="cached", temperature=0.8, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(other, runs["cached"])


@pytest.mark.parametrize("output", OUTPUTS)
def test_batched_utterances_of_different_lengths_match_one_by_one(output):
    model = _tiny(output, seed=7)
    frames = [1, 3, 2]
    mel = _mel(3, max(frames), seed=8)
    T = max(frames) * 256
    noise = model.dist.draw_noise(3, T, torch.Generator().manual_seed(9))
    batched = model.generate(mel, method="cached", frames=frames, noise=noise, threads=2)  # two parallel groups
    torch_batched = model.generate(mel, method="cached_torch", frames=frames, noise=noise)
    for b, f in enumerate(frames):
        n = f * 256
        alone = model.generate(mel[b: b + 1, :, :f], method="cached", noise=noise[b: b + 1, :, :n])
        naive = model.generate(mel[b: b + 1, :, :f], method="naive", noise=noise[b: b + 1, :, :n]) if b == 0 else alone
        # the upsampler's smoothing sees a few frames ahead: compare away from the cropped mel's last frames
        safe = max(0, n - 256 * 3) if f < max(frames) else n
        tol = {"atol": 1e-4, "rtol": 0}
        torch.testing.assert_close(batched[b, :safe], alone[0, :safe], **tol)
        torch.testing.assert_close(naive[0], alone[0], **tol)
        assert torch.all(batched[b, n:] == 0) and torch.all(torch_batched[b, n:] == 0)
        torch.testing.assert_close(torch_batched[b], batched[b], **tol)


@pytest.mark.parametrize("output", OUTPUTS)
def test_whole_chunk_replay_as_a_cuda_graph_runs_it_equals_naive(output):
    """A CUDA graph replays every step of a chunk, also past the end of the audio, and keeps its step counter
    on the device; emulate that on the CPU (ring of a dilation larger than the chunk, a partial last chunk)."""
    from wavflow.models.wavenet_generation import CachedSteps

    model = _tiny(output, seed=13, layers=6, cycles=1)  # dilations up to 32, kernel 3: a ring of 64 rows
    mel = _mel(2, 1, seed=14)
    T, chunk = 200, 48  # 4 full chunks and one of 8
    noise = model.dist.draw_noise(2, 256, torch.Generator().manual_seed(15))
    naive = model.generate(mel, method="naive", temperature=0.9, noise=noise)
    with torch.no_grad():
        c = model.upsampler(mel)
        steps = CachedSteps(model, 2, chunk, 0.9, c.device, torch.float32)
        out = torch.zeros(2, T)
        for t0 in range(0, T, chunk):
            t1 = min(t0 + chunk, T)
            steps.load(c, noise, t0, t1)
            for s in range(chunk):
                steps.step(s)
            out[:, t0:t1] = steps.out[: t1 - t0].t()
    assert int(steps.t) == 5 * chunk
    if output == "mulaw":
        assert torch.equal(model.dist.encode(out), model.dist.encode(naive[:, :T]))
    else:
        torch.testing.assert_close(out, naive[:, :T], atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("output", OUTPUTS)
def test_cuda_graph_generation_equals_naive_and_eager_on_the_gpu(output, monkeypatch):
    # cuDNN's convolutions (naive generation) default to TF32, ~1e-3 relative: compare in true float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = _tiny(output, seed=16).cuda()
    mel = _mel(3, 2, seed=17).cuda()
    noise = model.dist.draw_noise(3, 512, torch.Generator().manual_seed(18)).cuda()
    frames = [2, 1, 2]
    graph = model.generate(mel, method="cached", frames=frames, noise=noise, temperature=0.8)
    eager = model.generate(mel, method="cached_torch", frames=frames, noise=noise, temperature=0.8)
    naive = model.generate(mel, method="naive", frames=frames, noise=noise, temperature=0.8)
    if output == "mulaw":
        assert torch.equal(model.dist.encode(graph), model.dist.encode(naive))
    else:
        torch.testing.assert_close(graph, naive, atol=1e-4, rtol=0)
    torch.testing.assert_close(graph, eager, atol=1e-5, rtol=0)
    cpu = model.cpu().generate(mel.cpu(), frames=frames, noise=noise.cpu(), temperature=0.8)
    torch.testing.assert_close(graph.cpu(), cpu, atol=1e-3, rtol=0)


def test_batched_generation_equals_each_row_with_the_full_mel():
    """With every utterance's mel the full padded mel, each batch row is exactly its own single-row generation."""
    model = _tiny("gaussian", seed=10)
    mel = _mel(4, 2, seed=11)
    noise = model.dist.draw_noise(4, 512, torch.Generator().manual_seed(12))
    lengths = [512, 300, 77, 511]
    batched = model.generate(mel, lengths=lengths, noise=noise)
    for b, n in enumerate(lengths):
        alone = model.generate(mel[b: b + 1], noise=noise[b: b + 1])
        torch.testing.assert_close(batched[b, :n], alone[0, :n], atol=1e-5, rtol=0)
        assert torch.all(batched[b, n:] == 0)


def test_log_likelihood_units_and_training_loss():
    model = _tiny("gaussian")
    audio = torch.rand(2, 512) - 0.5
    mel = _mel(2, 3)
    ll = model.log_likelihood(audio, mel)
    assert ll.shape == (2,)
    params = model(audio, mel)
    mu, ls = params[:, 0], params[:, 1].clamp(min=-9.0)
    by_hand = (-0.5 * math.log(2 * math.pi) - ls - 0.5 * ((audio - mu) / ls.exp()) ** 2).mean(-1)
    torch.testing.assert_close(ll, by_hand)
    loss, logs = model.training_loss(audio, mel)
    assert abs(loss.item() + ll.mean().item()) < 1e-6
    assert abs(logs["bits_per_sample"] - logs["nll"] / math.log(2)) < 1e-9


def test_infer_follows_the_protocol_and_checkpoint_round_trip():
    model = _tiny("mixture")
    mel = _mel(1, 2)
    a = model.infer(mel, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 512)
    clone = model_from_payload(model_payload(model, step=3))
    assert isinstance(clone, WaveNet) and clone.config == model.config
    torch.testing.assert_close(clone.infer(mel, generator=torch.Generator().manual_seed(0)), a)
    built = build_model("wavenet", {"layers": 4, "cycles": 2, "residual_channels": 8, "gate_channels": 8,
                                    "skip_channels": 8, "upsample_channels": 8, "output": "mulaw"})
    assert built.dist.num_params == 256


def test_bad_inputs_are_named():
    model = _tiny()
    with pytest.raises(WavflowError, match="mel has shape"):
        model.generate(torch.zeros(1, 40, 2))
    with pytest.raises(WavflowError, match="lengths"):
        model.generate(_mel(1, 2), lengths=[513])
    with pytest.raises(WavflowError, match="method"):
        model.generate(_mel(1, 2), method="fast")
    with pytest.raises(WavflowError, match="temperature"):
        model.generate(_mel(1, 2), temperature=-1)
    with pytest.raises(WavflowError, match="noise"):
        model.generate(_mel(1, 2), noise=torch.zeros(1, 1, 5))
    with pytest.raises(WavflowError, match="covers"):
        model(torch.zeros(1, 1000), _mel(1, 2))
    with pytest.raises(WavflowError, match="upsample_factors"):
        WaveNet(WaveNetConfig.tiny(upsample_factors=(4, 4, 4)))
    with pytest.raises(WavflowError, match="output"):
        WaveNet(WaveNetConfig.tiny(output="laplace"))


@pytest.mark.slow
def test_tiny_teacher_validation_nll_falls_on_real_clips(ljspeech_root):
    """A few hundred Adam steps on crops of one real clip lower the NLL (nats/sample) on another clip."""
    train = load_audio(clip("LJ002-0020"), 22050)
    valid = load_audio(clip("LJ001-0002"), 22050)[: 8192]
    valid_mel = mel_spectrogram(valid[None])
    model = _tiny("gaussian", seed=0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)

    def valid_nll() -> float:
        with torch.no_grad():
            return -model.log_likelihood(valid[None], valid_mel).item()

    before = valid_nll()
    seg = 2048
    for _ in range(300):
        starts = torch.randint(0, train.numel() - seg, (4,), generator=gen)
        crops = torch.stack([train[s: s + seg] for s in starts.tolist()])
        loss, _ = model.training_loss(crops, mel_spectrogram(crops))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = valid_nll()
    # untrained, sigma ~1 scores ~1 nat; 300 steps bring the tiny teacher to ~0.2 (about -1.5 on its training
    # crops: a few badly predicted onsets dominate the held-out mean at this stage)
    assert after < before - 0.5, (before, after)
