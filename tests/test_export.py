"""ONNX export (wavflow/export.py): onnxruntime's audio equals the PyTorch model's for the same noise, on the shipped
WaveGlow and student and on tiny models, at two lengths and two batch sizes (the dynamic axes); weight norm is
folded and the 1x1 inverses are stored; the file is written atomically."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wavflow import export
from wavflow.checkpoint import load, model_payload, save_checkpoint
from wavflow.commands import export as cli
from wavflow.errors import WavflowError
from wavflow.models import build_model
from wavflow.models.student import StudentConfig
from wavflow.models.waveglow import WaveGlowConfig
from wavflow.models.wavenet import WaveNetConfig

from synth_helpers import REPO, run_in_process, snapshot, tiny_waveglow

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'wavflow[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'wavflow[onnx]')")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = REPO / "checkpoints"
LENGTHS = (5, 19)  # frames: two lengths through one file (the dynamic axis)


def _tiny_student() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("student", StudentConfig.tiny())
    with torch.no_grad():
        for f in model.flows:
            f.out.weight.normal_(0, 0.3)
    return model.eval()


def _tiny_waveglow_1024() -> torch.nn.Module:
    """Weight norm left on (as training leaves it) and a 1024-sample upsampler kernel (the crop of the
    transposed conv's 3 extra frames is in the graph)."""
    torch.manual_seed(0)
    model = build_model("waveglow", WaveGlowConfig.tiny())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _at_rate(family: str, sample_rate: int, hop: int) -> torch.nn.Module:
    """A tiny model at another rate and hop: WaveGlow's groups (10 at hop 300) and 4-frame upsampler, the
    student's upsampling stages, all derived from the hop."""
    from wavflow.frontend import MelConfig

    mel = MelConfig.preset("espnet", sample_rate=sample_rate, hop_length=hop, n_fft=4 * hop, win_length=4 * hop)
    torch.manual_seed(0)
    if family == "waveglow":
        config = WaveGlowConfig(n_flows=4, n_early_every=2, n_early_size=2, wn_layers=2, wn_channels=16)
    else:
        config = StudentConfig.tiny()
    model = build_model(family, config, mel)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _tiny_waveglow_source() -> torch.nn.Module:
    """A source (pitch predictor, harmonic excitation in the conditioning and through the source filter) and the
    energy prior, in the graph."""
    torch.manual_seed(0)
    config = WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "source": True, "source_channels": 8,
                               "source_filter": True, "source_harmonics": 4, "energy_prior": True})
    model = build_model("waveglow", config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        model.source.out.bias.copy_(torch.tensor([0.0, 0.5]))  # mostly voiced; |logit| > 0.1 on the test mels
        model.harmonics.out.weight.normal_(0.0, 0.01)  # a harmonic mean that is not zero
    return model.eval()


MODELS = {
    "shipped-waveglow": lambda: load(SHIPPED / "waveglow-ljspeech-mini.pt"),
    "shipped-student": lambda: load(SHIPPED / "student-ljspeech-mini.pt"),
    "tiny-waveglow": tiny_waveglow,
    "tiny-waveglow-weight-norm": _tiny_waveglow_1024,
    "tiny-student": _tiny_student,
    "tiny-waveglow-24k-hop300": lambda: _at_rate("waveglow", 24000, 300),
    "tiny-student-16k-hop200": lambda: _at_rate("student", 16000, 200),
    "tiny-waveglow-source-filter-energy": _tiny_waveglow_source,
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    model = MODELS[request.param]()
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export.export_onnx(model, path)
    # exporting folds a copy: the model keeps its own weights and parametrizations
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    return request.param, model, path


def test_onnxruntime_equals_pytorch_for_the_same_noise(exported):
    name, model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scalar = "sigma" if model.model_type == "waveglow" else "temperature"
    assert [i.name for i in session.get_inputs()] == ["mel", "z", scalar]
    source = getattr(model, "source", None) is not None  # a pitch predictor: the WaveGlow's or the student's
    assert [o.name for o in session.get_outputs()] == ["audio", *(("f0", "voiced") if source else ())]
    assert [o.name for o in session.get_outputs()] == list(model.export_spec().outputs)
    hop = model.mel_config.hop_length
    value = 0.8 if scalar == "sigma" else 0.7
    for batch, frames in [(1, LENGTHS[0]), (1, LENGTHS[1]), (2, LENGTHS[1])]:
        gen = torch.Generator().manual_seed(frames + batch)
        mel = torch.rand(batch, model.mel_config.n_mels, frames, generator=gen) * 8 - 10
        z = model.draw_noise(batch, frames * hop, gen)
        outputs = session.run(None, {"mel": mel.numpy(), "z": z.numpy(), scalar: np.array(value, np.float32)})
        audio = outputs[0]
        if source:  # the graph's pitch is the PyTorch predictor's, and the audio is made from it
            f0, voiced = model.source.predict(mel)
            np.testing.assert_array_equal(outputs[2], voiced.numpy())
            np.testing.assert_allclose(outputs[1], f0.numpy(), rtol=1e-5, atol=0)
            assert 0 < voiced.mean() < 1 or batch == 1  # voiced and unvoiced frames in the batch of two
        reference = export.reference_audio(model, mel, z, scalar, value, outputs)
        if not source:  # (the same as infer's own pitch for a model without a source)
            with torch.no_grad():
                torch.testing.assert_close(reference, model.infer(mel, noise=z, **{scalar: value}))
        assert audio.shape == (batch, frames * hop) and audio.dtype == np.float32
        np.testing.assert_allclose(audio, reference.numpy(), rtol=0, atol=1e-4)
        assert np.abs(reference.numpy()).max() > 1e-3  # not a trivially silent comparison
    # the scalar input is live: another sigma or temperature changes the audio
    other = session.run(None, {"mel": mel.numpy(), "z": z.numpy(), scalar: np.array(0.3, np.float32)})[0]
    assert not np.allclose(other, audio)


def test_graph_is_folded_noise_free_and_labelled(exported):
    name, model, path = exported
    proto = onnx.load(str(path))
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert not any("original0" in n or "original1" in n or "weight_g" in n or "weight_v" in n for n in initializers)
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
    assert not ops & {"MatrixInverse", "Inverse", "Det"}  # the 1x1 inverses are stored, not computed
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["mel"] == ["batch", model.mel_config.n_mels, "frames"]
    assert dims["z"][0] == "batch" and dims["z"][-1] == "noise_steps"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["wavflow_model_type"] == model.model_type
    mc = model.mel_config
    assert (meta["hop_length"], meta["sample_rate"]) == (str(mc.hop_length), str(mc.sample_rate))
    if model.model_type == "waveglow":
        assert float(meta["default_sigma"]) == model.config.infer_sigma
        # every W^-1 of the flows is in the file, as computed in float64 from the folded W
        for k, conv in enumerate(model.convinv):
            inverse = torch.linalg.inv(conv.weight.detach().double()).float().numpy()
            assert any(a.shape == inverse.shape + (1,) and np.allclose(a[:, :, 0], inverse, atol=1e-7)
                       for a in initializers.values()), k


def test_refuses_the_teacher_and_writes_nothing(tmp_path):
    teacher = build_model("wavenet", WaveNetConfig.tiny())
    with pytest.raises(WavflowError, match="WaveNet teacher cannot be exported to ONNX: it is autoregressive"):
        export.export_onnx(teacher, tmp_path / "t.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    """A failure while the file is written (here: bytes that cannot be written) leaves neither the file nor a
    temporary, and keeps an older file whole."""
    monkeypatch.setattr(export, "to_onnx", lambda model, opset=None: object())
    before = snapshot(tmp_path)
    with pytest.raises(TypeError):
        export.export_onnx(tiny_waveglow(), tmp_path / "m.onnx")
    assert snapshot(tmp_path) == before
    (tmp_path / "m.onnx").write_bytes(b"an older file")
    with pytest.raises(TypeError):
        export.export_onnx(tiny_waveglow(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"an older file"



def test_cli_exports_and_verifies(tmp_path, capsys):
    save_checkpoint(tmp_path / "tiny.pt", model_payload(_tiny_student()))
    code, out, err = run_in_process(cli.run, [tmp_path / "tiny.pt", "-o", tmp_path / "s.onnx"], capsys,
                                    prog=cli.PROG)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 's.onnx'}: student") and "max |diff|" in out
    diff = float(out.rsplit("max |diff| ", 1)[1])
    assert diff < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx", "tiny.pt"]
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[2].name == "temperature"


def test_cli_default_output_name_and_shipped_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "glow.pt", model_payload(tiny_waveglow()))
    code, out, err = run_in_process(cli.run, ["glow.pt", "--no-verify"], capsys, prog=cli.PROG)
    assert code == 0, err
    assert (tmp_path / "glow.onnx").is_file() and "verified" not in out and "diff" not in out
