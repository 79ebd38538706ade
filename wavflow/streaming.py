"""Streaming synthesis: audio a chunk at a time, as it is made, with memory bounded by the chunk, not the mel.

    import wavflow
    for chunk in wavflow.stream(mel, chunk_seconds=0.5, seed=0):     # 1-D float32 tensors, in order
        play(chunk)
    # torch.cat(list(wavflow.stream(mel, seed=0))) equals wavflow.synthesize(mel, seed=0) to float rounding

The chunks are exact: their concatenation is the whole-utterance output for the same arguments, because

- the noise at every absolute sample position is fixed by the mel's seed alone (noise.ItemNoise draws it
  in blocks, each from its own generator), so a chunk draws only the blocks it touches;
- WaveGlow's couplings are non-causal, so each chunk is vocoded inside a window that reaches past it by the
  model's receptive field, computed from its config (models.waveglow_streaming.stream_margins), and cropped:
  past that reach the window's edges cannot be seen;
- the IAF student's flows are causal: each layer keeps its last (k - 1) x dilation inputs between chunks
  (models.student_sampling.FlowStream) and nothing is recomputed;
- the WaveNet teacher keeps its generation state between chunks (the compiled loop's queues,
  kernels.CachedGenerator; the torch steps on other devices; the naive method's last receptive field);
- the teacher's and the student's conditioning upsampler is non-causal across a few frames: each chunk's
  conditioning comes from the frames within its reach (layers.MelUpsampler.window);
- NVIDIA's denoiser (STFT magnitude subtraction) is applied in windows that reach n_fft samples past the
  chunk, so each chunk is emitted once the audio n_fft beyond it exists.

Each family's way of streaming is its model's `streamer` (wavflow.models.Vocoder), in the family's own modules
(models.waveglow_streaming, models.student_sampling, models.wavenet_generation); this module runs any of them.

`python -m wavflow.synthesize --chunk-seconds S` writes WAV files this way (`write_wav`), and streams long mels
by default. `measure_latency` times the first chunk and the steady state.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .errors import WavflowError
from .fileio import atomic_write
from .inference import audio_progress_bar, check_options, make_denoiser, vocoder_for
from .melinput import as_mel_list, conform_mels, input_stats
from .models import Streamer, Vocoder
from .noise import ItemNoise, item_seed, run_seed

DEFAULT_CHUNK_SECONDS = 1.0  # `stream`'s chunk: about the latency a listener waits for with a real-time model
CLI_CHUNK_SECONDS = 10.0  # the command line's chunk for long mels: WaveGlow's overlap then costs little
STREAM_ABOVE_SECONDS = 30.0  # the command line streams mels longer than this (batching holds whole utterances)


# ----------------------------------------------------------------------------------------------------------------
# The API

def stream(mel: Any, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, checkpoint: str | os.PathLike | None = None, *,
           model: str | torch.nn.Module | None = None, device: str | torch.device = "cpu",
           sigma: float | None = None, temperature: float | None = None, denoise: float = 0.0,
           seed: int | None = None, dtype: str | None = None, stats: Any = None,
           **options: Any) -> Iterator[torch.Tensor]:
    """Vocode one mel a chunk at a time: yields 1-D float32 CPU tensors of about chunk_seconds of audio each (whole
    mel frames; the last one shorter), in order. Their concatenation equals `wavflow.synthesize` with the same
    arguments, to float rounding; memory is bounded by the chunk (and WaveGlow's window), not by the mel.

    mel: one mel as `wavflow.synthesize` takes it ((n_mels, F) or (F, n_mels) array or tensor, (1, n_mels, F),
    or a .npy path). checkpoint, model, device, sigma, temperature, denoise, seed, dtype, stats and other options: as
    for `wavflow.synthesize`. Every argument is checked here, before the first chunk is asked for.
    """
    vocoder = vocoder_for(checkpoint, model, device, dtype)
    mels, _ = as_mel_list(mel, vocoder.mel_config.n_mels, vocoder.mel_config.max_frames)
    if len(mels) != 1:
        raise WavflowError(f"stream takes one mel, got {len(mels)}: stream them one by one")
    mels = conform_mels(mels, vocoder.mel_config, input_stats(stats, vocoder.mel_config.n_mels), ["mel"])
    return stream_mel(vocoder, mels[0], chunk_seconds=chunk_seconds, seed=seed, denoise=denoise, sigma=sigma,
                      temperature=temperature, **options)


def stream_mel(model: Vocoder, mel: np.ndarray, *, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
               seed: int | None = None, denoise: float = 0.0, **options: Any) -> Iterator[torch.Tensor]:
    """`stream` for a loaded model and a checked float32 [n_mels, F] mel (melinput.as_mel_list)."""
    options = check_options(model, options)
    frames = chunk_frames(model, chunk_seconds)
    if denoise < 0:
        raise WavflowError(f"denoise strength must be >= 0, got {denoise}")
    denoiser = make_denoiser(model) if denoise > 0 else None
    seed = run_seed(seed)  # as vocode: with None, torch's global generator decides
    param = next(iter(model.parameters()))  # a bf16 model (dtype="bf16") takes its mel in bf16, as in vocode
    mel_t = torch.from_numpy(np.ascontiguousarray(mel, np.float32))[None].to(param.device, param.dtype)
    streamer = model.streamer(mel_t, ItemNoise(model, item_seed(seed, mel)), options)
    chunks = _chunks(streamer, mel.shape[1], frames)
    if denoiser is not None:
        chunks = _denoised(chunks, lambda a: denoiser(a, strength=denoise), denoiser.n_fft,
                           model.mel_config.hop_length, mel.shape[1] * model.mel_config.hop_length)
    return chunks


def chunk_frames(model: Vocoder, chunk_seconds: float) -> int:
    """Mel frames per chunk: chunk_seconds of audio, rounded to whole frames (at least one)."""
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) \
            or not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
        raise WavflowError(f"chunk_seconds must be a number > 0, got {chunk_seconds!r}")
    mc = model.mel_config
    return max(1, round(chunk_seconds * mc.sample_rate / mc.hop_length))


def _chunks(streamer: Streamer, frames: int, step: int) -> Iterator[torch.Tensor]:
    try:
        for f0 in range(0, frames, step):
            with torch.no_grad():
                audio = streamer.chunk(f0, min(frames, f0 + step))
            yield audio.float().cpu()
    finally:
        streamer.close()


def _denoised(raw: Iterator[torch.Tensor], denoise: Callable[[torch.Tensor], torch.Tensor], n_fft: int, hop: int,
              total: int) -> Iterator[torch.Tensor]:
    """The chunks of `raw` through a centred-STFT filter, exactly as if it ran on their concatenation.

    Output sample t of a centred STFT-iSTFT pair depends on the input within n_fft of t: the frames covering t
    are centred within n_fft / 2 of it and read n_fft / 2 either side. So a chunk is filtered inside a window
    that reaches m = n_fft (rounded up to whole hops, which keeps the window's frames on the whole signal's
    frame grid) beyond it on each side, and emitted once the audio up to its end + m exists; the window's own
    edges (reflect padding) stay outside the chunk. Only the last m + chunk + m samples are ever held.
    """
    margin = -(-n_fft // hop) * hop
    buf, buf_start, produced, emitted = torch.zeros(0), 0, 0, 0
    sizes: list[int] = []
    for chunk in raw:
        buf = torch.cat([buf, chunk])
        produced += chunk.shape[0]
        sizes.append(chunk.shape[0])
        while sizes and (emitted + sizes[0] + margin <= produced or produced >= total):
            a, b = emitted, emitted + sizes.pop(0)
            w0, w1 = max(0, a - margin), min(produced, b + margin)
            yield denoise(buf[w0 - buf_start: w1 - buf_start])[a - w0: b - w0]
            emitted = b
            keep = max(0, emitted - margin)  # the next window starts no earlier
            buf, buf_start = buf[keep - buf_start:], keep


# ----------------------------------------------------------------------------------------------------------------
# WAV files written as the chunks come

def write_wav(path: str | os.PathLike, chunks: Iterator[torch.Tensor], sample_rate: int) -> int:
    """Write audio chunks to `path` as one mono 16-bit PCM WAV while they are made; returns the samples written.

    Only one chunk is held at a time. The file is written under a temporary name in its directory and renamed
    at the end (wavflow.fileio.atomic_write): a failure at any chunk leaves no file, not even a temporary one.
    Samples are clipped to [-1, 1] before the int16 cast, as `wavflow.save_wav` does.
    """
    import soundfile as sf

    from .audio import to_int16

    written = 0

    def write(f) -> None:
        nonlocal written
        with sf.SoundFile(f, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV") as out:
            for chunk in chunks:
                out.write(to_int16(chunk).reshape(-1))
                written += chunk.shape[-1]

    atomic_write(path, write)
    return written


def stream_to_wavs(model: Vocoder, jobs: Sequence[tuple[Any, str | os.PathLike]], *, chunk_seconds: float,
                   seed: int | None = None, denoise: float = 0.0, progress: bool = False, **options: Any) -> float:
    """Stream each (melinput.MelFile, WAV path) of `jobs` to its file with `write_wav`, one after another, each
    mel read only when its turn comes; one progress bar (seconds of audio and RTF) over them all. Returns the
    seconds of audio written. `python -m wavflow.synthesize` runs long mels through this."""
    if not jobs:
        return 0.0
    sr, hop = model.mel_config.sample_rate, model.mel_config.hop_length
    bar = audio_progress_bar(sum(m.frames for m, _ in jobs) * hop / sr, enabled=progress)
    t0, done = time.perf_counter(), 0.0

    def counted(chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        nonlocal done
        for chunk in chunks:
            yield chunk
            done += chunk.shape[0] / sr
            if bar is not None:
                bar.update(chunk.shape[0] / sr)
                wall = time.perf_counter() - t0
                bar.set_postfix_str(f"RTF {wall / done:.3g} (wall/audio), {done / wall:.3g}x real time")

    try:
        for mel_file, target in jobs:
            mel = mel_file.read(model.mel_config)
            write_wav(target, counted(stream_mel(model, mel, chunk_seconds=chunk_seconds, seed=seed,
                                                 denoise=denoise, **options)), sr)
    finally:
        if bar is not None:
            bar.close()
    return done


# ----------------------------------------------------------------------------------------------------------------
# Latency

def measure_latency(model: Vocoder, mel: Any, chunk_seconds: float, *, seed: int = 0, warmup: bool = True,
                    **options: Any) -> dict[str, Any]:
    """Time one stream of `mel` through a loaded `model`: the latency to the first chunk and the steady state.

    Returns {"model", "chunk_seconds" (as rounded to whole frames), "chunks", "audio_seconds",
    "first_chunk_seconds" (wall time from the call to the first chunk: what a listener waits),
    "steady_rtf" (wall / audio over the chunks after the first; None with a single chunk), "rtf" (the whole
    stream)}. warmup: stream one chunk first, untimed, so one-off costs (numba compilation, WaveGlow's folded
    weights, allocator growth) are not counted. On a GPU the chunks are copied to the CPU as they are yielded,
    which synchronises before each clock reading.
    """
    mels, _ = as_mel_list(mel, model.mel_config.n_mels, model.mel_config.max_frames)
    if len(mels) != 1:
        raise WavflowError(f"measure_latency takes one mel, got {len(mels)}")
    mel = mels[0]
    frames = chunk_frames(model, chunk_seconds)
    sr, hop = model.mel_config.sample_rate, model.mel_config.hop_length
    if warmup:
        next(iter(stream_mel(model, mel[:, : min(mel.shape[1], frames)], chunk_seconds=chunk_seconds, seed=seed,
                             **options)))
    t0 = time.perf_counter()
    chunks = stream_mel(model, mel, chunk_seconds=chunk_seconds, seed=seed, **options)
    first = next(chunks)
    t_first = time.perf_counter()
    rest = sum(c.shape[0] for c in chunks)
    t_end = time.perf_counter()
    n_chunks = -(-mel.shape[1] // frames)
    total = first.shape[0] + rest
    return {
        "model": model.model_type,
        "chunk_seconds": frames * hop / sr,
        "chunks": n_chunks,
        "audio_seconds": total / sr,
        "first_chunk_seconds": t_first - t0,
        "steady_rtf": (t_end - t_first) / (rest / sr) if rest else None,
        "rtf": (t_end - t0) / (total / sr),
    }
