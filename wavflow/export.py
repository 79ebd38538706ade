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
per mel (wavflow.noise.ItemNoise). The file's metadata records the model type, sample rate, hop, n_mels,
n_group and the default sigma. The WaveNet teacher is not exported: it generates one sample per network pass
(a loop of tens of thousands of steps), which a static graph would have to unroll.

Needs the `onnx` extra (`pip install 'wavflow[onnx]'`: onnx, and onnxruntime to check the file). The file is
written atomically; bad input is one line on stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import WavflowError
from .fileio import atomic_write, check_writable_dir
from .models import Vocoder

OPSET = 17


# ----------------------------------------------------------------------------------------------------------------
# Export

def check_exportable(model: Any) -> None:
    """Refuse, by name, a model ONNX export does not cover (its family's `export_spec` says why)."""
    if not isinstance(model, Vocoder):
        raise WavflowError(f"cannot export a {type(model).__name__} to ONNX: not a wavflow model")
    model.export_spec()


def graph_of(model: Vocoder) -> tuple[nn.Module, str]:
    """The export graph of a model (`Vocoder.export_graph`), and the name of its scalar input (sigma or
    temperature)."""
    check_exportable(model)
    return model.export_graph().eval(), model.export_spec().scalar


def default_scalar(model: Vocoder) -> float:
    """The value of the graph's scalar input that `infer` uses by default: WaveGlow's sigma, the student's
    temperature 1."""
    return float(model.export_spec().default)


def example_inputs(model: Vocoder, frames: int, batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(mel, z, scalar) for `frames` frames: a mel of plausible log-mel values, z from model.draw_noise, and the
    scalar's default (WaveGlow's sigma, the student's temperature 1)."""
    gen = torch.Generator().manual_seed(seed)
    mc = model.mel_config
    mel = torch.rand(batch, mc.n_mels, frames, generator=gen) * 8 - 10
    z = model.draw_noise(batch, frames * mc.hop_length, gen)
    return mel, z, torch.tensor(default_scalar(model))


def to_onnx(model: Vocoder, opset: int = OPSET) -> bytes:
    """The ONNX file of a WaveGlow or student, as bytes (see the module docstring for its inputs)."""
    graph, scalar = graph_of(model)
    spec = model.export_spec()
    onnx = _import_onnx()
    mel, z, s = example_inputs(model, frames=4)
    buf = io.BytesIO()
    outputs = list(spec.outputs)
    axes = {"mel": {0: "batch", 2: "frames"}, "z": {0: "batch", spec.noise_time_axis: "noise_steps"},
            "audio": {0: "batch", 1: "samples"}, **{name: {0: "batch", 1: "frames"} for name in outputs[1:]}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(graph, (mel, z, s), buf, input_names=["mel", "z", scalar], output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    mc = model.mel_config
    meta = {"wavflow_model_type": model.model_type, "sample_rate": mc.sample_rate, "hop_length": mc.hop_length,
            "n_mels": mc.n_mels, **spec.metadata}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(model: Vocoder, path: str | Path, opset: int = OPSET) -> int:
    """Write `model` (a loaded WaveGlow or student) to `path` as ONNX, atomically; returns the file's size."""
    path = Path(path)
    check_exportable(model)
    _check_output(path)
    data = to_onnx(model, opset)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def reference_audio(model: Vocoder, mel: Tensor, z: Tensor, scalar: str, value: float,
                    outputs: Sequence[Any]) -> Tensor:
    """PyTorch's audio for the graph's inputs. For a model whose audio depends on its graph's other outputs (a
    WaveGlow with a source), from those outputs (`Vocoder.export_options`; each checked against PyTorch by the
    caller): the excitation's phase sums F0 over every frame before, so float32 rounding of F0 would otherwise build
    up over long mels."""
    param = next(iter(model.parameters()))
    mel = mel.to(param.device)
    with torch.no_grad():
        options: dict[str, Any] = {scalar: value, **model.export_options(mel, outputs)}
        return model.infer(mel, noise=z.to(param.device), **options).float().cpu()


def verify(path: str | Path, model: Vocoder, frames: Sequence[int] = (7, 23)) -> float | None:
    """Largest |onnxruntime - PyTorch| over mels of `frames` frames (the same z), or None without onnxruntime.
    Where the graph has outputs beside the audio, the larger of that and their disagreement with PyTorch's
    (`Vocoder.export_output_error`: WaveGlow's F0 relative difference, 1 for a voicing decision that differs)."""
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
        error = model.export_output_error(mel.to(next(iter(model.parameters())).device), outputs)
        if error >= 1.0:
            return error
        worst = max(worst, error)
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
