"""What a run trains on: the training split, the sampler that shares each shuffled epoch out among the processes,
and its batches, loaded by a DataLoader or cut on the device (data.device_resident); and the held-out split."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch

from ..data import CropSampler, DeviceCrops, LJSpeech
from ..errors import WavflowError
from ..frontend import MelConfig
from .config import DataConfig, check_segment_length, resample_warning
from .runtime import PROG, Runtime
from .state import RunState


class TrainingData:
    """The splits of data.root for this process of `runtime`, checked: enough clips for a batch on every process,
    segments that fit. `seed` (train.seed) orders the epochs and places the crops."""

    def __init__(self, config: DataConfig, mel_config: MelConfig, seed: int, runtime: Runtime):
        self.config, self.seed = config, seed
        self.train_set = LJSpeech(config.root, "train", config.n_valid, config.segment_length, mel_config,
                                  cache=config.cache_audio)
        self.sampler = CropSampler(self.train_set, num_replicas=runtime.world_size, rank=runtime.rank, seed=seed)
        if self.sampler.num_samples < config.batch_size:
            raise WavflowError(f"{config.root}: {len(self.train_set)} training clips give each of "
                               f"{runtime.world_size} process(es) {self.sampler.num_samples}, fewer than "
                               f"data.batch_size={config.batch_size}")
        check_segment_length(self.train_set, config.segment_length, config.root)
        warning = resample_warning(self.train_set)
        if warning is not None and runtime.main:
            print(f"{PROG}: {warning}", file=sys.stderr, flush=True)
        self.valid_set = (LJSpeech(config.root, "valid", config.n_valid, config.segment_length, mel_config)
                          if config.n_valid > 0 else None)
        self.device_crops: DeviceCrops | None = None

    def keep_on(self, device: torch.device) -> DeviceCrops:
        """data.device_resident: every training clip on `device` once, the crops cut there (the loader's crops)."""
        self.device_crops = DeviceCrops(self.train_set, device)
        return self.device_crops

    def batches(self, state: RunState, pin_memory: bool) -> Iterator[Any]:
        """Batch after batch from the sampler's position in `state`, epoch after epoch, without end. The caller
        counts state.batches_in_epoch for each batch it trains on; at an epoch's end state moves to the next."""
        loader = None if self.device_crops is not None else torch.utils.data.DataLoader(
            self.train_set, batch_size=self.config.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0,
            pin_memory=pin_memory,
            # The loader's own generator: starting an epoch must not draw from the global torch RNG, or a
            # resumed run (which starts its first epoch mid-way) would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed))
        while True:
            self.sampler.set_state(state.epoch, state.batches_in_epoch * self.config.batch_size)
            if self.device_crops is not None:
                yield from self.device_crops.batches(self.sampler, self.config.batch_size)
            else:
                yield from loader
            state.epoch += 1
            state.batches_in_epoch = 0
