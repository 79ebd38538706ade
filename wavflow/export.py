"""`wavflow export CHECKPOINT -o model.onnx`: WaveGlow or the IAF student as an ONNX graph, to run outside
PyTorch (onnxruntime, TensorRT, ...). The command line is wavflow.commands.export (also `python -m wavflow.export`).

    wavflow export checkpoints/waveglow-ljspeech-mini.pt -o waveglow.onnx
    wavflow export --model student -o student.onnx

The graph is the model's sampling pass with the noise as an input, so a caller controls the randomness and
the graph holds no random op:

    WaveGlow  mel [B, n_mels, F], z [B, n_group, F * hop / n_group] (standard normal), sigma []  -> audio [B, F * hop]
    student   mel [B, n_mels, F], z [B, F * hop] (the base noise: standard normal or logistic), temperature []
              -> audio [B, F * hop]

A WaveGlow with a source (design.md section 9) predicts its pitch and makes its excitation inside the graph and
also outputs f0 [B, F] (Hz, 0 where unvoiced) and voiced [B, F]; the energy prior scales z inside the graph too.
B and F are dynamic. Weight normalisation is folded into plain weights, and WaveGlow's invertible 1x1
convolutions are stored as their inverses (computed in float64), so the graph is plain convolutions and
pointwise ops. For the same z the graph's audio equals `model.infer(mel, noise=z, sigma=...)` (WaveGlow) or
`model.infer(mel, noise=z, temperature=...)` (student) to float rounding; wavflow's own `synthesize` draws z
per mel (wavflow.inference.ItemNoise). The file's metadata records the model type, sample rate, hop, n_mels,
n_group and the default sigma. The WaveNet teacher is not exported: it generates one sample per network pass
(a loop of tens of thousands of steps), which a static graph would have to unroll.

Needs the `onnx` extra (`pip install 'wavflow[onnx]'`: onnx, and onnxruntime to check the file). The file is
written atomically; bad input is one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cli import check_writable_dir
from .errors import WavflowError
from .fileio import atomic_write

EXPORTABLE = ("waveglow", "student")
OPSET = 17


# ----------------------------------------------------------------------------------------------------------------
# Export graphs: each model's sampling pass in ops that trace to ONNX with dynamic batch and length.

def folded_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of a wavflow model with weight norm folded; `model` itself is left as it is.

    A fresh model of the same config takes the weights: copy.deepcopy would share torch's generated
    parametrization classes with `model`, and folding the copy would then strip `.weight` from the original.
    """
    from .models import build_model

    fresh = build_model(model.model_type, model.config, model.mel_config)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if any(".parametrizations." in k for k in state):
        fresh.load_state_dict(state)
        fresh.remove_weight_norm()
    else:
        fresh.remove_weight_norm()
        fresh.load_state_dict(state)
    return fresh.eval()


class WaveGlowGraph(nn.Module):
    """WaveGlow's sampling pass (WaveGlow.infer, the flows run backwards) for export:
    (mel [B, n_mels, F], z [B, n_group, G], sigma []) -> audio [B, G * n_group], G = F * hop / n_group.
    With a source, also the predicted f0 [B, F] (Hz, 0 where unvoiced) and voiced [B, F] the excitation came from."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model = folded_copy(model)
        self.config, self.hop = model.config, model.mel_config.hop_length
        self.rate = model.mel_config.sample_rate
        self.source, self.filter, self.harmonics = model.source, model.filter, model.harmonics
        self._model = [model]  # prior_scale: the energy prior's std per group (no weights)
        self.upsample = model.upsample
        self.nets = nn.ModuleList(c.net for c in model.coupling)
        for k, conv in enumerate(model.convinv):
            w = conv.weight.detach().double()
            self.register_buffer(f"w_inv{k}", torch.linalg.inv(w).float()[:, :, None])

    def forward(self, mel: Tensor, z: Tensor, sigma: Tensor) -> Tensor:
        cfg, g = self.config, self.config.n_group
        cond = self.upsample(mel)  # [B, n_mels, (F - 1) * hop + kernel]
        if cfg.upsample_kernel > self.hop:
            cond = cond[:, :, : self.hop - cfg.upsample_kernel]  # F * hop samples (a constant crop: length stays dynamic)
        b, c = cond.shape[0], cond.shape[1]
        cond = cond.reshape(b, c, -1, g).transpose(2, 3).reshape(b, c * g, -1)  # flows.squeeze
        f0 = voiced = track = None
        if self.source is not None:
            from .source import excitation, free_track

            log_f0, logit = self.source(mel)
            voiced = (logit > 0).to(mel.dtype)
            f0 = torch.exp(log_f0) * voiced
            track = free_track(f0, voiced, self.hop, self.rate, traceable=True)
            if self.harmonics is not None:
                track = track.with_amplitudes(self.harmonics(mel))
            e = excitation(track, self.hop, self.rate, cfg.source_amplitude)
            cond = torch.cat([cond, e.reshape(b, 1, -1, g).transpose(2, 3).reshape(b, g, -1)], 1)
        z = z * sigma
        scale = self._model[0].prior_scale(mel, z.shape[-1])
        if scale is not None:
            z = z * scale
        exits = [k for k in range(cfg.n_flows) if k > 0 and k % cfg.n_early_every == 0]
        x = z[:, len(exits) * cfg.n_early_size:]
        for k in reversed(range(cfg.n_flows)):
            n_a = cfg.remaining_channels(k) // 2
            out = self.nets[k](x[:, :n_a], cond)
            n_b = out.shape[1] // 2
            x = torch.cat([x[:, :n_a], (x[:, n_a:] - out[:, :n_b]) * torch.exp(-out[:, n_b:])], 1)
            x = F.conv1d(x, getattr(self, f"w_inv{k}"))
            if k in exits:
                j = exits.index(k)
                x = torch.cat([z[:, j * cfg.n_early_size: (j + 1) * cfg.n_early_size], x], 1)
        if self.filter is not None:  # WaveGlow.unfilter: the source filter's mean and scale
            mean, log_s = self.filter(cond[:, -g:], cond).chunk(2, 1)
            x = x * torch.exp(log_s) + mean
        audio = x.transpose(1, 2).reshape(b, -1)  # flows.unsqueeze to [B, T]
        if self.harmonics is not None:  # the harmonic mean, all frames in one block (a traced loop would not
            from .source import harmonic_mean  # follow the dynamic length)

            audio = audio + harmonic_mean(track, self.hop, self.rate, block=None)
        return audio if f0 is None else (audio, f0, voiced)


class StudentGraph(nn.Module):
    """The IAF student's parallel pass (IAFStudent.infer) for export:
    (mel [B, n_mels, F], z [B, T], temperature []) -> audio [B, T] in [-1, 1], T = F * hop."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model = folded_copy(model)
        self.upsampler, self.flows = model.upsampler, model.flows
        self.log_scale_min = float(model.config.log_scale_min)

    def forward(self, mel: Tensor, z: Tensor, temperature: Tensor) -> Tensor:
        up = self.upsampler  # MelUpsampler.forward, with the nearest-neighbour stretch as expand + reshape
        h = F.leaky_relu(up.context(mel), 0.4)
        for factor, conv in zip(up.factors, up.smooth):
            b, c = h.shape[0], h.shape[1]
            h = h.unsqueeze(-1).expand(-1, -1, -1, factor).reshape(b, c, -1)
            h = F.leaky_relu(conv(h), 0.4)
        x = z * temperature
        for flow in self.flows:  # IAFFlow.forward, the one-step shift as a concatenation
            shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).unsqueeze(1)
            out = flow.out(F.relu(flow.hidden(F.relu(flow.stack(shifted, h)))))
            log_s = torch.clamp(out[:, 1], min=self.log_scale_min)
            x = x * torch.exp(log_s) + out[:, 0]
        return x.clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Export

def check_exportable(model: Any) -> None:
    """Refuse, by name, a model ONNX export does not cover."""
    kind = getattr(model, "model_type", type(model).__name__)
    if kind == "wavenet":
        raise WavflowError("the WaveNet teacher cannot be exported to ONNX: it is autoregressive (one network pass "
                           "per audio sample), which a static graph would have to unroll; export a waveglow or a "
                           "student")
    if kind not in EXPORTABLE:
        raise WavflowError(f"cannot export a {kind} model to ONNX (exported: {', '.join(EXPORTABLE)})")


def graph_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The export graph of a WaveGlow or student, and the name of its scalar input (sigma or temperature)."""
    check_exportable(model)
    if model.model_type == "waveglow":
        return WaveGlowGraph(model).eval(), "sigma"
    return StudentGraph(model).eval(), "temperature"


def default_scalar(model: nn.Module) -> float:
    """The value of the graph's scalar input that `infer` uses by default: WaveGlow's sigma, the student's
    temperature 1."""
    return float(model.config.infer_sigma) if model.model_type == "waveglow" else 1.0


def example_inputs(model: nn.Module, frames: int, batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(mel, z, scalar) for `frames` frames: a mel of plausible log-mel values, z from model.draw_noise, and the
    model's default sigma (WaveGlow) or temperature 1 (student)."""
    gen = torch.Generator().manual_seed(seed)
    mc = model.mel_config
    mel = torch.rand(batch, mc.n_mels, frames, generator=gen) * 8 - 10
    z = model.draw_noise(batch, frames * mc.hop_length, gen)
    return mel, z, torch.tensor(default_scalar(model))


def to_onnx(model: nn.Module, opset: int = OPSET) -> bytes:
    """The ONNX file of a WaveGlow or student, as bytes (see the module docstring for its inputs)."""
    graph, scalar = graph_of(model)
    onnx = _import_onnx()
    mel, z, s = example_inputs(model, frames=4)
    buf = io.BytesIO()
    time_axis = {"waveglow": 2, "student": 1}[model.model_type]
    outputs = ["audio", *(("f0", "voiced") if has_source(model) else ())]
    axes = {"mel": {0: "batch", 2: "frames"}, "z": {0: "batch", time_axis: "noise_steps"},
            "audio": {0: "batch", 1: "samples"}, "f0": {0: "batch", 1: "frames"}, "voiced": {0: "batch", 1: "frames"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(graph, (mel, z, s), buf, input_names=["mel", "z", scalar], output_names=outputs,
                          dynamic_axes={k: v for k, v in axes.items() if k in ("mel", "z", *outputs)},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    mc = model.mel_config
    meta = {"wavflow_model_type": model.model_type, "sample_rate": mc.sample_rate, "hop_length": mc.hop_length,
            "n_mels": mc.n_mels}
    if model.model_type == "waveglow":
        meta.update(n_group=model.config.n_group, default_sigma=model.config.infer_sigma,
                    source=model.config.source, energy_prior=model.config.energy_prior)
    else:
        meta.update(base_noise=model.config.base)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | Path, opset: int = OPSET) -> int:
    """Write `model` (a loaded WaveGlow or student) to `path` as ONNX, atomically; returns the file's size."""
    path = Path(path)
    check_exportable(model)
    _check_output(path)
    data = to_onnx(model, opset)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def has_source(model: nn.Module) -> bool:
    """A WaveGlow with a source: its graph also outputs the predicted f0 and voicing."""
    return getattr(model, "source", None) is not None


def reference_audio(model: nn.Module, mel: Tensor, z: Tensor, scalar: str, value: float,
                    outputs: Sequence[Any]) -> Tensor:
    """PyTorch's audio for the graph's inputs. For a model with a source, from the F0 and voicing the graph
    predicted (outputs[1:], each checked against the PyTorch predictor by the caller): the excitation's phase sums
    F0 over every frame before, so float32 rounding of F0 would otherwise build up over long mels."""
    param = next(iter(model.parameters()))
    options: dict[str, Any] = {scalar: value}
    if has_source(model):
        f0, voiced = (torch.from_numpy(o).to(param.device) for o in outputs[1:3])
        with torch.no_grad():
            options["source_track"] = model.track_of(f0, voiced, mel.to(param.device))
    with torch.no_grad():
        return model.infer(mel.to(param.device), noise=z.to(param.device), **options).float().cpu()


def verify(path: str | Path, model: nn.Module, frames: Sequence[int] = (7, 23)) -> float | None:
    """Largest |onnxruntime - PyTorch| over mels of `frames` frames (the same z), or None without onnxruntime.
    With a source, the larger of that and the F0's relative difference; a voicing decision that differs is
    reported as 1."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scalar = session.get_inputs()[2].name
    worst = 0.0
    for i, f in enumerate(frames):
        mel, z, s = example_inputs(model, f, seed=i)
        outputs = session.run(None, {"mel": mel.numpy(), "z": z.numpy(), scalar: s.numpy()})
        ref = reference_audio(model, mel, z, scalar, float(s), outputs)
        worst = max(worst, float((torch.from_numpy(outputs[0]) - ref).abs().max()))
        if has_source(model):
            f0, voiced = model.source.predict(mel.to(next(iter(model.parameters())).device))
            if not torch.equal(voiced.cpu(), torch.from_numpy(outputs[2]).float()):
                return 1.0
            worst = max(worst, float(((torch.from_numpy(outputs[1]) - f0.cpu()).abs() / f0.cpu().clamp_min(1)).max()))
    return worst


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise WavflowError("ONNX export needs the onnx package: pip install 'wavflow[onnx]'") from None
    return onnx


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise WavflowError(f"{path}: is a directory, expected an output file name")
    check_writable_dir(path.parent)


if __name__ == "__main__":
    from wavflow.commands.export import main

    main(prog="python -m wavflow.export")  # help and errors name the command as it was typed
