"""The rows: every way of sampling the benchmark compares, how each is called, and the precision it runs in.

    wavenet_naive    WaveNet teacher recomputing the receptive field for every sample (O(T x receptive field)):
                     run at one short length (--naive-length) with the cached WaveNet beside it, and at every
                     length only with --naive-all
    wavenet_cached   WaveNet teacher with per-layer queues (a numba-compiled loop on CPU, torch steps replayed
                     as a CUDA graph on GPU); the speed-up column divides by this row
    wavenet_batched  the cached generator on --batch utterances at once (different stretches of the mel, each of
                     the row's length); samples/s is aggregate over the batch
    waveglow         WaveGlow, one parallel pass (sigma 0.6)
    student          the IAF student, one parallel pass
    waveglow_nvidia  NVIDIA's WaveGlow sampling algorithm on the same WaveGlow weights and noise (reference.py),
                     the yardstick of design.md section 6; the summary prints WaveGlow's ratio to it per length.
                     On a CPU it computes in fp32 whatever --dtype (NVIDIA's CPU path is fp32), so a bf16 run
                     prints wavflow's bf16 against NVIDIA's fp32; on a GPU in --dtype, as NVIDIA runs fp16
    waveglow_source  a WaveGlow's source alone (design.md section 9: the pitch predictor, the excitation and the
                     harmonic mean), which the waveglow row includes; only with --models, for a WaveGlow with a
                     source; the summary prints its share of the waveglow row's time
    waveglow_onnx    WaveGlow / the student exported to ONNX (python -m wavflow.export) and run by onnxruntime's
    student_onnx     CPU provider on the same weights, mel and noise (onnx_rows.py); only with --models, on the
                     CPU in fp32, with the onnx extra installed
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import WavflowError
from ..models import model_classes
from .reference import nvidia_infer

WAVEGLOW_SIGMA = 0.6     # design.md section 3: the inference default
BATCH = 16               # utterances in the batched WaveNet row (--batch)


def _wavenet_naive(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.generate(mel, method="naive", generator=generator, progress=False)


def _wavenet_cached(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.generate(mel, method="cached", generator=generator, progress=False)


def _wavenet_batched(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # All utterances of one row have the same length, so `lengths` is the full length for each: the row
    # measures the batching itself (one compiled loop over all utterances), not padding.
    lengths = [mel.shape[-1] * model.mel_config.hop_length] * mel.shape[0]
    return model.generate(mel, method="cached", generator=generator, lengths=lengths, progress=False)


def _waveglow(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.infer(mel, sigma=WAVEGLOW_SIGMA, generator=generator)


def _waveglow_nvidia(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn inside the timed call, as WaveGlow.infer draws its own: both rows pay for the same draw.
    return nvidia_infer(model, mel, waveglow_noise(model, mel, generator), WAVEGLOW_SIGMA)


def waveglow_noise(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The noise WaveGlow.infer draws for this mel from this generator, on the mel's device and in its dtype, so
    the NVIDIA row vocodes exactly what the waveglow row does (a test checks it)."""
    num_samples = mel.shape[-1] * model.mel_config.hop_length
    return model.draw_noise(mel.shape[0], num_samples, generator).to(mel.device, mel.dtype)


def _waveglow_source(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if model.source is None:
        raise WavflowError("the waveglow_source row needs a WaveGlow with a source (model_config.source: true)")
    track, samples = model.source_track(mel), mel.shape[-1] * model.mel_config.hop_length
    excitation, mean = model.excitation(track, samples), model.harmonic_mean(track, samples)
    return excitation if mean is None else excitation + mean


def _student(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.infer(mel, generator=generator)


def _onnx(model, mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    from .onnx_rows import onnx_call

    return onnx_call(model, mel, generator)


@dataclass(frozen=True)
class Entry:
    name: str                  # row key (table, JSON, --models)
    family: str                # model_type of the model it runs (wavflow.models.REGISTRY)
    label: str                 # as printed
    call: Callable[[Any, torch.Tensor, torch.Generator], torch.Tensor]  # (model, mel [B, 80, F], generator) -> audio
    autoregressive: bool = False
    batch: int = 1             # utterances per call
    naive: bool = False        # runs at --naive-length only, unless --naive-all
    flops: str = "call"        # how FLOPs/sample are counted: "call" (over the warm-up call), "naive" (naive
                               # generation's own calls, see Runner.naive_flops), "teacher_forced" (the torch
                               # forward with the same matmuls: the numba loop is invisible to a counter),
                               # "graph" (the exported PyTorch graph, for onnxruntime rows)
    default: bool = True       # run without --models

    @property
    def half_by_cast(self) -> bool:
        """Whether a bf16/fp16 run casts the row's model and mel to that dtype (its family's `half_by_cast`: the
        parallel models, natively in it, the way NVIDIA runs its fp16 WaveGlow) rather than running it in float32
        under torch.autocast (WaveNet: its generators keep fp32 sample buffers and queues between the matmuls).
        wavflow's 1x1 inverses are computed in float64 and then cast, NVIDIA's in float32; the fast sampling paths
        accumulate with in-place matmuls, which torch.autocast leaves alone."""
        return model_classes(self.family)[0].half_by_cast


ENTRIES: tuple[Entry, ...] = (
    Entry("wavenet_naive", "wavenet", "WaveNet naive", _wavenet_naive, autoregressive=True, naive=True,
          flops="naive"),
    Entry("wavenet_cached", "wavenet", "WaveNet cached", _wavenet_cached, autoregressive=True,
          flops="teacher_forced"),
    Entry("wavenet_batched", "wavenet", "WaveNet batched", _wavenet_batched, autoregressive=True,
          batch=BATCH, flops="teacher_forced"),
    Entry("waveglow", "waveglow", "WaveGlow", _waveglow),
    Entry("student", "student", "IAF student", _student),
    Entry("waveglow_nvidia", "waveglow", "WaveGlow, NVIDIA algorithm", _waveglow_nvidia),
    Entry("waveglow_source", "waveglow", "WaveGlow's source (pitch predictor + excitation)", _waveglow_source,
          default=False),
    Entry("waveglow_onnx", "waveglow", "WaveGlow, onnxruntime", _onnx, flops="graph", default=False),
    Entry("student_onnx", "student", "IAF student, onnxruntime", _onnx, flops="graph", default=False),
)
ONNX_ROWS = ("waveglow_onnx", "student_onnx")  # CPU, fp32, need the onnx extra (onnx_rows.py)
ENTRY_BY_NAME = {e.name: e for e in ENTRIES}
FAMILIES = tuple(dict.fromkeys(e.family for e in ENTRIES))  # the model types the rows run, in the rows' order
REFERENCE = "wavenet_cached"  # the speed-up column divides by this row's samples/s


def row_precision(entry: Entry, device: torch.device, dtype: str) -> str:
    """The precision a row computes in, as the table's JSON records it."""
    if entry.flops == "teacher_forced" and device.type == "cpu":
        return "fp32 (numba loop)"  # the compiled loop has no half-precision path
    if entry.name == "waveglow_nvidia" and device.type == "cpu":
        return "fp32"  # the yardstick as NVIDIA runs it on a CPU
    if dtype == "fp32" or entry.half_by_cast:
        return dtype
    return f"{dtype} autocast"
