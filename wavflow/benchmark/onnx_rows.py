"""The onnxruntime rows: WaveGlow and the IAF student as `python -m wavflow.export` writes them, run by
onnxruntime's CPU provider on the same weights, mel and noise as the PyTorch rows, so the table shows what an
ONNX deployment of the model costs on this machine beside wavflow's own sampling. The graph is exported once per
model per process (wavflow.export.to_onnx, in memory) and its session kept; its FLOPs are counted over the
PyTorch module that was exported (export.graph_of), which holds the same operations.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from ..errors import WavflowError

_SESSIONS: dict[int, tuple[Any, Any, str]] = {}  # id(model) -> (model, session, name of the scalar input)


def available() -> bool:
    """Whether the onnx extra is installed (pip install 'wavflow[onnx]')."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def session_for(model: torch.nn.Module) -> tuple[Any, str]:
    """The onnxruntime session of `model`'s exported graph (made on first use, with torch's thread count) and the
    name of its scalar input (sigma or temperature)."""
    cached = _SESSIONS.get(id(model))
    if cached is None or cached[0] is not model:
        import onnxruntime as ort

        from ..export import graph_of, to_onnx

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(to_onnx(model), options, providers=["CPUExecutionProvider"])
        cached = _SESSIONS[id(model)] = (model, session, graph_of(model)[1])
    return cached[1], cached[2]


def noise_for(model: torch.nn.Module, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard-normal noise the PyTorch row draws for this mel from the same generator."""
    return model.draw_noise(mel.shape[0], mel.shape[-1] * model.mel_config.hop_length, generator)


def onnx_call(model: torch.nn.Module, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """audio [B, F * hop] from onnxruntime for mel [B, n_mels, F] (float32, CPU), at the model's default sigma or
    temperature, as the PyTorch row."""
    from ..export import default_scalar

    if mel.device.type != "cpu" or mel.dtype != torch.float32:
        raise WavflowError("the onnxruntime rows run on the CPU in fp32")
    session, scalar = session_for(model)
    z = noise_for(model, mel, generator)
    (audio,) = session.run(None, {"mel": mel.numpy(), "z": z.numpy(),
                                  scalar: np.array(default_scalar(model), np.float32)})
    return torch.from_numpy(audio)


def graph_flops_call(model: torch.nn.Module, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The exported PyTorch graph on the same inputs as `onnx_call`: what the FLOP counter sees of the row."""
    from ..export import default_scalar, graph_of

    graph, _ = graph_of(model)
    return graph(mel, noise_for(model, mel, generator), torch.tensor(default_scalar(model)))
