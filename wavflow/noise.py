"""The noise every model vocodes from, seeded per mel and drawn per absolute position (docs/design.md section 6a).

A mel's noise depends only on the run's seed and the mel's contents (`item_seed`), never on its file name, its
place in a list or the batch it lands in. `ItemNoise` draws it on the CPU in blocks of NOISE_BLOCK_FRAMES frames'
worth of samples, block i from a generator seeded by a hash of (item seed, i), so any span of it can be drawn
without what precedes it: whole-utterance synthesis (wavflow.inference) and streaming (wavflow.streaming) read the
same noise. The draw itself is the model's (`Vocoder.draw_noise`): its layout is the family's.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .models import Vocoder

NOISE_BLOCK_FRAMES = 64  # a mel's noise is drawn in blocks of this many frames' samples (16,384 at hop 256)


def run_seed(seed: int | None) -> int:
    """The run's seed: `seed` itself, or with None one drawn from torch's global generator (so torch.manual_seed
    governs the result)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64)) if seed is None else seed


def item_seed(seed: int, mel: np.ndarray) -> int:
    """The seed of one mel's noise: a hash of the run's seed and the mel's bytes.

    So the noise a mel gets depends on nothing else (not its name, position or batch), and two different mels
    in one run get unrelated noise.
    """
    h = hashlib.sha256(str(int(seed)).encode() + b"\0" + np.ascontiguousarray(mel, np.float32).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


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
        self._blocks = dict(zip(range(first, last), blocks, strict=True))
        z = blocks[0] if len(blocks) == 1 else torch.cat(blocks, -1)
        steps = blocks[0].shape[-1]  # noise steps per block (WaveGlow: one per group of n_group samples)
        lo, hi = (start - first * self.block) * steps // self.block, (stop - first * self.block) * steps // self.block
        return z[..., lo:hi]


def batch_noise(model: Vocoder, seeds: list[int], frames: list[int], batch_frames: int) -> torch.Tensor:
    """The noise of a padded batch: each item's own noise for its F_i frames (`ItemNoise`, so batched, alone and
    streamed it is the same), extended to the batch's `batch_frames` by `pad_time`, stacked in draw_noise's
    layout for batch_frames * hop samples. On the CPU, float32."""
    hop = model.mel_config.hop_length
    length = batch_frames * hop
    noise = []
    for seed, f in zip(seeds, frames, strict=True):
        z = ItemNoise(model, seed).span(0, f * hop)
        noise.append(pad_time(z, z.shape[-1] * length // (f * hop)))
    return torch.cat(noise)


def pad_time(z: torch.Tensor, length: int) -> torch.Tensor:
    """Extend noise along its last (time) axis by repeating it: the padding then holds values the model's
    noise distribution can produce (zeros would be log(0) for a logistic's uniform)."""
    reps = -(-length // z.shape[-1])
    return z.repeat(*([1] * (z.dim() - 1)), reps)[..., :length]
