"""IAF student: exact flow algebra (Jacobian, parallel == sequential, inversion) and distillation from a teacher."""
import math

import pytest
import torch

from wavflow.audio import load_audio
from wavflow.errors import WavflowError
from wavflow.melspec import MelConfig, mel_spectrogram
from wavflow.models.student import IAFStudent, StudentConfig


def _student(base="gaussian", dtype=torch.float32, seed=0):
    """A tiny student whose flows are NOT the identity: the zero-initialised output convs get random weights."""
    torch.manual_seed(seed)
    model = IAFStudent(StudentConfig.tiny(base)).to(dtype)
    with torch.no_grad():
        for f in model.flows:
            f.out.weight.normal_(0, 0.3)
            f.out.bias.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def mel(short_clip):
    audio = load_audio(short_clip, 22050)[4096: 4096 + 4 * 256]
    return mel_spectrogram(audio.unsqueeze(0))[..., :4]  # [1, 80, 4] -> 1024 samples


def test_configs():
    default = StudentConfig()
    assert default.flow_layers == (10,) * 6 and default.base == "gaussian" and default.residual_channels == 64
    model = IAFStudent(default)
    assert all(f.receptive_field == 2 * 1023 + 1 for f in model.flows)  # dilations 1..512, kernel 3
    pw = IAFStudent(StudentConfig.parallel_wavenet())
    assert [len(f.stack.blocks) for f in pw.flows] == [10, 10, 10, 30] and pw.config.base == "logistic"
    assert pw.flows[3].stack.dilations == tuple(2 ** i for i in range(10)) * 3
    with pytest.raises(WavflowError, match="dilation cycles"):
        IAFStudent(StudentConfig(flow_layers=(10, 7)))


@pytest.mark.parametrize("base", ["gaussian", "logistic"])
def test_jacobian_lower_triangular_with_diagonal_S(base):
    model = _student(base, torch.float64)
    mel = torch.randn(1, 80, 1, dtype=torch.float64)
    cond = model.conditioning(mel, 96)
    z = torch.randn(1, 96, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.flow(v.unsqueeze(0), cond)[0][0], z[0], vectorize=True)
    _, _, log_scale = model.flow(z, cond)
    assert torch.equal(torch.triu(jac, 1), torch.zeros_like(jac))  # x_t never depends on z[>t]
    assert torch.allclose(torch.diagonal(jac), log_scale[0].exp(), rtol=1e-12, atol=0)
    assert torch.tril(jac, -1).abs().max() > 1e-3  # and does depend on the past
    assert (log_scale[0] - log_scale[0].mean()).abs().max() > 1e-3  # S really varies per step


@pytest.mark.parametrize("base", ["gaussian", "logistic"])
def test_parallel_pass_equals_step_by_step(base, mel):
    model = _student(base, torch.float64)
    mel = mel.double()
    z = torch.randn(1, 4 * 256, dtype=torch.float64)
    x, mean, log_scale = model.sample(mel, z=z)
    with torch.no_grad():
        x_seq, mean_seq, log_scale_seq = model._sequential(z, model.conditioning(mel, z.shape[-1]), invert=False)
    assert torch.allclose(x, x_seq, atol=1e-10, rtol=0)
    assert torch.allclose(mean, mean_seq, atol=1e-10, rtol=0)
    assert torch.allclose(log_scale, log_scale_seq, atol=1e-10, rtol=0)
    assert torch.allclose(x, z * log_scale.exp() + mean, atol=1e-12, rtol=0)  # x = z * S + M


@pytest.mark.parametrize("base", ["gaussian", "logistic"])
def test_inversion_recovers_noise_and_likelihood(base, mel):
    model = _student(base)
    g = torch.Generator().manual_seed(1)
    mel2 = torch.cat([mel, mel.flip(-1)])  # a batch of two utterances
    x, mean, log_scale = model.sample(mel2, generator=g)
    z = (x - mean) / log_scale.exp()
    z_inv, log_scale_inv = model.invert(x, mel2)
    assert (z_inv - z).abs().max() < 1e-4
    assert (log_scale_inv - log_scale).abs().max() < 1e-4
    own = model.log_likelihood_of_own_sample(z, log_scale)
    assert own.shape == (2,)
    assert torch.allclose(model.log_likelihood(x, mel2), own, atol=1e-5, rtol=0)


def test_sample_interface(mel):
    model = _student()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = model.infer(mel, generator=g1)
    b = model.infer(mel, generator=g2)
    assert a.shape == (1, 4 * 256) and torch.equal(a, b) and a.abs().max() <= 1.0
    x0, mean, _ = model.sample(mel, temperature=0.0)
    assert torch.equal(x0, mean)  # temperature 0: the per-step means
    with pytest.raises(WavflowError, match="noise of shape"):
        model.sample(mel, z=torch.zeros(1, 100))
    with pytest.raises(WavflowError, match="fewer than"):
        model.conditioning(mel, 4 * 256 + 1)
    with pytest.raises(WavflowError, match="unknown student option"):
        model.infer(mel, sigma=0.6)
    with pytest.raises(WavflowError, match="needs a teacher"):
        model.training_loss(torch.zeros(1, 2048), mel)
