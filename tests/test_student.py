"""IAF student: exact flow algebra (Jacobian, parallel == sequential, inversion) and distillation from a teacher."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from wavflow.audio import load_audio
from wavflow.errors import WavflowError
from wavflow.frontend import mel_spectrogram
from wavflow.losses import stft_loss
from wavflow.models import weights_sha256
from wavflow.models.student import IAFStudent, StudentConfig

from synth_helpers import clip


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


def test_flow_heads_stay_float32_under_bf16_autocast(mel):
    """bf16 training autocasts the stacks, but each flow's (mu, log s), and so (M, log S) and the KL, stay float32:
    the head is the float32 conv of the bf16 features."""
    model = _student()
    z = torch.randn(1, 4 * 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.conditioning(mel, z.shape[-1])
        x, mean, log_scale = model.flow(z, cond)
        flow = model.flows[0]
        features = F.relu(flow.hidden(F.relu(flow.stack(F.pad(z, (1, -1)).unsqueeze(1), cond))))
        mu, log_s = flow(z, cond)
    assert features.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in (x, mean, log_scale, mu, log_s))
    head = F.conv1d(features.float(), flow.out.weight, flow.out.bias)
    assert torch.equal(mu, head[:, 0]) and torch.equal(log_s, head[:, 1].clamp(min=flow.log_scale_min))


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


@pytest.mark.parametrize("invert", [False, True])
def test_compiled_step_loop_equals_torch_step_loop(invert, mel):
    # The numba loop (float32 CPU default of invert/log_likelihood) against the torch reference loop, with a
    # chunk size that splits the utterance so the state carried across chunks is exercised too.
    model = _student("logistic")
    mel2 = torch.cat([mel, mel.flip(-1)])
    z = torch.randn(2, 4 * 256)
    with torch.no_grad():
        cond = model.conditioning(mel2, z.shape[-1])
        values = model.flow(z, cond)[0] if invert else z
        compiled = model._sequential(values, cond, invert, chunk=300, compiled=True)
        reference = model._sequential(values, cond, invert, compiled=False)
    for a, b in zip(compiled, reference, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_fast_inference_path_equals_module_path(mel):
    # fast_flow folds constants into the weights and runs time-major GEMMs: same function, only rounding differs
    model = _student(dtype=torch.float64)
    mel2 = torch.cat([mel, mel.flip(-1)]).double()
    z = torch.randn(2, 4 * 256, dtype=torch.float64)
    cond = model.conditioning(mel2, z.shape[-1])
    with torch.no_grad():
        for ref, fast in zip(model.flow(z, cond), model.fast_flow(z, cond), strict=True):
            assert torch.allclose(ref, fast, atol=1e-12, rtol=0)
        x_fast, _, _ = model.sample(mel2, z=z)  # no grad: the fast path
    x_ref, _, _ = model.sample(mel2, z=z)  # grad enabled: the module path
    assert x_ref.requires_grad and not x_fast.requires_grad
    assert torch.allclose(x_ref, x_fast, atol=1e-12, rtol=0)
    # other kernel sizes (the zero-padded buffer must cover the longest lag, (k - 1) * d)
    for k in (2, 4):
        torch.manual_seed(k)
        other = IAFStudent(dataclasses.replace(StudentConfig.tiny(), kernel_size=k)).double().eval()
        with torch.no_grad():
            for f in other.flows:
                f.out.weight.normal_(0, 0.3)
            cond = other.conditioning(mel2, z.shape[-1])
            for ref, fast in zip(other.flow(z, cond), other.fast_flow(z, cond), strict=True):
                assert torch.allclose(ref, fast, atol=1e-12, rtol=0)
    # the default layout too (60 layers, 64 channels), in float32
    big = IAFStudent(StudentConfig()).eval()
    with torch.no_grad():
        for f in big.flows:
            f.out.weight.normal_(0, 0.01)
        z = torch.randn(1, 4 * 256)
        cond = big.conditioning(mel, z.shape[-1])
        ref, fast = big.flow(z, cond)[0], big.fast_flow(z, cond)[0]
    assert (ref - fast).abs().max() < 1e-5 * ref.abs().max()


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_blocked_fast_flow_equals_whole_utterance(kernel_size, monkeypatch):
    # Time blocks carry each layer's last (k - 1) * d input rows into the next block, so blocking only changes
    # GEMM shapes. Three flows of dilations 1..16 (longest carried context 16 or 32 rows); blocks shorter than
    # that context (the carried rows then span earlier blocks too), blocks that do not divide T, one that does,
    # and blocks as long as or longer than the utterance; two utterances and three flows share the buffers.
    torch.manual_seed(kernel_size)
    config = dataclasses.replace(StudentConfig.tiny(), flow_layers=(5, 5, 5), dilation_cycle=5,
                                 kernel_size=kernel_size)
    model = IAFStudent(config).eval()
    T = 700
    with torch.no_grad():
        for f in model.flows:
            f.out.weight.normal_(0, 0.3)
            f.out.bias.normal_(0, 0.3)
        z = torch.randn(2, T)
        z_before = z.clone()
        cond = torch.randn(2, config.upsample_channels, T)
        ref = model.flow(z, cond)
        whole = model.fast_flow(z, cond, block=T)
        for r, w in zip(ref, whole, strict=True):
            assert (r - w).abs().max() < 1e-5
        for block in (3, 13, 24, 64, 350, T, 2 * T):
            for w, b in zip(whole, model.fast_flow(z, cond, block=block), strict=True):
                assert (w - b).abs().max() < 1e-5, block
        assert torch.equal(z, z_before)  # the input is never written
        # the CPU default blocks too
        monkeypatch.setattr(IAFStudent, "FAST_BLOCK", 24)
        for r, b in zip(ref, model.fast_flow(z, cond), strict=True):
            assert (r - b).abs().max() < 1e-5
        # a float64 copy agrees to float64 rounding at any block size
        model64 = model.double()
        z64, cond64 = z.double(), cond.double()
        ref64 = model64.flow(z64, cond64)
        for block in (5, 64):
            for r, b in zip(ref64, model64.fast_flow(z64, cond64, block=block), strict=True):
                assert (r - b).abs().max() < 1e-12, block
        with pytest.raises(WavflowError, match="block"):
            model.fast_flow(z64, cond64, block=0)


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
    with pytest.raises(WavflowError, match="'sigma' does not apply to a student model"):
        model.infer(mel, sigma=0.6)
    # infer's noise is draw_noise's: the same generator gives the same audio either way
    noise = model.draw_noise(1, 4 * 256, torch.Generator().manual_seed(5))
    assert noise.shape == (1, 4 * 256) and noise.dtype == torch.float32
    assert torch.equal(model.infer(mel, noise=noise), a)
    with pytest.raises(WavflowError, match="needs a teacher"):
        model.training_loss(torch.zeros(1, 2048), mel)


# ----------------------------------------------------------------------------------------------------------------
# Distillation from a tiny teacher trained here on two real clips

CLIPS = ("LJ002-0020", "LJ001-0002")
CROP = 4096


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(ljspeech_root):
    return [load_audio(clip(name), 22050) for name in CLIPS]


def _crops(clips, g):
    starts = [torch.randint(0, len(c) - CROP, (1,), generator=g).item() for c in clips]
    audio = torch.stack([c[s: s + CROP] for c, s in zip(clips, starts, strict=True)])
    return audio, mel_spectrogram(audio)


@pytest.fixture(scope="module")
def teacher(clips):
    """A tiny Gaussian WaveNet, 150 Adam steps on random crops of the two clips (~10 s of CPU)."""
    from wavflow.models.wavenet import WaveNet, WaveNetConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig.tiny(output="gaussian"))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss, _ = model.training_loss(*_crops(clips, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)  # so that any .grad seen later came from distillation
    torch.set_num_threads(threads)
    return model.eval()


def _evaluate(student, teacher, audio, mel):
    """KL per step and STFT distance to the real audio of the student's sample from fixed noise."""
    with torch.no_grad():
        z = torch.randn(audio.shape, generator=torch.Generator().manual_seed(9))
        x, mean, log_scale = student.flow(z, student.conditioning(mel, audio.shape[-1]))
        kl, _ = student.distillation_kl(mean, log_scale, teacher(x, mel))
        sc, mag = stft_loss(x, audio, student.config.stft_resolutions)
    return kl.mean().item(), (sc + mag).item()


def test_distillation_lowers_kl_and_stft_distance_and_leaves_teacher_untouched(teacher, clips):
    real = torch.stack([c[3000: 3000 + 2 * CROP] for c in clips])  # held-out positions of the real clips
    real_mel = mel_spectrogram(real)
    before_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = IAFStudent(StudentConfig.tiny())
    student.attach_teacher(teacher, "0" * 64)
    assert student.teacher is teacher and student.teacher_sha256 == "0" * 64
    assert not any(k.startswith("_teacher") or "teacher" in k for k in student.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    kl0, stft0 = _evaluate(student, teacher, real, real_mel)
    opt = torch.optim.Adam(student.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    student.train()
    for _ in range(60):
        loss, logs = student.training_loss(*_crops(clips, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) >= {"kl", "stft", "student_rms", "lsd_db"}
    assert not teacher.training  # student.train() does not reach the unregistered teacher
    kl1, stft1 = _evaluate(student, teacher, real, real_mel)
    assert kl1 < 0.1 * kl0, (kl0, kl1)
    assert stft1 < 0.5 * stft0, (stft0, stft1)
    # No gradient ever reached the teacher, and its weights are bit-identical.
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before_weights[k]) for k, v in teacher.state_dict().items())
    # attach_teacher recorded the one weights hash (models.weights_sha256), which sees any change
    assert student.teacher_weights_sha256 == weights_sha256(teacher)
    with torch.no_grad():
        next(teacher.parameters()).add_(1e-3)
    assert student.teacher_weights_sha256 != weights_sha256(teacher)
    teacher.load_state_dict(before_weights)


class _DetachedInput(torch.nn.Module):
    """The same teacher, but blind to gradients through its input."""

    def __init__(self, teacher):
        super().__init__()
        self.inner = [teacher]
        self.dist, self.mel_config = teacher.dist, teacher.mel_config

    def forward(self, audio, mel):
        return self.inner[0](audio.detach(), mel)


def test_gradients_flow_through_teachers_input(teacher, clips):
    audio, mel = _crops(clips, torch.Generator().manual_seed(2))
    grads = []
    for t in (teacher, _DetachedInput(teacher)):
        student = _student()
        student.config = dataclasses.replace(student.config, stft_weight=0.0)  # only the KL path
        student.attach_teacher(t)
        torch.manual_seed(3)  # same noise
        loss, _ = student.training_loss(audio, mel)
        student.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]))
    assert grads[0].shape == grads[1].shape
    assert (grads[0] - grads[1]).abs().max() > 1e-4 * grads[0].abs().max()
    assert all(p.grad is None for p in teacher.parameters())


def test_mixture_teacher_monte_carlo_loss(clips):
    from wavflow.models.wavenet import WaveNet, WaveNetConfig

    teacher = WaveNet(WaveNetConfig.tiny(output="mixture"))
    for base in ("gaussian", "logistic"):
        student = _student(base)
        student.attach_teacher(teacher, None)
        loss, logs = student.training_loss(*_crops(clips, torch.Generator().manual_seed(4)))
        assert torch.isfinite(loss) and math.isfinite(logs["kl"]) and logs["scale_reg"] == 0.0
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.flows.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(WavflowError, match="mu-law"):
        _student().attach_teacher(WaveNet(WaveNetConfig.tiny(output="mulaw")))
