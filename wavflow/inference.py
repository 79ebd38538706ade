"""Mel spectrograms to speech with any wavflow vocoder: `wavflow.synthesize()`, the Python API behind
`python -m wavflow.synthesize` (whose command line is wavflow/synthesize.py).

    import wavflow
    audio = wavflow.synthesize(mel)                            # [F * 256] with the shipped WaveGlow
    audio = wavflow.synthesize(mel, model="wavenet")           # another shipped checkpoint
    audio = wavflow.synthesize(mel, checkpoint="my.pt", sigma=0.8, device="cuda")

Batching and determinism. Several mels are vocoded in batches: sorted by length, padded with silence frames
(ln 1e-5) to the longest of their batch, and each output cropped back to its own F * 256 samples. Every mel
draws its noise from its own generator, seeded by the seed and the mel's contents, so with a seed a mel
vocodes to the same noise whatever its file name, its position in the list and the batch it falls in. An item
as long as its batch's longest therefore gives the same audio batched or alone; a shorter, padded item can
differ near its end, as far back as the model's non-causal convolutions reach into the padding (WaveGlow: at
most n_flows * (k - 1) / 2 * sum(dilations) * n_group samples; `--batch-size 1` removes the effect). Every
model family is called the same way, through the `wavflow.models.Vocoder` interface: its `draw_noise` makes
each mel's noise and its `infer` takes the batch's.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from . import resources
from .checkpoint import load as load_checkpoint
from .cli import resolve_device
from .errors import WavflowError
from .frontend import MAX_FRAMES, MelConfig, check_mel, conform_mel, load_mel, load_stats, renormalise
from .models import Vocoder, refuse_options

SHIPPED = resources.SHIPPED
DEFAULT_MODEL = "waveglow"
DEFAULT_BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------------------------
# Models

def shipped_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """Path of a shipped checkpoint ({waveglow,wavenet,student}-ljspeech-mini.pt), inside an installed wheel or
    in the checkout's checkpoints/ folder."""
    return resources.shipped_checkpoint(name)


_loaded: dict[tuple, torch.nn.Module] = {}


def load_vocoder(checkpoint: str | os.PathLike | None = None, model: str | None = None,
                 device: str | torch.device = "cpu", dtype: str = "fp32") -> torch.nn.Module:
    """A checkpoint (or shipped model by name) in eval mode, weight norm folded, on `device`, its weights in
    `dtype` ("fp32", or "bf16" where the device computes in it natively: `check_dtype`).

    The last two models loaded stay cached (keyed by path, size, mtime, device and dtype), so calling
    `synthesize()` in a loop does not reread the file each time.
    """
    if checkpoint is not None and model is not None:
        raise WavflowError("give a checkpoint or a shipped model name, not both")
    path = Path(checkpoint) if checkpoint is not None else shipped_checkpoint(model or DEFAULT_MODEL)
    device = resolve_device(device)
    check_dtype(dtype, device)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(device), dtype)
    except OSError:
        key = None  # let the loader name the problem
    if key is not None and key in _loaded:
        return _loaded[key]
    vocoder = load_checkpoint(path, device)
    vocoder.remove_weight_norm()
    vocoder.eval()
    if dtype != "fp32":
        check_dtype(dtype, device, vocoder.model_type)
        vocoder.to(DTYPES[dtype])
    if key is not None:
        while len(_loaded) >= 2:
            _loaded.pop(next(iter(_loaded)))
        _loaded[key] = vocoder
    return vocoder


# ----------------------------------------------------------------------------------------------------------------
# Precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes in bf16 natively: a CUDA device that torch says supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 instructions. Without them torch emulates bf16 by converting to float32, which is
    slower than float32 itself."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in _BF16_FLAGS)
    try:  # no /proc: torch's own CPU feature probe
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def check_dtype(dtype: str, device: str | torch.device, model_type: str | None = None) -> None:
    """Refuse, in one line, a precision the device or the model family cannot run natively (--dtype).

    bf16: WaveGlow runs its coupling networks in bf16 with the flow state in float32; the student runs wholly in
    bf16; the WaveNet teacher has no bf16 path (its CPU generator is a compiled float32 loop). README "Speed"
    has the measured quality of each.
    """
    if dtype not in DTYPES:
        raise WavflowError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    if dtype == "fp32":
        return
    device = torch.device(device)
    if not native_bf16(device):
        what = ("this CPU has neither the avx512_bf16 nor the amx_bf16 instructions" if device.type == "cpu"
                else f"{device} does not support bf16")
        raise WavflowError(f"--dtype {dtype}: {what}, so bf16 would be emulated and slower than fp32; use "
                           f"--dtype fp32")
    if model_type == "wavenet":
        raise WavflowError(f"--dtype {dtype}: the WaveNet teacher has no bf16 path (its generator is a compiled "
                           f"float32 loop); use --dtype fp32")


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
        check_dtype(dtype, first.device, model.model_type)
        if first.dtype != DTYPES[dtype]:
            raise WavflowError(f"dtype '{dtype}': the model passed is in {str(first.dtype).replace('torch.', '')}"
                               f"; cast it first or pass a checkpoint to load in {dtype}")
    return model


def check_options(model: Vocoder, options: dict[str, Any]) -> dict[str, Any]:
    """Drop unset options and refuse any not in model.infer_options, naming the model type."""
    options = {k: v for k, v in options.items() if v is not None}
    refuse_options(model, options)
    return options


# ----------------------------------------------------------------------------------------------------------------
# Mels

def as_mel_list(mel: Any, n_mels: int, max_frames: int = MAX_FRAMES) -> tuple[list[np.ndarray], str]:
    """Normalise what `synthesize` accepts to a list of float32 [n_mels, F] arrays and the form to return.

    Returns (mels, form) with form "single" (return [T]), "batch" (return [B, T]) or "list" (return a list).
    """
    if isinstance(mel, (str, os.PathLike)):
        return [load_mel(mel, n_mels, max_frames)], "single"
    if isinstance(mel, (list, tuple)):
        if not mel:
            raise WavflowError("no mels given")
        mels = []
        for i, m in enumerate(mel):
            if isinstance(m, (np.ndarray, torch.Tensor)) and m.ndim == 3 and m.shape[0] > 1:
                raise WavflowError(f"mel list item {i} is a batch of shape {tuple(m.shape)}; a list holds single mels")
            mels += as_mel_list(m, n_mels, max_frames)[0]
        return mels, "list"
    if isinstance(mel, torch.Tensor):
        mel = mel.detach().cpu().numpy()
    if not isinstance(mel, np.ndarray):
        raise WavflowError(f"mel is a {type(mel).__name__}; expected a numpy array, a tensor or a .npy path")
    if mel.ndim == 3 and mel.shape[0] > 1:
        return [check_mel(m, n_mels, max_frames, f"mel[{i}]") for i, m in enumerate(mel)], "batch"
    return [check_mel(mel, n_mels, max_frames, "mel")], "batch" if mel.ndim == 3 else "single"


def input_stats(stats: Any, n_mels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The statistics a TTS model's mels are normalised with: None, a statistics file (frontend.load_stats:
    ParallelWaveGAN's stats.npy / stats.h5, ESPnet2's feats_stats.npz) or a (mean, std) pair of [n_mels] arrays."""
    if stats is None:
        return None
    if isinstance(stats, (str, os.PathLike)):
        return load_stats(stats, n_mels)
    try:
        mean, std = (np.asarray(a, np.float64).reshape(-1) for a in stats)
    except (TypeError, ValueError):
        raise WavflowError("stats: expected a statistics file or a (mean, std) pair of per-band arrays") from None
    if mean.shape != (n_mels,) or std.shape != (n_mels,) or not (np.isfinite(mean).all() and (std > 0).all()):
        raise WavflowError(f"stats: mean and std must each hold {n_mels} finite values, std > 0")
    return mean, std


def conform_mels(mels: list[np.ndarray], config: MelConfig, stats: tuple[np.ndarray, np.ndarray] | None,
                 names: Sequence[str]) -> list[np.ndarray]:
    """Each checked mel as the checkpoint's convention expects it (frontend.conform_mel): renormalised from the
    TTS model's `stats`, refused with a WavflowError when its values cannot belong to the convention, a
    `warnings.warn` line when they are unlikely to."""
    out = []
    for mel, name in zip(mels, names):
        mel, warning = conform_mel(mel, config, stats, name)
        if warning is not None:
            warnings.warn(warning, stacklevel=3)
        out.append(mel)
    return out


def item_seed(seed: int, mel: np.ndarray) -> int:
    """The seed of one mel's noise: a hash of the run's seed and the mel's bytes.

    So the noise a mel gets depends on nothing else (not its name, position or batch), and two different mels
    in one run get unrelated noise.
    """
    h = hashlib.sha256(str(int(seed)).encode() + b"\0" + np.ascontiguousarray(mel, np.float32).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


NOISE_BLOCK_FRAMES = 64  # a mel's noise is drawn in blocks of this many frames' samples (16,384 at hop 256)


class ItemNoise:
    """One mel's noise, drawn block by block: the samples [i * N, (i + 1) * N) of block i (N = 64 frames' worth)
    come from `model.draw_noise` on a generator seeded by a hash of (the item's seed, i).

    So the noise at every absolute sample position is fixed by the item's seed alone, and any span of it can be
    drawn without drawing what comes before: whole-utterance synthesis and streaming (wavflow.streaming) read
    the same noise, and a stream holds only the blocks its current window touches. Drawn on the CPU, so a seed
    gives the same noise on every device.
    """

    def __init__(self, model: Vocoder, seed: int):
        self.model, self.seed = model, int(seed)
        self.hop = model.mel_config.hop_length
        self.block = NOISE_BLOCK_FRAMES * self.hop
        self._blocks: dict[int, torch.Tensor] = {}  # the blocks of the last span: overlapping windows reuse them

    def _draw(self, index: int) -> torch.Tensor:
        if index not in self._blocks:
            h = hashlib.sha256(f"{self.seed}:{index}".encode()).digest()
            seed = int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
            self._blocks[index] = self.model.draw_noise(1, self.block, torch.Generator().manual_seed(seed))
        return self._blocks[index]

    def span(self, start: int, stop: int) -> torch.Tensor:
        """The noise of samples [start, stop) (multiples of the hop), in draw_noise's layout for one item:
        [1, ..., (stop - start) x the noise's steps per sample]."""
        if start % self.hop or stop % self.hop or not 0 <= start < stop:
            raise ValueError(f"noise span [{start}, {stop}) must be a non-empty range of whole frames")
        first, last = start // self.block, -(-stop // self.block)
        blocks = [self._draw(i) for i in range(first, last)]
        self._blocks = {i: b for i, b in zip(range(first, last), blocks)}
        z = blocks[0] if len(blocks) == 1 else torch.cat(blocks, -1)
        steps = blocks[0].shape[-1]  # noise steps per block (WaveGlow: one per group of n_group samples)
        return z[..., (start - first * self.block) * steps // self.block: (stop - first * self.block) * steps // self.block]


# ----------------------------------------------------------------------------------------------------------------
# Vocoding

@dataclass(frozen=True)
class MelFile:
    """A mel .npy already checked by load_mel, read again only when its batch comes (a directory of thousands
    of mels is never held in memory at once); `stats`: the per-band (mean, std) it is normalised with."""
    path: Path
    frames: int
    stats: tuple[np.ndarray, np.ndarray] | None = None

    def read(self, config: MelConfig) -> np.ndarray:
        """The mel, float32 [n_mels, F], renormalised to `config` when the file has its own statistics."""
        mel = load_mel(self.path, config.n_mels, config.max_frames)
        return mel if self.stats is None else renormalise(mel, config, self.stats)


def _frames(mel: np.ndarray | MelFile) -> int:
    return mel.frames if isinstance(mel, MelFile) else mel.shape[1]


def vocode(model: Vocoder, mels: Sequence[np.ndarray | MelFile], *, seed: int | None = None,
           batch_size: int = DEFAULT_BATCH_SIZE, denoise: float = 0.0, progress: bool = False,
           **options: Any) -> Iterator[tuple[int, torch.Tensor]]:
    """Vocode float32 [n_mels, F_i] mels (arrays, or MelFile references) in length-sorted batches.

    Yields (index into `mels`, CPU float32 audio [F_i * hop]) as each batch finishes, so a caller can write
    files while the next batch runs. `seed` None draws the seeds from torch's
    global generator (torch.manual_seed governs the result).
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
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    denoiser = make_denoiser(model) if denoise > 0 else None

    n_mels = model.mel_config.n_mels
    order = sorted(range(len(mels)), key=lambda i: -_frames(mels[i]))  # similar lengths share a batch
    total_audio = sum(map(_frames, mels)) * hop / sr
    bar = _progress_bar(total_audio, enabled=progress)
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
    hop = model.mel_config.hop_length
    length = batch.shape[-1] * hop
    noise = []
    for seed, f in zip(seeds, frames):
        # Drawn on the CPU for the item's own length, so a seed gives the same noise on every device and batch,
        # block by block, so streaming draws the same noise (ItemNoise).
        z = ItemNoise(model, seed).span(0, f * hop)
        noise.append(_pad_time(z, z.shape[-1] * length // (f * hop)))
    # no_grad rather than inference_mode: a model passed in by a trainer may cache tensors (WaveGlow's W^-1)
    # that must stay usable outside inference mode. frames lets an autoregressive model stop each item at its
    # own length.
    with torch.no_grad():
        # The noise stays float32: a model in bf16 casts it where it needs to (WaveGlow keeps its flow state, and
        # so z, in float32).
        return model.infer(batch, noise=torch.cat(noise).to(batch.device), frames=frames, **options)


def _pad_time(z: torch.Tensor, length: int) -> torch.Tensor:
    """Extend noise along its last (time) axis by repeating it: the padding then holds values the model's
    noise distribution can produce (zeros would be log(0) for a logistic's uniform)."""
    reps = -(-length // z.shape[-1])
    return z.repeat(*([1] * (z.dim() - 1)), reps)[..., :length]


_denoisers: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def make_denoiser(model: Vocoder):
    """NVIDIA's denoiser for `model` (wavflow.denoiser), built once per model: its bias spectrum is the model's
    output for an all-zero mel at sigma 0, so only a model with a noise scale (WaveGlow) can have one."""
    if "sigma" not in model.infer_options:
        raise WavflowError(f"--denoise needs a WaveGlow (its bias is the output at sigma 0); this checkpoint is a "
                           f"{model.model_type}")
    if model not in _denoisers:
        from .denoiser import Denoiser

        _denoisers[model] = Denoiser(model)
    return _denoisers[model]


def _progress_bar(total_audio_seconds: float, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total_audio_seconds, unit="s audio", unit_scale=False, dynamic_ncols=True,
                desc="vocoding", file=sys.stderr,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}{postfix}]")


def synthesize(mel: Any, checkpoint: str | os.PathLike | None = None, *, model: str | torch.nn.Module | None = None,
               device: str | torch.device = "cpu", sigma: float | None = None, temperature: float | None = None,
               denoise: float = 0.0, batch_size: int = DEFAULT_BATCH_SIZE, seed: int | None = None,
               progress: bool = False, dtype: str | None = None, stats: Any = None,
               **options: Any) -> torch.Tensor | list[torch.Tensor]:
    """Vocode mel spectrograms to audio in [-1, 1] (CPU float32).

    mel: a numpy array or tensor in a layout `load_mel` accepts, (n_mels, F) or (F, n_mels) -> audio [F * hop];
         a batch [B, n_mels, F], (1, n_mels, F) included -> [B, F * hop]; a .npy path -> [F * hop];
         a list of any of those single mels, of any lengths -> a list of [F_i * hop].
    checkpoint: a checkpoint file (native wavflow or NVIDIA WaveGlow). model: a shipped model name
         ("waveglow", "wavenet", "student") or an already loaded wavflow model, used as it is, on its own
         device (`device` is then ignored). Neither: the shipped WaveGlow.
    sigma: WaveGlow's noise scale (its default 0.6); temperature: WaveNet / student sampling temperature.
    denoise: strength of NVIDIA's WaveGlow denoiser (0 = off; 0.01-0.1 typical).
    seed: with a seed, a mel gives the same audio whatever it is batched with (see the module docstring);
         None follows torch's global generator.
    dtype: "fp32" (default for a checkpoint) or "bf16", refused with a WavflowError where the device has no
         native bf16 (`check_dtype`) and for WaveNet; a loaded `model` is used in its own dtype, which `dtype`,
         when given, must name.
    stats: the per-band statistics the mels are normalised with, when the TTS model normalises and the
         checkpoint does not (or differently): a statistics file (ParallelWaveGAN's stats.npy / stats.h5,
         ESPnet2's feats_stats.npz) or a (mean, std) pair; the mels are renormalised to the checkpoint's convention. Every mel is then judged
         against that convention: values below its silence floor are refused (a WavflowError), values
         unlikely to belong to it draw a warning (README: Mels from other toolkits).
    Other keyword arguments are the model's other `infer_options` (for example method="naive" for WaveNet);
    an option the model does not take is refused.
    """
    vocoder = vocoder_for(checkpoint, model, device, dtype)
    mels, form = as_mel_list(mel, vocoder.mel_config.n_mels, vocoder.mel_config.max_frames)
    names = ["mel"] if len(mels) == 1 else [f"mel[{i}]" for i in range(len(mels))]
    mels = conform_mels(mels, vocoder.mel_config, input_stats(stats, vocoder.mel_config.n_mels), names)
    out: list[torch.Tensor | None] = [None] * len(mels)
    for i, audio in vocode(vocoder, mels, seed=seed, batch_size=batch_size, denoise=denoise, progress=progress,
                              sigma=sigma, temperature=temperature, **options):
        out[i] = audio
    if form == "single":
        return out[0]  # type: ignore[return-value]
    if form == "batch":
        return torch.stack(out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]
