"""The IAF student with a source (`StudentConfig.source_harmonics`): the excitation in the conditioning, the harmonic
mean added to the flows' output, the source taken over from the teacher when distillation starts. Exact checks:
x = z S + M with M including h, the step-by-step inverse recovers z, the parallel passes agree, chunked == whole
(the teacher's stream too), ONNX == PyTorch, a grown student computes what it did."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from wavflow import export
from wavflow.errors import WavflowError
from wavflow.inference import synthesize
from wavflow.models.student import IAFStudent, StudentConfig
from wavflow.models.wavenet import WaveNet, WaveNetConfig
from wavflow.streaming import stream

from synth_helpers import REPO, live_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOP = 256
SOURCE = {"source_harmonics": 4, "source_channels": 8}


def _teacher(seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    return live_source(WaveNet(WaveNetConfig.tiny(**SOURCE)).eval())


def _student(seed: int = 1) -> IAFStudent:
    """A tiny student with a live source (voiced throughout, a loud harmonic mean) and flows off the identity."""
    torch.manual_seed(seed)
    student = IAFStudent(replace(StudentConfig.tiny(), **SOURCE)).eval()
    with torch.no_grad():
        for f in student.flows:
            f.out.weight.normal_(0, 0.3)
    return live_source(student)


def _mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed)) - 4


def test_the_harmonic_mean_joins_the_output_and_its_mean():
    student = _student()
    mel = _mel(2, 4, seed=2)
    z = student.draw_noise(2, 4 * HOP, torch.Generator().manual_seed(3))
    track = student.source_track(mel)
    h = student.mean_of(track, 4 * HOP)
    assert h.abs().max() > 0.05
    with torch.no_grad():
        x, mean, log_scale = student.sample(mel, z=z)  # fast_flow
    with torch.enable_grad():
        x_ref, mean_ref, log_ref = student.sample(mel, z=z)  # flow, the training pass
    torch.testing.assert_close(x, z * torch.exp(log_scale) + mean, atol=1e-5, rtol=0)  # one Gaussian per step
    for a, b in ((x, x_ref), (mean, mean_ref), (log_scale, log_ref)):
        torch.testing.assert_close(a, b.detach(), atol=1e-4, rtol=0)
    plain_x, _, _ = student.flow(z, student.conditioning(mel, 4 * HOP, track))
    torch.testing.assert_close(x, plain_x.detach() + h.detach(), atol=1e-4, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(student.infer(mel, noise=z), x.clamp(-1, 1), atol=0, rtol=0)


def test_the_step_by_step_inverse_recovers_the_noise():
    student = _student(seed=4)
    mel = _mel(1, 2, seed=5)
    z = student.draw_noise(1, 2 * HOP, torch.Generator().manual_seed(6))
    with torch.no_grad():
        x, _, log_scale = student.sample(mel, z=z)
    back, log_back = student.invert(x, mel)
    torch.testing.assert_close(back, z, atol=1e-3, rtol=0)
    torch.testing.assert_close(log_back, log_scale, atol=1e-4, rtol=0)


def _lively_teacher() -> WaveNet:
    teacher = _teacher(seed=8)
    with torch.no_grad():  # a livelier head, so the samples depend visibly on the past
        teacher.out2.weight.mul_(4)
    return teacher


@pytest.mark.parametrize("chunk", [0.0116, 0.0813])
@pytest.mark.parametrize("family,make,mel_seed", [("teacher", _lively_teacher, 9),
                                                   ("student", lambda: _student(seed=7), 8)])
def test_a_source_model_streams_like_the_whole_utterance(chunk, family, make, mel_seed):
    """The teacher's and the student's streams make each chunk's excitation and harmonic mean from the whole
    utterance's track: chunked == whole."""
    model = make()
    mel = _mel(1, 12, seed=mel_seed)
    whole = synthesize(mel[0].numpy(), model=model, seed=3)
    streamed = torch.cat(list(stream(mel[0].numpy(), chunk, model=model, seed=3)))
    assert streamed.shape == whole.shape == (12 * HOP,) and whole.abs().max() > 0.05
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-4)


def test_a_plain_student_grows_a_source_and_takes_the_teachers():
    torch.manual_seed(0)
    plain = IAFStudent(StudentConfig.tiny()).eval()
    with torch.no_grad():
        for f in plain.flows:
            f.out.weight.normal_(0, 0.3)
    grown = plain.grown(replace(plain.config, **SOURCE)).eval()
    mel = _mel(1, 3, seed=1)
    z = plain.draw_noise(1, 3 * HOP, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(grown.infer(mel, noise=z), plain.infer(mel, noise=z))
    with pytest.raises(WavflowError, match="cannot grow .*flow_layers"):
        plain.grown(replace(plain.config, flow_layers=(3,), **SOURCE))
    with pytest.raises(WavflowError, match="cannot grow .*source_harmonics"):  # a source is never taken away
        grown.grown(plain.config)
    # distillation starts: the untrained source becomes the teacher's
    teacher = _teacher()
    grown.attach_teacher(teacher)
    for name in ("source", "harmonics"):
        mine, theirs = getattr(grown, name).state_dict(), getattr(teacher, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    # a trained source stays the student's own
    trained = _student()
    before = {k: v.clone() for k, v in trained.harmonics.state_dict().items()}
    trained.attach_teacher(teacher)
    assert all(torch.equal(trained.harmonics.state_dict()[k], v) for k, v in before.items())


def test_a_source_student_needs_a_teacher_with_a_source_alike():
    with pytest.raises(WavflowError, match="distils from a teacher with one"):
        IAFStudent(replace(StudentConfig.tiny(), **SOURCE)).attach_teacher(WaveNet(WaveNetConfig.tiny()))
    with pytest.raises(WavflowError, match="must match the teacher's"):
        IAFStudent(replace(StudentConfig.tiny(), source_harmonics=6, source_channels=8)).attach_teacher(_teacher())
    with pytest.raises(WavflowError, match="source_harmonics=-2"):
        replace(StudentConfig.tiny(), source_harmonics=-2)


def test_distillation_trains_the_amplitudes_against_the_teachers_mean():
    teacher = _teacher(seed=2)
    student = IAFStudent(replace(StudentConfig.tiny(), **SOURCE)).train()
    with torch.no_grad():  # flows off the identity, so the conditioning (and the excitation in it) matters
        for f in student.flows:
            f.out.weight.normal_(0, 0.3)
    student.attach_teacher(teacher)
    audio, mel = 0.1 * torch.randn(2, 4 * HOP), _mel(2, 5, seed=3)
    torch.manual_seed(4)
    loss, logs = student.training_loss(audio, mel)
    assert math.isfinite(loss.item()) and logs["kl"] > 0
    loss.backward()
    assert student.harmonics.out.weight.grad.abs().sum() > 0 and student.excite.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.source.parameters())  # the pitch predictor stays the teacher's
    # taken over: the student's harmonic mean is the teacher's, so the KL compares the two flows' residuals
    with torch.no_grad():
        h_teacher = teacher.mean_of(teacher.source_track(mel), 4 * HOP)
        h_student = student.mean_of(student.source_track(mel), 4 * HOP)
    torch.testing.assert_close(h_student, h_teacher, atol=0, rtol=0)


def test_onnx_export_of_a_source_student_equals_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    student = _student(seed=9)
    path = tmp_path / "s.onnx"
    export.export_onnx(student, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["audio", "f0", "voiced"]
    for frames in (5, 19):
        mel = _mel(1, frames, seed=frames)
        z = student.draw_noise(1, frames * HOP, torch.Generator().manual_seed(frames))
        outputs = session.run(None, {"mel": mel.numpy(), "z": z.numpy(), "temperature": np.array(0.7, np.float32)})
        assert student.export_output_error(mel, outputs) < 1e-5
        reference = export.reference_audio(student, mel, z, "temperature", 0.7, outputs)
        np.testing.assert_allclose(outputs[0], reference.numpy(), rtol=0, atol=1e-4)
        assert np.abs(reference.numpy()).max() > 0.05
    assert export.verify(path, student) < 1e-3


def test_a_grown_student_distils_from_a_source_teacher_in_the_trainer(ljspeech_root, tmp_path):
    """--init a plain student with model_config.source_harmonics and a teacher with a source: the student grows one,
    takes the teacher's pitch predictor, trains, and its checkpoint keeps the source."""
    from wavflow.checkpoint import load, model_payload, save_checkpoint
    from wavflow.train import train

    recipe = REPO / "recipes/ljspeech/conf/student.tiny.yaml"
    config = yaml.safe_load(recipe.read_text())["model_config"]
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "student.pt", model_payload(IAFStudent(StudentConfig(**config)), step=5))
    save_checkpoint(tmp_path / "teacher.pt", model_payload(_teacher(), step=9))
    trainer = train(recipe, overrides=[
        f"data.root={ljspeech_root}", "data.n_valid=3", "data.segment_length=2048", "data.batch_size=2",
        f"teacher={tmp_path / 'teacher.pt'}", "model_config.source_harmonics=4", "model_config.source_channels=8",
        "train.max_steps=2", "train.valid_every=2", "train.valid_clips=1", "train.valid_max_seconds=0.25",
        "train.progress=false"], out_dir=tmp_path / "run", init=tmp_path / "student.pt")
    assert len(trainer.losses) == 2 and all(math.isfinite(v) for v in trainer.losses)
    student = load(tmp_path / "run" / "last.pt")
    assert student.config.source_harmonics == 4 and trainer.state.init_from["step"] == 5
    teacher = _teacher()
    assert all(torch.equal(student.source.state_dict()[k], v) for k, v in teacher.source.state_dict().items())
