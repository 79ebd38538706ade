"""A fourth model family, defined here and registered with `wavflow.models.register`, runs through synthesis (the API
and the command line, from a checkpoint file), streaming, evaluation and the benchmark without any of those modules
knowing of it: everything they need of a family is a member of the `wavflow.models.Vocoder` interface.

The toy is a conditional Gaussian: each mel frame's hop samples have the mean a linear layer makes of the frame, and
independent noise of a learned std. Its likelihood is exact, and its output at sample t depends on t's frame and
noise alone, so a stream of any chunk size equals the whole utterance.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

import wavflow
from wavflow import evaluate, export, models, streaming
from wavflow.audio import to_int16
from wavflow.benchmark import runner as bench_runner
from wavflow.benchmark.entries import Entry
from wavflow.benchmark.measure import Peak
from wavflow.checkpoint import model_payload, save_checkpoint
from wavflow.commands import benchmark as bench_cmd
from wavflow.commands import evaluate as evaluate_cmd
from wavflow.commands import synthesize as synth_cmd
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.inference import synthesize  # not wavflow.synthesize: importing the command line's module shadows it
from wavflow.models import NoiseSpan, Streamer, Vocoder, noise_device, refuse_options, validate_mel

from synth_helpers import LJSPEECH, REPO, run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = REPO / "examples" / "LJ002-0020.npy"
HOP = 256


@dataclass(frozen=True)
class ToyConfig:
    init_std: float = 0.05  # the noise's std before training


class ToyStreamer(Streamer):
    """Each chunk on its own: sample t depends on its frame and its noise only."""

    def chunk(self, f0: int, f1: int) -> torch.Tensor:
        mel = self.mel[..., f0:f1]
        z = self.noise.span(f0 * self.hop, f1 * self.hop).to(mel.device)
        return self.model.infer(mel, noise=z, **self.options)[0]


class ToyVocoder(nn.Module, Vocoder):
    """audio[t] = proj(mel[:, t // hop])[t % hop] + noise_scale * std * z[t], z ~ N(0, 1)."""

    model_type: ClassVar[str] = "toy"
    infer_options: ClassVar[tuple[str, ...]] = ("noise_scale",)

    def __init__(self, config: ToyConfig = ToyConfig(), mel_config: MelConfig = MelConfig()):
        super().__init__()
        self.config, self.mel_config = config, mel_config
        self.proj = nn.Linear(mel_config.n_mels, mel_config.hop_length)
        self.log_std = nn.Parameter(torch.tensor(math.log(config.init_std)))

    def mean(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, F] -> the mean of every sample [B, F * hop]."""
        return 0.01 * self.proj(mel.transpose(1, 2)).flatten(1)

    def draw_noise(self, batch: int, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((batch, num_samples), generator=generator, device=noise_device(generator))

    @torch.no_grad()
    def infer(self, mel: torch.Tensor, *, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None, frames: Any = None, noise_scale: float = 1.0,
              **unknown: Any) -> torch.Tensor:
        refuse_options(self, unknown)
        validate_mel(mel, self.mel_config)
        if noise is None:
            noise = self.draw_noise(mel.shape[0], mel.shape[-1] * self.mel_config.hop_length, generator)
        return self.mean(mel) + noise_scale * self.log_std.exp() * noise.to(mel.device, mel.dtype)

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """[B] mean log-density per sample of audio [B, T] given mel [B, n_mels, F >= T / hop]: exact."""
        mu = self.mean(mel)[:, : audio.shape[-1]]
        return torch.distributions.Normal(mu, self.log_std.exp()).log_prob(audio).mean(-1)

    def training_loss(self, audio: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nll = -self.log_likelihood(audio, mel).mean()
        return nll, {"nll": nll.item()}

    def remove_weight_norm(self) -> None:
        """No weight norm: nothing to fold."""

    def streamer(self, mel: torch.Tensor, noise: NoiseSpan, options: dict[str, Any]) -> Streamer:
        return ToyStreamer(self, mel, noise, options)


@pytest.fixture(scope="module")
def toy_family():
    """The toy registered for this module's tests, the registry restored after them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "REGISTRY", dict(models.REGISTRY))
        models.register(ToyVocoder, ToyConfig)
        yield


@pytest.fixture(scope="module")
def toy(toy_family) -> ToyVocoder:
    torch.manual_seed(0)
    return models.build_model("toy", ToyConfig()).eval()


@pytest.fixture(scope="module")
def toy_ckpt(toy, tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.pt"
    save_checkpoint(path, model_payload(toy, step=3))
    return path


@pytest.fixture(scope="module")
def example_mel() -> np.ndarray:
    return np.load(EXAMPLE)


def test_register_and_the_interface(toy_family, toy, toy_ckpt):
    assert isinstance(toy, Vocoder) and models.model_classes("toy") == (ToyVocoder, ToyConfig)
    loaded = wavflow.load(toy_ckpt)  # the checkpoint format carries any registered family
    assert type(loaded) is ToyVocoder and loaded.model_type == "toy"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), toy.state_dict().values(), strict=True))

    class Impostor(ToyVocoder):
        model_type: ClassVar[str] = "waveglow"

    with pytest.raises(WavflowError, match="'waveglow' is registered already"):
        models.register(Impostor, ToyConfig)
    # The interface's defaults: what the toy does not declare, it refuses in one line
    with pytest.raises(WavflowError, match="^cannot export a toy model to ONNX"):
        export.check_exportable(toy)
    with pytest.raises(WavflowError, match="^option 'backend' does not apply to a toy model"):
        wavflow.load(toy_ckpt, backend="mm")
    assert not toy.sequential_likelihood and toy.no_bf16 is None and toy.half_by_cast and not toy.cpu_noise


def test_synthesize_api_and_command_line(toy, toy_ckpt, example_mel, tmp_path, capsys):
    mel = example_mel[:, :50]
    audio = synthesize(mel, model=toy, seed=1)
    assert audio.shape == (50 * HOP,) and audio.dtype == torch.float32
    # every mel on its own noise: a batch of two different lengths gives each its own audio
    batch = synthesize([mel, example_mel[:, 50:70]], model=toy, seed=1)
    assert [a.shape[0] for a in batch] == [50 * HOP, 20 * HOP]
    torch.testing.assert_close(batch[0], audio, rtol=0, atol=1e-6)
    # the mean is the mel's, the rest is noise of the toy's std
    with torch.no_grad():
        mean = toy.mean(torch.from_numpy(mel[None].copy()))[0]
    assert abs(float((audio - mean).std()) - 0.05) < 0.005
    torch.testing.assert_close(synthesize(mel, model=toy, seed=1, noise_scale=0.0), mean, rtol=0, atol=1e-6)
    with pytest.raises(WavflowError, match="'sigma' does not apply to a toy model"):
        synthesize(mel, model=toy, sigma=0.5)
    with pytest.raises(WavflowError, match="--denoise needs a WaveGlow.*this checkpoint is a toy"):
        synthesize(mel, model=toy, denoise=0.1)
    # from the checkpoint file, by the API and by `python -m wavflow.synthesize`
    from_file = synthesize(mel, toy_ckpt, seed=1)
    torch.testing.assert_close(from_file, audio, rtol=0, atol=1e-6)
    np.save(tmp_path / "m.npy", mel)
    code, _, err = run_in_process(synth_cmd.main, [tmp_path / "m.npy", "--checkpoint", toy_ckpt, "--seed", "1", "-q",
                                                   "-o", tmp_path / "m.wav"], capsys, synth_cmd.PROG)
    assert code == 0, err
    pcm, rate = sf.read(str(tmp_path / "m.wav"), dtype="int16")
    assert rate == 22050 and np.abs(pcm.astype(np.int32) - to_int16(audio)).max() <= 1


@pytest.mark.parametrize("chunk_seconds", [0.0116, 0.0813, 60.0])  # 1 frame, 7 frames, longer than the mel
def test_stream_equals_the_whole(toy, example_mel, chunk_seconds):
    mel = example_mel[:, :75]  # more than one noise block (64 frames)
    whole = synthesize(mel, model=toy, seed=4)
    chunks = list(wavflow.stream(mel, chunk_seconds, model=toy, seed=4))
    frames = streaming.chunk_frames(toy, chunk_seconds)
    assert [c.shape[0] for c in chunks[:-1]] == [frames * HOP] * (len(chunks) - 1)
    assert len(chunks) == -(-75 // frames)
    torch.testing.assert_close(torch.cat(chunks), whole, rtol=0, atol=1e-6)


def test_evaluate_scores_the_toy_with_its_exact_likelihood(toy, toy_ckpt, tmp_path, capsys, monkeypatch):
    metric_mel = MelConfig()
    clips = evaluate.load_clips(LJSPEECH, 20, 2, 0.5, metric_mel)
    checkpoint = evaluate.load_model(toy_ckpt, torch.device("cpu"))
    run = {"device": torch.device("cpu"), "metric_mel": metric_mel, "optional": {}, "nll_cap": 4 * HOP,
           "skip_nll": False, "seed": 0, "infer_options": {"sigma": 0.6, "noise_scale": 0.5}, "log": lambda msg: None}
    result = evaluate.evaluate_checkpoint(checkpoint, clips, **run)
    row = result.summary()
    # the NLL is the toy's Gaussian density of the recordings, pooled over every sample (no cap: not sequential)
    nats, count = 0.0, 0
    with torch.no_grad():
        for clip in clips:
            mu = toy.mean(mel_spectrogram(clip.audio[None], metric_mel))[0, : clip.audio.shape[0]]
            nats -= float(torch.distributions.Normal(mu, toy.log_std.exp()).log_prob(clip.audio).double().sum())
            count += clip.audio.shape[0]
    assert row["nll_samples"] == count and row["nll_seconds_per_clip"] is None
    assert math.isclose(row["nll_nats"], nats / count, rel_tol=1e-5)
    assert row["model_type"] == "toy" and row["infer_options"] == {"noise_scale": 0.5}  # sigma is not the toy's
    for key in ("logmel_l1", "mrstft", "mrstft_sc", "mrstft_logmag", "rtf"):
        assert row[key] is not None and math.isfinite(row[key]), key
    assert [c["id"] for c in row["per_clip"]] == [c.id for c in clips]
    # a family whose likelihood runs step by step declares it, and evaluation caps what it scores
    monkeypatch.setattr(ToyVocoder, "sequential_likelihood", True)
    capped = evaluate.evaluate_checkpoint(checkpoint, clips, **run).summary()
    assert capped["nll_samples"] == 2 * 4 * HOP and capped["nll_seconds_per_clip"] == 4 * HOP / 22050
    monkeypatch.undo()
    # and `wavflow evaluate` on the checkpoint file
    out = tmp_path / "eval.json"
    code, table, err = run_in_process(evaluate_cmd.main, [toy_ckpt, "--data-root", LJSPEECH, "--max-clips", "2",
                                                      "--max-seconds", "0.5", "--griffin-lim-iters", "0", "--json",
                                                      out, "--device", "cpu"], capsys, evaluate_cmd.PROG)
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out.read_text())["systems"]}
    assert rows["toy"]["model_type"] == "toy" and math.isclose(rows["toy"]["nll_nats"], nats / count, rel_tol=1e-5)
    assert "| toy |" in table


def _toy_call(model: ToyVocoder, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.infer(mel, generator=generator)


def test_benchmark_runs_a_row_of_the_toy(toy_family):
    entry = Entry("toy", "toy", "Toy Gaussian", _toy_call)
    settings = dataclasses.replace(bench_cmd.parse_args(["--quick", "--quiet", "--models", "waveglow"]),
                                   entries=(entry,), configs={"toy": "default"}, config_objects={"toy": ToyConfig()},
                                   repeats=3)
    run = bench_runner.Runner(settings, lambda msg: None)
    assert type(run.models["toy"].model) is ToyVocoder and run.models["toy"].parameters == 80 * HOP + HOP + 1
    (row,) = run.run_length(0.05, [entry], {"fp32": Peak(gflops=1.0, by_backend={"mm": 1.0})})
    frames = round(0.05 * 22050 / HOP)
    assert (row.model, row.family, row.samples, row.batch) == ("toy", "toy", frames * HOP, 1)
    assert len(row.times_s) == 3 and row.median_s > 0 and row.samples_per_s > 0 and row.dtype == "fp32"
    # FLOPs counted over the call: the linear layer's 2 x n_mels multiply-adds per sample
    assert row.flops_per_sample == pytest.approx(2 * 80, rel=0.01)
