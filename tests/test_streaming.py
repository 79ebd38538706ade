"""Streaming synthesis (wavflow/streaming.py): chunks equal the whole-utterance output for every family, the noise
is drawn per absolute position, and `python -m wavflow.synthesize --chunk-seconds` writes the same WAV atomically.

The models here have receptive fields longer than a chunk of one frame (256 samples), so the smallest chunks
only come out right if the state (student, teacher) or the window (WaveGlow) really carries across chunks.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow import noise as noise_module
from wavflow import streaming
from wavflow.audio import to_int16
from wavflow.commands import synthesize as synth_cli
from wavflow.errors import WavflowError
from wavflow.inference import synthesize
from wavflow.models import build_model, waveglow_streaming
from wavflow.models.student import StudentConfig
from wavflow.models.student_sampling import StudentStreamer
from wavflow.models.waveglow import WaveGlowConfig
from wavflow.models.wavenet import WaveNetConfig
from wavflow.noise import ItemNoise, item_seed
from wavflow.streaming import stream

from synth_helpers import REPO, run_in_process, save_tiny_waveglow, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = REPO / "examples" / "LJ002-0020.npy"
HOP = 256
# Chunks in seconds -> frames at 22,050 Hz / hop 256: 1 frame (shorter than every receptive field below), 3,
# 7 (neither divides the mels' lengths: the last chunk is partial) and one longer than the mel.
CHUNKS = [0.0116, 0.035, 0.0813, 60.0]


def _perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Random weights on top of the init, so zero-initialised outputs (WaveGlow's end conv, the student's out
    conv) do not make a model the identity, and every tap of the receptive field matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    # WaveGlow: 4 couplings of WN 4 layers reach 4 x 15 x 8 = 480 samples either side, and the 1024-sample
    # upsampler kernel 768 more before a window: 5 frames before a chunk, 2 after (stream_margins).
    waveglow = _perturbed(build_model("waveglow", WaveGlowConfig(
        n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=4, wn_channels=16,
        upsample_kernel=1024)), 0.05)
    # Student: two flows with dilations 1..128, 511 samples each (1,021 through both), plus the upsampler's 682.
    student = build_model("student", StudentConfig(flow_layers=(8, 8), dilation_cycle=8, residual_channels=8,
                                                    gate_channels=16, skip_channels=8, upsample_channels=16))
    with torch.no_grad():
        for f in student.flows:
            f.out.weight.normal_(0, 0.3)
    # Teacher: 8 layers in one cycle, dilations 1..128: a receptive field of 511 samples.
    teacher = build_model("wavenet", WaveNetConfig.tiny(layers=8, cycles=1)).eval()
    return {"waveglow": waveglow, "student": student.eval(), "wavenet": teacher}


@pytest.fixture(scope="module")
def example_mel():
    return np.load(EXAMPLE)


def _streamed(mel, chunk, **kwargs) -> torch.Tensor:
    chunks = list(stream(mel, chunk, **kwargs))
    assert all(c.dim() == 1 and c.dtype == torch.float32 and c.device.type == "cpu" for c in chunks)
    frames = streaming.chunk_frames(kwargs["model"], chunk)
    assert [c.shape[0] for c in chunks[:-1]] == [frames * HOP] * (len(chunks) - 1)  # whole chunks, last partial
    return torch.cat(chunks)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("family", ["waveglow", "student", "wavenet"])
def test_chunks_concatenate_to_the_whole_utterance(family, chunk, models, example_mel):
    model = models[family]
    mel = example_mel[:, 20:63]  # 43 frames: 11,008 samples
    whole = synthesize(mel, model=model, seed=5)
    streamed = _streamed(mel, chunk, model=model, seed=5)
    assert streamed.shape == whole.shape == (43 * HOP,)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)
    assert whole.abs().max() > 0.01


@pytest.mark.parametrize("method", ["cached_torch", "naive"])
def test_every_teacher_generation_method_streams(method, models, example_mel):
    """The torch steps (the GPU's path) and the naive reference carry their own state between chunks."""
    mel = example_mel[:, 50:54]
    whole = synthesize(mel, model=models["wavenet"], seed=2, method=method, temperature=0.7)
    for chunk in (0.0116, 0.035) if method != "naive" else (0.035,):  # naive: a 511-sample pass per sample
        streamed = _streamed(mel, chunk, model=models["wavenet"], seed=2, method=method, temperature=0.7)
        torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("output", ["mixture", "mulaw"])
def test_teacher_output_distributions_stream(output, example_mel):
    torch.manual_seed(0)
    teacher = build_model("wavenet", WaveNetConfig.tiny(layers=8, cycles=1, output=output)).eval()
    mel = example_mel[:, 70:82]
    whole = synthesize(mel, model=teacher, seed=9)
    torch.testing.assert_close(_streamed(mel, 0.035, model=teacher, seed=9), whole, rtol=0, atol=1e-5)


def test_options_reach_every_family(models, example_mel):
    mel = example_mel[:, 5:20]
    for family, options in [("waveglow", {"sigma": 0.9}), ("student", {"temperature": 0.5}),
                            ("wavenet", {"temperature": 0.5})]:
        model = models[family]
        whole = synthesize(mel, model=model, seed=1, **options)
        assert not torch.allclose(whole, synthesize(mel, model=model, seed=1))
        torch.testing.assert_close(_streamed(mel, 0.035, model=model, seed=1, **options), whole, rtol=0, atol=1e-5)


def test_denoised_stream_equals_denoised_whole(models, example_mel):
    """NVIDIA's denoiser (an STFT-iSTFT filter) streams exactly: each chunk is filtered in a window that reaches
    n_fft samples past it (the chunks here are shorter than n_fft)."""
    mel = example_mel[:, 30:60]
    whole = synthesize(mel, model=models["waveglow"], seed=4, denoise=0.05)
    assert not torch.allclose(whole, synthesize(mel, model=models["waveglow"], seed=4))
    for chunk in (0.0116, 0.0813, 60.0):
        torch.testing.assert_close(_streamed(mel, chunk, model=models["waveglow"], seed=4, denoise=0.05), whole,
                                   rtol=0, atol=1e-5)


def test_waveglow_windows_need_their_margins(models, example_mel, monkeypatch):
    """The equality above is not luck: without WaveGlow's margins, chunk edges show."""
    mel = example_mel[:, 20:63]
    whole = synthesize(mel, model=models["waveglow"], seed=5)
    assert waveglow_streaming.stream_margins(models["waveglow"]) == (5, 2)
    monkeypatch.setattr(waveglow_streaming, "stream_margins", lambda model: (0, 0))
    assert (_streamed(mel, 0.035, model=models["waveglow"], seed=5) - whole).abs().max() > 1e-2


def test_student_state_must_carry(models, example_mel, monkeypatch):
    """...and without the student's carried context, too (a fresh FlowStream for every chunk)."""
    mel = example_mel[:, 20:40]
    student = models["student"]
    whole = synthesize(mel, model=student, seed=5)
    torch.testing.assert_close(_streamed(mel, 0.035, model=student, seed=5), whole, rtol=0, atol=1e-5)
    chunk = StudentStreamer.chunk

    def forgetful(self, f0, f1):
        self.flows = student.flow_stream(1)
        return chunk(self, f0, f1)

    monkeypatch.setattr(StudentStreamer, "chunk", forgetful)
    assert (_streamed(mel, 0.035, model=student, seed=5) - whole).abs().max() > 1e-3


def test_mel_upsampler_window_equals_the_whole_mel(models, example_mel):
    up = models["student"].upsampler
    assert up.reach == 682  # 2 frames through the context conv, then x4 + 2 at each of the four stages
    mel = torch.from_numpy(example_mel[None, :, :40].copy())
    with torch.no_grad():
        whole = up(mel)
        for start, stop in [(0, 1), (0, 40), (3, 4), (17, 29), (39, 40)]:
            torch.testing.assert_close(up.window(mel, start, stop), whole[..., start * HOP: stop * HOP],
                                       rtol=0, atol=1e-5)
        # the margin is needed: two frames (512 samples) are short of the 682-sample reach
        short = up(mel[..., 15:31])[..., 2 * HOP: 14 * HOP]
        assert (short - whole[..., 17 * HOP: 29 * HOP]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Noise per absolute position

@pytest.mark.parametrize("family", ["waveglow", "student", "wavenet"])
def test_noise_depends_on_the_position_only(family, models):
    model = models[family]
    block = noise_module.NOISE_BLOCK_FRAMES * HOP
    whole = ItemNoise(model, 77).span(0, 3 * block + 5 * HOP)
    steps = whole.shape[-1] / (3 * block + 5 * HOP)
    noise = ItemNoise(model, 77)
    for a, b in [(0, 1), (63, 65), (64, 128), (100, 197), (150, 197), (1, 2)]:  # frames
        span = noise.span(a * HOP, b * HOP)
        torch.testing.assert_close(span, whole[..., int(a * HOP * steps): int(b * HOP * steps)], rtol=0, atol=0)
        assert len(noise._blocks) <= -(-(b - a) // noise_module.NOISE_BLOCK_FRAMES) + 1  # only the span's blocks
    assert not torch.equal(ItemNoise(model, 78).span(0, HOP), whole[..., : int(HOP * steps)])


def test_synthesize_draws_the_block_noise(models, example_mel):
    """wavflow.synthesize and streams read one noise: infer on ItemNoise's noise is synthesize's audio."""
    mel = example_mel[:, :70]  # more than one noise block (64 frames)
    for family in ("waveglow", "student"):
        model = models[family]
        z = ItemNoise(model, item_seed(3, mel)).span(0, 70 * HOP)
        with torch.no_grad():
            direct = model.infer(torch.from_numpy(mel[None].copy()), noise=z)[0]
        torch.testing.assert_close(synthesize(mel, model=model, seed=3), direct, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# API

def test_stream_checks_its_arguments_before_the_first_chunk(models, example_mel):
    model = models["waveglow"]
    with pytest.raises(WavflowError, match="stream takes one mel, got 2"):
        stream([example_mel[:, :5], example_mel[:, :6]], model=model)
    with pytest.raises(WavflowError, match="chunk_seconds must be a number > 0"):
        stream(example_mel[:, :5], 0, model=model)
    with pytest.raises(WavflowError, match="chunk_seconds must be a number > 0"):
        stream(example_mel[:, :5], float("nan"), model=model)
    with pytest.raises(WavflowError, match="'temperature' does not apply to a waveglow"):
        stream(example_mel[:, :5], model=model, temperature=0.5)  # refused here, not at next()
    with pytest.raises(WavflowError, match="--denoise needs a WaveGlow"):
        stream(example_mel[:, :5], model=models["student"], denoise=0.1)
    with pytest.raises(WavflowError, match=r"shape \(40, 5\)"):
        stream(example_mel[:40, :5], model=model)


def test_seed_none_follows_torchs_generator(models, example_mel):
    mel = example_mel[:, :9]
    torch.manual_seed(3)
    a = torch.cat(list(stream(mel, 0.035, model=models["student"])))
    torch.manual_seed(3)
    b = synthesize(mel, model=models["student"])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_measure_latency_reports_first_chunk_and_steady_state(models, example_mel):
    result = streaming.measure_latency(models["student"], example_mel, 0.3)
    frames = streaming.chunk_frames(models["student"], 0.3)
    assert result["model"] == "student" and result["chunk_seconds"] == frames * HOP / 22050
    assert result["chunks"] == -(-example_mel.shape[1] // frames)
    assert result["audio_seconds"] == example_mel.shape[1] * HOP / 22050
    assert result["first_chunk_seconds"] > 0 and result["steady_rtf"] > 0 and result["rtf"] > 0
    single = streaming.measure_latency(models["student"], example_mel[:, :5], 1.0)
    assert single["chunks"] == 1 and single["steady_rtf"] is None


# ---------------------------------------------------------------------------------------------------------------
# WAV files and the command line

def test_write_wav_writes_the_chunks_and_leaves_nothing_on_failure(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [torch.from_numpy(rng.uniform(-1.2, 1.2, n).astype(np.float32)) for n in (300, 1, 4096)]
    assert streaming.write_wav(tmp_path / "a.wav", iter(chunks), 22050) == 4397
    pcm, sr = sf.read(str(tmp_path / "a.wav"), dtype="int16")
    assert sr == 22050 and np.array_equal(pcm, to_int16(torch.cat(chunks)))
    assert sf.info(str(tmp_path / "a.wav")).subtype == "PCM_16"

    def failing():
        yield chunks[0]
        raise RuntimeError("the vocoder fell over")

    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="fell over"):
        streaming.write_wav(tmp_path / "b.wav", failing(), 22050)
    assert snapshot(tmp_path) == before  # no b.wav, no temporary


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_waveglow(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _cli(argv, capsys):
    return run_in_process(synth_cli.run, argv, capsys, prog=synth_cli.PROG)


def test_cli_chunk_seconds_writes_the_unstreamed_audio(ckpt, tmp_path, example_mel, capsys):
    np.save(tmp_path / "m.npy", example_mel)
    code, out, err = _cli([tmp_path / "m.npy", "--checkpoint", ckpt, "--chunk-seconds", "0.1", "--seed", "2",
                           "-o", tmp_path / "s.wav"], capsys)
    assert code == 0, err
    assert "wrote " in out and "s.wav" in out and "RTF" in out
    pcm, sr = sf.read(str(tmp_path / "s.wav"), dtype="int16")
    expected = to_int16(synthesize(example_mel, ckpt, seed=2))
    assert sr == 22050 and pcm.shape == expected.shape == (example_mel.shape[1] * HOP,)
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "s.wav"]


def test_cli_streams_long_mels_by_default_and_batches_the_rest(ckpt, tmp_path, example_mel, capsys, monkeypatch):
    mels = tmp_path / "mels"
    mels.mkdir()
    np.save(mels / "long.npy", example_mel[:, :60])
    np.save(mels / "short.npy", example_mel[:, 60:80])
    streamed, batched = [], []
    real_stream, real_vocode = streaming.stream_mel, synth_cli.vocode
    monkeypatch.setattr(streaming, "stream_mel", lambda model, mel, **kw: streamed.append(mel.shape[1]) or
                        real_stream(model, mel, **kw))
    monkeypatch.setattr(synth_cli, "vocode", lambda model, mels, **kw: batched.extend(m.frames for m in mels) or
                        real_vocode(model, mels, **kw))
    monkeypatch.setattr(synth_cli, "STREAM_ABOVE_SECONDS", 40 * HOP / 22050)  # 40 frames, for the test
    code, out, err = _cli([mels, "--checkpoint", ckpt, "--seed", "1", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert streamed == [60] and batched == [20]
    assert "2 files in" in out
    for name in ("long", "short"):
        pcm, _ = sf.read(str(tmp_path / "out" / f"{name}.wav"), dtype="int16")
        expected = to_int16(synthesize(np.load(mels / f"{name}.npy"), ckpt, seed=1))
        assert np.abs(pcm.astype(np.int32) - expected).max() <= 1


def test_cli_stream_failure_leaves_no_file(ckpt, tmp_path, example_mel, capsys, monkeypatch):
    np.save(tmp_path / "m.npy", example_mel[:, :40])

    def broken(self, f0, f1):
        if f0 > 0:
            raise WavflowError("simulated failure after the first chunk")
        return torch.zeros((f1 - f0) * HOP)

    monkeypatch.setattr(waveglow_streaming.WaveGlowStreamer, "chunk", broken)
    before = snapshot(tmp_path)
    code, _, err = _cli([tmp_path / "m.npy", "--checkpoint", ckpt, "--chunk-seconds", "0.05", "-o",
                         tmp_path / "m.wav", "-q"], capsys)
    assert code == 2 and "simulated failure" in err
    assert snapshot(tmp_path) == before


def test_cli_streams_with_the_denoiser(ckpt, tmp_path, example_mel, capsys):
    np.save(tmp_path / "m.npy", example_mel[:, :50])
    code, _, err = _cli([tmp_path / "m.npy", "--checkpoint", ckpt, "--chunk-seconds", "0.05", "--denoise", "0.05",
                         "--seed", "3", "-q", "-o", tmp_path / "m.wav"], capsys)
    assert code == 0, err
    pcm, _ = sf.read(str(tmp_path / "m.wav"), dtype="int16")
    expected = to_int16(synthesize(example_mel[:, :50], ckpt, seed=3, denoise=0.05))
    assert np.abs(pcm.astype(np.int32) - expected).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["waveglow", "student", "wavenet"])
def test_streaming_on_the_gpu_equals_whole(family, models, example_mel):
    """On a GPU: WaveGlow's windows, the student's FlowStream on CUDA tensors, the teacher's CUDA-graph steps
    (a stream chunk of whole frames is a whole number of 128-step graph replays)."""
    import copy

    model = copy.deepcopy(models[family]).cuda()
    mel = example_mel[:, 20:40]
    whole = synthesize(mel, model=model, seed=5)
    for chunk in (0.0116, 0.0813):
        torch.testing.assert_close(_streamed(mel, chunk, model=model, seed=5), whole, rtol=0, atol=1e-4)


def test_bf16_models_stream_like_their_whole_utterance(models, example_mel):
    """A model cast to bf16 (--dtype bf16) streams in bf16 too: its mel in bf16, WaveGlow's noise kept in float32
    as vocode keeps it. Chunks change the GEMM shapes, so the agreement is bf16's, not float32's."""
    import copy

    mel = example_mel[:, 10:30]
    for family in ("waveglow", "student"):
        model = copy.deepcopy(models[family]).to(torch.bfloat16)
        whole = synthesize(mel, model=model, seed=3)
        assert whole.dtype == torch.float32
        for chunk in (0.0232, 0.0813):  # chunks of 2 and 7 frames
            torch.testing.assert_close(_streamed(mel, chunk, model=model, seed=3), whole, rtol=0, atol=2e-2)
        with pytest.raises(WavflowError, match="dtype 'fp32': the model passed is in bfloat16"):
            stream(mel, model=model, dtype="fp32")
