"""Mel spectrograms to speech with any wavflow vocoder: `wavflow.synthesize()` and `wavflow.load()`, the Python API
behind `python -m wavflow.synthesize` (whose command line is wavflow/synthesize.py); `wavflow.load` is
`load_checkpoint` here.

    import wavflow
    audio = wavflow.synthesize(mel)                            # [F * 256] with the shipped WaveGlow
    audio = wavflow.synthesize(mel, model="wavenet")           # another shipped checkpoint
    audio = wavflow.synthesize(mel, checkpoint="my.pt", sigma=0.8, device="cuda")
    model = wavflow.load("my.pt", backend="mm")                # a model to call yourself (WaveGlow: its backend)

Batching and determinism. Several mels are vocoded in batches: sorted by length, padded with silence frames
(ln 1e-5) to the longest of their batch, and each output cropped back to its own F * 256 samples. Every mel
draws its noise from its own generator, seeded by the seed and the mel's contents (wavflow.noise), so with a seed
a mel vocodes to the same noise whatever its file name, its position in the list and the batch it falls in. An
item as long as its batch's longest therefore gives the same audio batched or alone; a shorter, padded item can
differ near its end, as far back as the model's non-causal convolutions reach into the padding (WaveGlow: at
most n_flows * (k - 1) / 2 * sum(dilations) * n_group samples; `--batch-size 1` removes the effect). Every
model family is called the same way, through the `wavflow.models.Vocoder` interface: its `draw_noise` makes
each mel's noise and its `infer` takes the batch's.

What synthesis reads and runs on has its own modules: wavflow.melinput (mel files, layouts, statistics),
wavflow.noise (seeds and noise) and wavflow.device (devices and bf16).
"""
from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import resources
from .checkpoint import load as read_model  # a model as the file holds it (wavflow.checkpoint.load)
from .device import SYNTHESIS_DTYPES, check_dtype, resolve_device
from .errors import WavflowError
from .melinput import MelFile, as_mel_list, conform_mels, input_stats
from .models import Vocoder, refuse_options
from .noise import batch_noise, item_seed, run_seed

SHIPPED = resources.SHIPPED
DEFAULT_MODEL = "waveglow"
DEFAULT_BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------------------------
# Models

_loaded: dict[tuple, torch.nn.Module] = {}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                    backend: str | None = None) -> Vocoder:
    """`wavflow.load`: any checkpoint wavflow understands (or a shipped model by name) as a model in eval mode on
    `device` (wavflow.checkpoint.load). backend: WaveGlow's sampling backend ("mm", "mm_t" or "conv"; None: the
    fastest measured on this machine), kept by the model as the default of its `infer` (`Vocoder.set_backend`);
    refused in one line for a family whose `infer` takes no backend."""
    model = read_model(path, device)
    if backend is not None:
        model.set_backend(backend)
    return model


def load_vocoder(checkpoint: str | os.PathLike | None = None, model: str | None = None,
                 device: str | torch.device = "cpu", dtype: str = "fp32",
                 backend: str | None = None) -> torch.nn.Module:
    """A checkpoint (or shipped model by name) in eval mode, weight norm folded, on `device`, its weights in
    `dtype` ("fp32", or "bf16" where the device computes in it natively: `check_dtype`); `backend` as for
    `load_checkpoint`.

    The last two models loaded stay cached (keyed by path, size, mtime, device, dtype and backend), so calling
    `synthesize()` in a loop does not reread the file each time.
    """
    if checkpoint is not None and model is not None:
        raise WavflowError("give a checkpoint or a shipped model name, not both")
    path = Path(checkpoint) if checkpoint is not None else resources.shipped_checkpoint(model or DEFAULT_MODEL)
    device = resolve_device(device)
    check_dtype(dtype, device)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(device), dtype, backend)
    except OSError:
        key = None  # let the loader name the problem
    if key is not None and key in _loaded:
        return _loaded[key]
    vocoder = load_checkpoint(path, device, backend=backend)
    vocoder.remove_weight_norm()
    vocoder.eval()
    if dtype != "fp32":
        check_dtype(dtype, device, vocoder)
        vocoder.to(SYNTHESIS_DTYPES[dtype])
    if key is not None:
        while len(_loaded) >= 2:
            _loaded.pop(next(iter(_loaded)))
        _loaded[key] = vocoder
    return vocoder


def vocoder_for(checkpoint: str | os.PathLike | None, model: str | torch.nn.Module | None,
                device: str | torch.device, dtype: str | None) -> torch.nn.Module:
    """The vocoder `synthesize` and `stream` run: an already loaded `model` as it is, on its own device and in
    its own dtype (which `dtype`, when given, must name), else `load_vocoder(checkpoint, model, device, dtype)`."""
    if not isinstance(model, torch.nn.Module):
        return load_vocoder(checkpoint, model, device, dtype or "fp32")
    if checkpoint is not None:
        raise WavflowError("give a checkpoint or a model, not both")
    if dtype is not None:
        first = next(iter(model.parameters()))
        check_dtype(dtype, first.device, model)
        if first.dtype != SYNTHESIS_DTYPES[dtype]:
            raise WavflowError(f"dtype '{dtype}': the model passed is in {str(first.dtype).replace('torch.', '')}"
                               f"; cast it first or pass a checkpoint to load in {dtype}")
    return model


def check_options(model: Vocoder, options: dict[str, Any]) -> dict[str, Any]:
    """Drop unset options and refuse any not in model.infer_options, naming the model type."""
    options = {k: v for k, v in options.items() if v is not None}
    refuse_options(model, options)
    return options


# ----------------------------------------------------------------------------------------------------------------
# Vocoding

def _frames(mel: np.ndarray | MelFile) -> int:
    return mel.frames if isinstance(mel, MelFile) else mel.shape[1]


def vocode(model: Vocoder, mels: Sequence[np.ndarray | MelFile], *, seed: int | None = None,
           batch_size: int = DEFAULT_BATCH_SIZE, denoise: float = 0.0, progress: bool = False,
           **options: Any) -> Iterator[tuple[int, torch.Tensor]]:
    """Vocode float32 [n_mels, F_i] mels (arrays, or MelFile references) in length-sorted batches.

    Yields (index into `mels`, CPU float32 audio [F_i * hop]) as each batch finishes, so a caller can write
    files while the next batch runs. `seed` None draws the seeds from torch's
    global generator (torch.manual_seed governs the result). options: the model's `infer_options` (for WaveGlow
    `sigma` and `backend`), refused by name when the model does not take them.
    """
    if batch_size < 1:
        raise WavflowError(f"batch size must be at least 1, got {batch_size}")
    if denoise < 0:
        raise WavflowError(f"denoise strength must be >= 0, got {denoise}")
    options = check_options(model, options)
    device = next(iter(model.parameters())).device
    dtype = next(iter(model.parameters())).dtype  # a bf16 model (--dtype bf16) takes its mel in bf16
    hop = model.mel_config.hop_length
    sr = model.mel_config.sample_rate
    silence = model.mel_config.silence
    seed = run_seed(seed)
    denoiser = make_denoiser(model) if denoise > 0 else None

    n_mels = model.mel_config.n_mels
    order = sorted(range(len(mels)), key=lambda i: -_frames(mels[i]))  # similar lengths share a batch
    total_audio = sum(map(_frames, mels)) * hop / sr
    bar = audio_progress_bar(total_audio, enabled=progress)
    wall, done_audio = 0.0, 0.0
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            arrays = [m.read(model.mel_config) if isinstance(m, MelFile) else m for m in (mels[i] for i in idx)]
            frames = [a.shape[1] for a in arrays]
            batch = torch.full((len(idx), n_mels, max(frames)), silence)
            for row, a in enumerate(arrays):
                batch[row, :, : frames[row]] = torch.from_numpy(a)
            t0 = time.perf_counter()
            out = _infer(model, batch.to(device, dtype), [item_seed(seed, a) for a in arrays], frames, options)
            if out.shape[-1] != max(frames) * hop:
                raise RuntimeError(f"{model.model_type}.infer returned {out.shape[-1]} samples for "
                                   f"{max(frames)} frames; expected {max(frames) * hop}")
            audio = [out[row, : f * hop] for row, f in enumerate(frames)]
            if denoiser is not None:  # item by item: an STFT frame across the crop would see the padding
                audio = [denoiser(a, strength=denoise) for a in audio]
            audio = [a.float().cpu() for a in audio]
            elapsed = time.perf_counter() - t0
            wall += elapsed
            done_audio += sum(frames) * hop / sr
            if bar is not None:
                bar.update(sum(frames) * hop / sr)
                bar.set_postfix_str(f"RTF {wall / done_audio:.3g} (wall/audio), {done_audio / wall:.3g}x real time")
            for row, i in enumerate(idx):
                yield i, audio[row]
    finally:
        if bar is not None:
            bar.close()


def _infer(model: Vocoder, batch: torch.Tensor, seeds: list[int], frames: list[int],
           options: dict[str, Any]) -> torch.Tensor:
    """One padded batch through model.infer: [B, n_mels, F] -> [B, F * hop], each item on its own noise."""
    # Drawn on the CPU for each item's own length, so a seed gives the same noise on every device and batch,
    # block by block, so streaming draws the same noise (wavflow.noise).
    noise = batch_noise(model, seeds, frames, batch.shape[-1])
    # no_grad rather than inference_mode: a model passed in by a trainer may cache tensors (WaveGlow's W^-1)
    # that must stay usable outside inference mode. frames lets an autoregressive model stop each item at its
    # own length.
    with torch.no_grad():
        # The noise stays float32: a model in bf16 casts it where it needs to (WaveGlow keeps its flow state, and
        # so z, in float32).
        return model.infer(batch, noise=noise.to(batch.device), frames=frames, **options)


_denoisers: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()


def make_denoiser(model: Vocoder):
    """NVIDIA's denoiser for `model` (wavflow.denoiser), built once per model: its bias spectrum is the model's
    output without noise (`Vocoder.bias_audio`), which a family without a noise scale refuses in one line."""
    if model not in _denoisers:
        from .denoiser import Denoiser

        _denoisers[model] = Denoiser(model)
    return _denoisers[model]


def audio_progress_bar(total_audio_seconds: float, enabled: bool):
    """A tqdm bar on stderr over seconds of audio (None when not enabled); the caller adds the RTF as it goes."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_audio_seconds, unit="s audio", unit_scale=False, dynamic_ncols=True,
                desc="vocoding", file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
                           "[{elapsed}<{remaining}{postfix}]")


def synthesize(mel: Any, checkpoint: str | os.PathLike | None = None, *, model: str | torch.nn.Module | None = None,
               device: str | torch.device = "cpu", sigma: float | None = None, temperature: float | None = None,
               denoise: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = None,
               progress: bool = False, dtype: str | None = None, stats: Any = None, backend: str | None = None,
               **options: Any) -> torch.Tensor | list[torch.Tensor]:
    """Vocode mel spectrograms to audio in [-1, 1] (CPU float32).

    mel: a numpy array or tensor in a layout `load_mel` accepts, (n_mels, F) or (F, n_mels) -> audio [F * hop];
         a batch [B, n_mels, F], (1, n_mels, F) included -> [B, F * hop]; a .npy path -> [F * hop];
         a list of any of those single mels, of any lengths -> a list of [F_i * hop].
    checkpoint: a checkpoint file (native wavflow or NVIDIA WaveGlow). model: a shipped model name
         ("waveglow", "wavenet", "student") or an already loaded wavflow model, used as it is, on its own
         device (`device` is then ignored). Neither: the shipped WaveGlow.
    sigma: WaveGlow's noise scale (its default 0.6); temperature: WaveNet / student sampling temperature.
    backend: WaveGlow's sampling backend, "mm", "mm_t" or "conv" (None: the model's own, by default the fastest
         measured on this machine); the backends agree to float rounding, so fixing one makes runs on one
         machine bit-identical. Refused for a family whose `infer` takes no backend.
    denoise: strength of NVIDIA's WaveGlow denoiser (0 = off; 0.01-0.1 typical).
    seed: with a seed, a mel gives the same audio whatever it is batched with (see the module docstring);
         None follows torch's global generator.
    dtype: "fp32" (default for a checkpoint) or "bf16", refused with a WavflowError where the device has no
         native bf16 (`check_dtype`) and for WaveNet; a loaded `model` is used in its own dtype, which `dtype`,
         when given, must name.
    stats: the per-band statistics the mels are normalised with, when the TTS model normalises and the
         checkpoint does not (or differently): a statistics file (ParallelWaveGAN's stats.npy / stats.h5,
         ESPnet2's feats_stats.npz) or a (mean, std) pair; the mels are renormalised to the checkpoint's
         convention. Every mel is then judged against that convention: values below its silence floor are
         refused (a WavflowError), values unlikely to belong to it draw a warning (README: Mels from other
         toolkits).
    Other keyword arguments are the model's other `infer_options` (for example method="naive" for WaveNet);
    an option the model does not take is refused.
    """
    vocoder = vocoder_for(checkpoint, model, device, dtype)
    mels, form = as_mel_list(mel, vocoder.mel_config.n_mels, vocoder.mel_config.max_frames)
    names = ["mel"] if len(mels) == 1 else [f"mel[{i}]" for i in range(len(mels))]
    mels = conform_mels(mels, vocoder.mel_config, input_stats(stats, vocoder.mel_config.n_mels), names)
    out: list[torch.Tensor | None] = [None] * len(mels)
    for i, audio in vocode(vocoder, mels, seed=seed, batch_size=batch_size, denoise=denoise, progress=progress,
                              sigma=sigma, temperature=temperature, backend=backend, **options):
        out[i] = audio
    if form == "single":
        return out[0]  # type: ignore[return-value]
    if form == "batch":
        return torch.stack(out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]
