"""WaveGlow: exact inverse, log-determinant against the autograd Jacobian, likelihood scale, sampling, size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig
from wavflow.models import build_model
from wavflow.models.student import StudentConfig
from wavflow.models.waveglow import WN, WaveGlow, WaveGlowConfig

HOP = 256


def tiny_model(seed: int = 0, dtype=torch.float64) -> WaveGlow:
    """A tiny WaveGlow moved off its identity start (the zero end convs), so every coupling does something."""
    torch.manual_seed(seed)
    model = WaveGlow(WaveGlowConfig.tiny()).to(dtype)
    with torch.no_grad():
        for coupling in model.coupling:
            coupling.net.end.weight.normal_(0.0, 0.05)
            coupling.net.end.bias.normal_(0.0, 0.05)
        for conv in model.convinv:
            conv.weight.add_(0.2 * torch.randn_like(conv.weight))
    return model


def inputs(batch: int, samples: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    audio = 0.3 * torch.randn(batch, samples, generator=g, dtype=dtype)
    mel = torch.randn(batch, 80, samples // HOP + 1, generator=g, dtype=dtype)
    return audio, mel


def test_default_config_parameter_counts():
    model = WaveGlow()
    assert sum(p.numel() for p in model.parameters()) == 87_879_272
    model.remove_weight_norm()
    assert sum(p.numel() for p in model.parameters()) == 87_731_816
    assert [c.channels for c in model.convinv] == [8] * 4 + [6] * 4 + [4] * 4


def test_module_names_follow_nvidia_layout():
    names = set(WaveGlow(WaveGlowConfig.tiny()).state_dict())
    for key in ["upsample.weight", "upsample.bias", "convinv.3.weight", "coupling.0.net.end.weight",
                "coupling.1.net.cond_layer.parametrizations.weight.original0",
                "coupling.1.net.in_layers.1.parametrizations.weight.original1",
                "coupling.2.net.res_skip_layers.0.bias", "coupling.3.net.start.bias"]:
        assert key in names, key


def test_bad_config_is_refused_by_name():
    with pytest.raises(WavflowError, match="n_group"):
        WaveGlowConfig(n_group=7)
    with pytest.raises(WavflowError, match="fewer than 2 channels"):
        WaveGlowConfig(n_flows=12, n_group=8, n_early_every=2, n_early_size=2)
    with pytest.raises(WavflowError, match="hop length"):
        WaveGlow(WaveGlowConfig(n_group=6, n_early_size=0))


def test_inverse_of_forward_is_identity():
    model = tiny_model()
    audio, mel = inputs(2, 1024 + 8 * 5)
    z, _ = model(audio, mel)
    assert z.shape == (2, 8, audio.shape[1] // 8)
    torch.testing.assert_close(model.inverse(z, mel), audio, atol=1e-10, rtol=0)
    model32 = model.float()
    z32, _ = model32(audio.float(), mel.float())
    torch.testing.assert_close(model32.inverse(z32, mel.float()), audio.float(), atol=1e-4, rtol=0)


def test_logdet_equals_jacobian_of_whole_model():
    model = tiny_model(seed=3)
    audio, mel = inputs(2, 64, seed=1)  # 8 groups: a 64 x 64 Jacobian
    _, logdet = model(audio, mel)
    for i in range(2):
        fn = lambda a, i=i: model(a[None], mel[i: i + 1])[0].reshape(-1)  # noqa: E731  (one expression, for jacobian)
        jac = torch.autograd.functional.jacobian(fn, audio[i])
        expected = torch.linalg.slogdet(jac)[1]
        assert abs(expected.item()) > 0.5  # the test would be vacuous at the identity start
        torch.testing.assert_close(logdet[i], expected, atol=1e-8, rtol=0)


def test_log_likelihood_is_change_of_variables_in_nats_per_sample():
    model = tiny_model(seed=4)
    audio, mel = inputs(1, 64, seed=2)
    ll = model.log_likelihood(audio, mel)
    z, _ = model(audio, mel)
    jac = torch.autograd.functional.jacobian(lambda a: model(a[None], mel)[0].reshape(-1), audio[0])
    sigma = model.config.sigma
    log_pz = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), sigma).log_prob(z).sum()
    expected = (log_pz + torch.linalg.slogdet(jac)[1]) / 64
    torch.testing.assert_close(ll[0], expected, atol=1e-10, rtol=0)


def test_likelihood_constant_and_sigma():
    """At the identity start z is a rotation of the audio, so the density is exactly Gaussian in the audio."""
    for sigma in (1.0, 0.5):
        model = WaveGlow(WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "sigma": sigma})).double()
        with torch.no_grad():  # re-orthonormalise the float32-rounded rotations in float64
            for conv in model.convinv:
                q, r = torch.linalg.qr(conv.weight)
                conv.weight.copy_(q * torch.sign(torch.diagonal(r)))
        audio, mel = inputs(3, 512, seed=5)
        expected = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), sigma).log_prob(audio).mean(1)
        torch.testing.assert_close(model.log_likelihood(audio, mel), expected, atol=1e-10, rtol=0)


def test_training_loss_is_mean_negative_log_likelihood_and_trains():
    model = tiny_model(dtype=torch.float32)
    audio, mel = inputs(3, 2048, dtype=torch.float32)
    ll = model.log_likelihood(audio, mel)
    assert torch.isfinite(ll).all() and ll.shape == (3,)
    loss, logs = model.training_loss(audio, mel)
    torch.testing.assert_close(loss, -ll.mean())
    assert logs["nll"] == pytest.approx(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = loss.item()
    for _ in range(5):
        opt.zero_grad()
        loss, _ = model.training_loss(audio, mel)
        loss.backward()
        opt.step()
    assert model.training_loss(audio, mel)[0].item() < first
    # inverse stays exact after optimizer steps (the cached W^-1 follows the new weights)
    z, _ = model(audio, mel)
    with torch.no_grad():
        torch.testing.assert_close(model.inverse(z, mel), audio, atol=1e-4, rtol=0)


@pytest.mark.parametrize("frames", [1, 7, 30])
def test_infer_length_and_determinism(frames):
    model = tiny_model(dtype=torch.float32).eval()
    mel = torch.randn(2, 80, frames)
    out = model.infer(mel)
    assert out.shape == (2, frames * HOP)
    z = torch.randn(2, 8, frames * HOP // 8)
    a, b = model.infer(mel, sigma=0.6, noise=z), model.infer(mel, sigma=0.6, noise=z)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, model.inverse(0.6 * z, mel))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(model.infer(mel, generator=g1), model.infer(mel, generator=g2))
    with pytest.raises(WavflowError, match="expected"):
        model.infer(mel, noise=z[..., :-1])


def test_infer_sigma_default_and_scaling():
    model = WaveGlow(WaveGlowConfig.tiny()).eval()  # identity couplings: audio is a rotation of z
    mel = torch.randn(1, 80, 4)
    z = torch.randn(1, 8, 4 * HOP // 8)
    torch.testing.assert_close(model.infer(mel, noise=z), model.infer(mel, noise=z, sigma=0.6))
    torch.testing.assert_close(model.infer(mel, noise=z, sigma=0.3), 0.5 * model.infer(mel, noise=z, sigma=0.6))
    assert model.infer(mel, sigma=0.0).abs().max() == 0


def test_remove_weight_norm_keeps_outputs():
    model = tiny_model(dtype=torch.float32)
    audio, mel = inputs(1, 1024, dtype=torch.float32)
    z = torch.randn(1, 8, 5 * HOP // 8)
    mel5 = mel[..., :5]
    before_ll = model.log_likelihood(audio, mel)
    before = model.infer(mel5, noise=z)
    model.remove_weight_norm()
    assert not any("parametrizations" in k for k in model.state_dict())
    torch.testing.assert_close(model.log_likelihood(audio, mel), before_ll, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.infer(mel5, noise=z), before, atol=1e-5, rtol=0)


def test_wn_end_starts_at_zero_and_gives_shift_and_log_scale():
    wn = WN(3, 16, n_layers=3, channels=8)
    out = wn(torch.randn(2, 3, 10), torch.randn(2, 16, 10))
    assert out.shape == (2, 6, 10) and out.abs().max() == 0
    assert [layer.dilation[0] for layer in wn.in_layers] == [1, 2, 4]
    assert wn.cond_layer.out_channels == 2 * 8 * 3
    assert [layer.out_channels for layer in wn.res_skip_layers] == [16, 16, 8]


def test_mel_too_short_is_an_error():
    model = WaveGlow(WaveGlowConfig.tiny())
    with pytest.raises(WavflowError, match="too short"):
        model(torch.randn(1, 4 * HOP + 1024), torch.randn(1, 80, 4))


def test_registry_and_mel_config():
    model = build_model("waveglow", {"n_flows": 4, "n_early_every": 2, "wn_layers": 2, "wn_channels": 16},
                        MelConfig(n_mels=40))
    assert isinstance(model, WaveGlow) and model.upsample.in_channels == 40
    assert model.infer(torch.randn(1, 40, 3)).shape == (1, 3 * HOP)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_fast_infer_equals_plain_inverse(kernel_size):
    """infer's folded matmul path computes exactly the flow's inverse (batch of 2, dilations past the length)."""
    torch.manual_seed(5)
    cfg = WaveGlowConfig(n_flows=5, n_group=8, n_early_every=2, n_early_size=2, wn_layers=4, wn_channels=24,
                         wn_kernel_size=kernel_size)
    model = WaveGlow(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    for frames in (1, 6):
        mel = torch.randn(2, 80, frames)
        z = torch.randn(2, 8, frames * HOP // 8)
        fast = model.infer(mel, noise=z, sigma=0.7)
        with torch.no_grad():
            plain = model.inverse(0.7 * z, mel)
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
        with torch.inference_mode():
            torch.testing.assert_close(model.infer(mel, noise=z, sigma=0.7), fast, atol=0, rtol=0)


def test_fast_infer_follows_weight_changes():
    model = tiny_model(dtype=torch.float32)
    mel = torch.randn(1, 80, 3)
    z = torch.randn(1, 8, 3 * HOP // 8)
    before = model.infer(mel, noise=z)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.training_loss(0.1 * torch.randn(1, 512), torch.randn(1, 80, 3))[0].backward()
    opt.step()
    after = model.infer(mel, noise=z)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        torch.testing.assert_close(after, model.inverse(0.6 * z, mel), atol=1e-5, rtol=1e-5)
    model.load_state_dict(tiny_model(seed=9, dtype=torch.float32).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.infer(mel, noise=z), model.inverse(0.6 * z, mel), atol=1e-5, rtol=1e-5)


def test_upsampler_matmul_equals_conv_transpose():
    model = WaveGlow(WaveGlowConfig.tiny()).double()
    mel = torch.randn(2, 80, 5, dtype=torch.float64)
    from wavflow.flows import squeeze

    for t in (8, 256, 5 * HOP, 4 * HOP + 1024):
        ref = squeeze(model.upsample(mel)[..., :t], 8)
        torch.testing.assert_close(model.condition(mel, t), ref, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Sampling backends and reduced precision

from wavflow.models import waveglow_sampling as sampling_module  # noqa: E402  (the section that uses it)


def _perturbed(cfg: WaveGlowConfig, seed: int = 5) -> WaveGlow:
    torch.manual_seed(seed)
    model = WaveGlow(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("backend", sampling_module.SAMPLING_BACKENDS)
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_every_sampling_backend_equals_plain_inverse(backend, kernel_size):
    """Each backend (BLAS channels-first, BLAS time-major, oneDNN convolutions) computes the flow's inverse,
    with dilations reaching past the utterance (frames=1) and a batch of 2."""
    model = _perturbed(WaveGlowConfig(n_flows=5, n_group=8, n_early_every=2, n_early_size=2, wn_layers=4,
                                      wn_channels=24, wn_kernel_size=kernel_size))
    model.set_backend(backend)
    for frames in (1, 6):
        mel = torch.randn(2, 80, frames)
        z = torch.randn(2, 8, frames * HOP // 8)
        with torch.no_grad():
            plain = model.inverse(0.7 * z, mel)
        assert model.sampling_backend(frames * HOP).backend == backend
        torch.testing.assert_close(model.infer(mel, noise=z, sigma=0.7), plain, atol=1e-5, rtol=1e-5)


def test_coupling_plan_equals_wn_on_every_backend():
    """One coupling network, folded (gate as sigmoids, end o skip, bias-free stream), against WN itself."""
    torch.manual_seed(1)
    net = WN(3, 80 * 8, n_layers=5, channels=16)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x_a, cond = torch.randn(3, 40), torch.randn(80 * 8, 40)
    with torch.no_grad():
        expected = net(x_a[None], cond[None])[0]
        plan = sampling_module._CouplingPlan.fold(net)
        work = sampling_module._Workspace()
        for backend in sampling_module.SAMPLING_BACKENDS:
            for _ in range(2):  # the second call reuses the workspace's buffers
                shift, log_s = plan.run(x_a, cond, backend, work)
                torch.testing.assert_close(torch.cat([shift, log_s]), expected, atol=1e-5, rtol=1e-5)


def test_backend_is_measured_once_per_shape_class_and_can_be_forced(monkeypatch):
    calls = []
    real = sampling_module._measure_backends

    def counting(coupling, groups, dtype, device, rounds=2):
        calls.append(groups)
        return real(coupling, groups, dtype, device, rounds)

    monkeypatch.setattr(sampling_module, "_measure_backends", counting)
    monkeypatch.setattr(sampling_module, "_backend_choices", {})
    model = tiny_model(dtype=torch.float32).eval()
    for frames in (3, 3, 4, 40, 50):
        model.infer(torch.randn(1, 80, frames))
    # 3 and 4 frames fall in one power-of-two bucket (128 groups); 40 and 50 frames both reach the cap
    assert calls == [128, sampling_module.TUNE_GROUPS]
    choices = sampling_module.sampling_backend_choices()
    assert len(choices) == 2 and all(c.how == "measured" for c in choices.values())
    for c in choices.values():
        assert set(c.seconds) == set(sampling_module.SAMPLING_BACKENDS)
        assert c.backend == min(c.seconds, key=c.seconds.get)
    # a backend the caller names is used as it is, never measured: per call, or as the model's default
    assert model.sampling_backend(3 * HOP, backend="conv").backend == "conv" and len(calls) == 2
    assert model.sampling_backend(3 * HOP, backend="conv").how == "chosen by the caller"
    model.set_backend("mm_t")
    assert model.sampling_backend(3 * HOP).backend == "mm_t" and len(calls) == 2
    assert model.sampling_backend(3 * HOP, backend="mm").backend == "mm"  # the call's own wins
    for bad in (lambda: model.infer(torch.randn(1, 80, 3), backend="blas"), lambda: model.set_backend("blas")):
        with pytest.raises(WavflowError, match="^WaveGlow sampling backend 'blas': expected one of mm, mm_t, conv$"):
            bad()
    assert model.backend == "mm_t"  # a refused backend leaves the model's own


def test_backend_is_an_argument_of_the_api(tmp_path):
    """wavflow.load and wavflow.synthesize take the backend (the synthesize command line calls load_vocoder and
    vocode, which take it too); each backend's audio is the plain inverse's to float rounding, and a family whose
    infer takes no backend refuses it in one line."""
    import wavflow
    from wavflow import inference
    from wavflow.checkpoint import model_payload, save_checkpoint

    model = _perturbed(WaveGlowConfig(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=2,
                                      wn_channels=16))
    path = tmp_path / "glow.pt"
    save_checkpoint(path, model_payload(model, step=0))
    assert wavflow.load(path, backend="conv").backend == "conv" and wavflow.load(path).backend is None
    assert inference.load_vocoder(path, backend="mm_t").backend == "mm_t"
    mel = np.random.default_rng(0).normal(-6, 2, (80, 7)).clip(-11.5, 1).astype(np.float32)  # a log-mel's range
    outs = {b: wavflow.synthesize(mel, path, seed=1, backend=b) for b in sampling_module.SAMPLING_BACKENDS}
    for b in ("mm_t", "conv"):
        torch.testing.assert_close(outs[b], outs["mm"], atol=1e-5, rtol=1e-5)
    loaded = inference.load_vocoder(path)
    assert torch.equal(next(iter(inference.vocode(loaded, [mel], seed=1, backend="conv")))[1], outs["conv"])
    with pytest.raises(WavflowError, match="^WaveGlow sampling backend 'blas': expected one of mm, mm_t, conv$"):
        wavflow.synthesize(mel, path, backend="blas")
    student = build_model("student", StudentConfig.tiny())
    with pytest.raises(WavflowError, match="^option 'backend' does not apply to a student model"):
        wavflow.synthesize(mel, model=student, backend="mm")
    with pytest.raises(WavflowError, match="^option 'backend' does not apply to a student model"):
        student.set_backend("mm")


def test_bf16_infer_is_close_to_fp32_and_keeps_a_float32_state():
    """bf16 weights: the coupling networks compute in bf16 (8 significant bits, relative rounding 2^-9 = 0.2%
    per op), the flow state, the affine updates and the 1x1 inverses in float32, and the audio comes back in
    float32. Across the flows the bf16 roundings of shift and log-scale add up to under 2% of the signal's peak
    (this model, seed 0: 0.5%; seeds 0-3: 0.2 to 1.1%), where a wrong cast or a broken plan is off by tens of %."""
    model = tiny_model(dtype=torch.float32).eval()
    model.remove_weight_norm()
    mel = torch.randn(1, 80, 8)
    z = torch.randn(1, 8, 8 * HOP // 8)
    reference = model.infer(mel, noise=z)
    half = model.to(torch.bfloat16)
    out = half.infer(mel.bfloat16(), noise=z)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert (out - reference).abs().max() < 0.02 * reference.abs().max()
    assert not torch.equal(out, reference)  # the bf16 plan ran


@pytest.mark.parametrize("block", [1, 5, 64])
def test_time_major_blocks_equal_the_plain_inverse(block, monkeypatch):
    """mm_t runs each layer in blocks of time rows: any block size, edges and dilations across block
    boundaries included, gives the flow's inverse."""
    monkeypatch.setattr(sampling_module._CouplingPlan, "BLOCK", block)
    model = _perturbed(WaveGlowConfig(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=4,
                                      wn_channels=16))
    mel = torch.randn(1, 80, 3)
    z = torch.randn(1, 8, 3 * HOP // 8)
    with torch.no_grad():
        plain = model.inverse(0.6 * z, mel)
    torch.testing.assert_close(model.infer(mel, noise=z, backend="mm_t"), plain, atol=1e-5, rtol=1e-5)
