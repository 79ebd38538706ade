"""LJSpeech-layout datasets: a fixed train/validation split, random fixed-length crops, whole utterances.

A dataset root holds `metadata.csv` (lines `ID|transcription|normalized transcription`, the LJSpeech format) and
`wavs/ID.wav` (or `wavs/ID.flac`). The split depends on nothing but the order of metadata.csv: the LAST
`n_valid` lines are the validation set, every earlier line is training data. So the 335-clip mini set and the
full 13,100-clip LJSpeech-1.1 both split the same way with no prepared file lists, and every tool (trainer,
evaluate, recipes) that says "validation" means the same clips.

Training items are fixed-length crops of raw audio [segment_length], at random offsets, zero-padded at the end
when a clip is shorter. Mels are NOT computed here: the trainer computes them on the training device from the
crop (wavflow.frontend.mel_spectrogram), so the mel of a crop is exactly the mel the model will see at inference
for that audio, and the STFT runs on the GPU. `return_mel=True` gives (audio, mel) pairs for other uses.

The crop offset is a pure function of (seed, epoch, clip index) when the item comes from `CropSampler`
(`crop_offset`), so a run resumed from a checkpoint sees the very same batches as an uninterrupted one (see
wavflow.train). `DeviceCrops` cuts the same crops from audio held on the training device, for the trainer's
`data.device_resident` path: the same sampler decides clip and offset, so both paths give identical batches.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .audio import load_audio
from .errors import WavflowError
from .frontend import MelConfig, mel_spectrogram
from .pitch import PitchCache, PitchSettings, PitchTrack, tracks_at

AUDIO_EXTENSIONS = (".wav", ".flac")


def read_metadata(root: str | os.PathLike) -> list[tuple[str, str]]:
    """(ID, normalized transcription) for each line of ROOT/metadata.csv, in file order.

    LJSpeech lines are `ID|text|normalized text`; two-field lines `ID|text` (common in derived datasets) are
    accepted too. Blank lines are skipped; anything else malformed is refused with its line number.
    """
    root = Path(root)
    if not root.exists():
        raise WavflowError(f"{root}: dataset root does not exist")
    if not root.is_dir():
        raise WavflowError(f"{root}: dataset root is not a directory")
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise WavflowError(f"{meta}: missing; an LJSpeech-layout root holds metadata.csv (ID|text|normalized) "
                           "and wavs/")
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise WavflowError(f"{meta}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("|")
        clip_id = fields[0].strip()
        if len(fields) < 2 or not clip_id or "/" in clip_id or clip_id in (".", ".."):
            raise WavflowError(f"{meta}:{n}: malformed line, expected 'ID|text|normalized text': {line[:80]!r}")
        if clip_id in seen:
            raise WavflowError(f"{meta}:{n}: clip ID {clip_id} appears twice")
        seen.add(clip_id)
        items.append((clip_id, fields[-1].strip()))
    if not items:
        raise WavflowError(f"{meta}: lists no clips")
    return items


def find_audio(root: Path, clip_id: str) -> Path:
    """ROOT/wavs/ID.wav, else ROOT/wavs/ID.flac; a clear error naming the file when neither exists."""
    for ext in AUDIO_EXTENSIONS:
        path = root / "wavs" / f"{clip_id}{ext}"
        if path.is_file():
            return path
    raise WavflowError(f"{root / 'wavs' / (clip_id + '.wav')}: missing (metadata.csv lists {clip_id}; "
                       f"looked for {' and '.join(AUDIO_EXTENSIONS)})")


def split_ids(items: list[tuple[str, str]], split: str, n_valid: int) -> list[tuple[str, str]]:
    """The deterministic split: validation = the last n_valid lines of metadata.csv, training = the rest."""
    if split not in ("train", "valid"):
        raise WavflowError(f"unknown split '{split}'; expected 'train' or 'valid'")
    if not 0 <= n_valid < len(items):
        raise WavflowError(f"n_valid={n_valid} must be at least 0 and leave training clips "
                           f"(metadata.csv lists {len(items)})")
    cut = len(items) - n_valid
    return items[:cut] if split == "train" else items[cut:]


class LJSpeech(Dataset):
    """Clips of an LJSpeech-layout root, as float32 audio in [-1, 1] at `mel_config.sample_rate`.

    split="train": item i is a crop of `segment_length` samples [T] from training clip i (random offset;
        zero-padded at the end when the clip is shorter). Index with an int (offset drawn from torch's global
        RNG) or with the (index, seed, epoch) triples `CropSampler` yields (offset fixed by those three).
    split="valid": item i is validation clip i whole, [T_i].
    return_mel=True makes each item (audio [T], log-mel [n_mels, T // hop + 1]) instead.
    cache=True keeps decoded audio in memory (each DataLoader worker holds its own copy; about 190 MB for
        the 36-minute mini set, 7.6 GB for the full dataset, so leave it off there).
    """

    def __init__(self, root: str | os.PathLike, split: Literal["train", "valid"] = "train", n_valid: int = 20,
                 segment_length: int = 16000, mel_config: MelConfig = MelConfig(), return_mel: bool = False,
                 cache: bool = False):
        self.root = Path(root)
        self.split = split
        self.n_valid = n_valid
        if split == "train" and segment_length <= mel_config.n_fft // 2:
            raise WavflowError(f"segment_length={segment_length} is too short for a mel; need more than "
                               f"{mel_config.n_fft // 2} samples")
        self.segment_length = segment_length
        self.mel_config = mel_config
        self.return_mel = return_mel
        self.items = split_ids(read_metadata(self.root), split, n_valid)
        # Resolve every file now: a missing clip should stop a run before it starts, not 3 hours in.
        self.paths = [find_audio(self.root, clip_id) for clip_id, _ in self.items]
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.pitch: list[PitchTrack] | None = None  # per clip, once attach_pitch has run: crops come with their pitch

    def attach_pitch(self, progress: bool = False) -> None:
        """Load (or compute once and cache, wavflow.pitch.PitchCache) the pitch track of every clip; from then on
        a training item is (audio [T], f0 [T // hop + 1] Hz, voiced [T // hop + 1] 0/1) at the crop's frames."""
        cache = PitchCache(self.root, PitchSettings.for_mel(self.mel_config))
        tracks = []
        for i, path in enumerate(self.paths):
            if progress and i % 50 == 0:
                print(f"pitch tracks: {i}/{len(self.paths)} clips ({cache.dir})", file=sys.stderr, flush=True)
            tracks.append(cache.get(path, self.load(index=i) if self._cache is not None else
                                    load_audio(path, self.mel_config.sample_rate)))
        self.pitch = tracks

    def crop_pitch(self, indices: list[int], offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(f0, voiced) [B, segment_length // hop + 1] of the crops of clips `indices` from `offsets`."""
        frames = self.segment_length // self.mel_config.hop_length + 1
        return tracks_at([self.pitch[i] for i in indices], offsets, frames, self.mel_config.hop_length)

    @property
    def ids(self) -> list[str]:
        return [clip_id for clip_id, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> torch.Tensor:
        """Whole clip `index` of this split, [T] float32 at the mel config's sample rate."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        audio = load_audio(self.paths[index], self.mel_config.sample_rate)
        if self._cache is not None:
            self._cache[index] = audio
        return audio

    def crop(self, audio: torch.Tensor, offset_rng: np.random.Generator | None) -> torch.Tensor:
        """A [segment_length] window of `audio`: uniform offset, or the zero-padded clip when it is shorter."""
        return self._crop(audio, offset_rng)[0]

    def _crop(self, audio: torch.Tensor, offset_rng: np.random.Generator | None) -> tuple[torch.Tensor, int]:
        n = self.segment_length
        if audio.shape[0] <= n:
            return torch.nn.functional.pad(audio, (0, n - audio.shape[0])), 0
        span = audio.shape[0] - n + 1
        offset = int(offset_rng.integers(span)) if offset_rng is not None else int(torch.randint(span, ()).item())
        return audio[offset:offset + n], offset

    def __getitem__(self, item: int | tuple[int, int, int]):
        if isinstance(item, (tuple, list)):
            index, seed, epoch = item
            rng = crop_rng(seed, epoch, index)
        else:
            index, rng = int(item), None
        audio = self.load(index)
        if self.split == "train":
            audio, offset = self._crop(audio, rng)
            if self.pitch is not None:
                f0, voiced = self.crop_pitch([index], [offset])
                return audio, f0[0], voiced[0]
        if self.return_mel:
            return audio, mel_spectrogram(audio.unsqueeze(0), self.mel_config)[0]
        return audio


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that draws the crop offset of CropSampler's item (index, seed, epoch): one per item, so the
    offset depends on nothing else (not on workers, batch order or what ran before)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def crop_offset(clip_samples: int, segment_length: int, seed: int, epoch: int, index: int) -> int:
    """Where `LJSpeech.crop` starts the crop of item (index, seed, epoch) in a clip of `clip_samples`: uniform
    over the clip, or 0 for a clip no longer than the segment (which is zero-padded at the end instead)."""
    if clip_samples <= segment_length:
        return 0
    return int(crop_rng(seed, epoch, index).integers(clip_samples - segment_length + 1))


class CropSampler(DistributedSampler):
    """DistributedSampler whose items also carry (seed, epoch), so `LJSpeech` crops are a function of them.

    Each process of a distributed run gets its own 1/world_size share of each shuffled epoch (batch size is
    per process). `start` skips the first samples of this process's share of the current epoch: that is how a
    resumed run picks up mid-epoch at the batch where the checkpoint was written. Works without an initialised
    process group when num_replicas and rank are given (single-process training).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_state(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(i, self.seed, self.epoch) for i in indices])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class DeviceCrops:
    """Every clip of a training split held once on `device`, and CropSampler's batches cut from it there.

    The clips are concatenated into one tensor with a start offset per clip: int16 (what 16-bit PCM is, half the
    bytes of float32; about 3.8 GB for the full LJSpeech), or float32 when a clip is not exactly 16-bit PCM (a
    resampled one). A batch is a gather on the device, so training needs no DataLoader, no worker processes and
    no host-to-device copy per step. The crops equal `LJSpeech`'s for the same sampler items value for value: the
    sampler picks the clips, `crop_offset` the offsets, a clip shorter than the segment is zero-padded at the
    end, and int16 / 32768 is the float32 load_audio reads.
    """

    def __init__(self, dataset: LJSpeech, device: torch.device | str, threads: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self.dataset = dataset
        self.segment_length = dataset.segment_length
        self.device = torch.device(device)
        parts: list[torch.Tensor] = []
        exact = True
        with ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1))) as pool:
            # load_audio, not dataset.load: its cache (data.cache_audio) would keep a second, float32 copy.
            rate = dataset.mel_config.sample_rate
            for audio in pool.map(lambda path: load_audio(path, rate), dataset.paths):  # in order; decodes overlap
                if exact:
                    scaled = audio * 32768.0
                    pcm = scaled.round()
                    if torch.equal(pcm, scaled) and (pcm.numel() == 0 or (pcm.min() >= -32768 and pcm.max() <= 32767)):
                        parts.append(pcm.to(torch.int16))
                        continue
                    exact = False  # keep float32 for every clip from here on, the ones before converted back
                    parts = [q.float() / 32768.0 for q in parts]
                parts.append(audio.float())
        self.lengths = [int(a.shape[0]) for a in parts]
        starts = [0]
        for n in self.lengths[:-1]:
            starts.append(starts[-1] + n)
        self.audio = torch.cat(parts).to(self.device)
        self.starts_dev = torch.tensor(starts, dtype=torch.int64, device=self.device)
        self.lengths_dev = torch.tensor(self.lengths, dtype=torch.int64, device=self.device)
        self.ramp = torch.arange(self.segment_length, device=self.device)

    @property
    def nbytes(self) -> int:
        return self.audio.numel() * self.audio.element_size()

    def plan(self, items: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip index, crop offset) of each sampler item, as int64 tensors on the device."""
        index = [int(i) for i, _, _ in items]
        offset = [crop_offset(self.lengths[i], self.segment_length, seed, epoch, i) for i, seed, epoch in items]
        return (torch.tensor(index, dtype=torch.int64).to(self.device),
                torch.tensor(offset, dtype=torch.int64).to(self.device))

    def crops(self, index: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """[B, segment_length] float32 crops of clips `index` [B] from `offset` [B], zero past a clip's end."""
        within = offset[:, None] + self.ramp[None, :]
        valid = within < self.lengths_dev[index][:, None]
        position = torch.where(valid, self.starts_dev[index][:, None] + within, 0)
        audio = self.audio[position]
        if audio.dtype == torch.int16:
            audio = audio.float() / 32768.0
        return audio.masked_fill(~valid, 0.0)

    def batches(self, sampler: CropSampler, batch_size: int) -> Iterator[Any]:
        """The full batches of the sampler's current epoch (from its start), as a DataLoader with drop_last
        would give them, already on the device. The epoch's offsets are worked out and sent over once. With the
        dataset's pitch attached, each batch is (audio, f0, voiced), as the DataLoader's."""
        items = list(iter(sampler))
        count = len(items) // batch_size
        if count == 0:
            return
        index, offset = self.plan(items[: count * batch_size])
        for b in range(count):
            rows = slice(b * batch_size, (b + 1) * batch_size)
            audio = self.crops(index[rows], offset[rows])
            if self.dataset.pitch is None:
                yield audio
            else:
                f0, voiced = self.dataset.crop_pitch(index[rows].tolist(), offset[rows].tolist())
                yield audio, f0.to(self.device), voiced.to(self.device)


@dataclass
class Clip:
    """A validation utterance as the trainer and wavflow.evaluate score it."""
    id: str
    path: Path
    audio: torch.Tensor  # [T] float32, cut to a whole number of hops
    full_samples: int    # length of the recording before any cut


def validation_clips(dataset: LJSpeech, max_clips: int | None = None, max_seconds: float | None = None) -> list[Clip]:
    """The first `max_clips` clips of a validation split (all when None), each cut to its first `max_seconds`
    (whole when None or 0) and then to a whole number of hops: a mel of F frames vocodes to F x hop samples
    (design.md section 1), so no model is scored on a partial frame. Clips too short for the caller's purpose
    are the caller's to drop or refuse."""
    hop, sr = dataset.mel_config.hop_length, dataset.mel_config.sample_rate
    count = len(dataset) if max_clips is None else min(len(dataset), max_clips)
    ids, clips = dataset.ids, []
    for i in range(count):
        audio = dataset.load(i)
        n = audio.shape[0]
        if max_seconds:
            n = min(n, int(max_seconds * sr))
        n = n // hop * hop
        clips.append(Clip(ids[i], dataset.paths[i], audio[:n].contiguous(), audio.shape[0]))
    return clips
