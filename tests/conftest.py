"""Shared fixtures. Real speech comes from tests/data/ljspeech: 33 genuine LJSpeech clips (public domain) in the
dataset's layout, LJ001-0001..0032 as FLAC and LJ002-0020 as WAV, so the suite runs from a bare clone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synth_helpers import LJSPEECH


@pytest.fixture(scope="session")
def ljspeech_root() -> Path:
    """The fixture's LJSpeech-layout root (metadata.csv + wavs/)."""
    return LJSPEECH


@pytest.fixture(scope="session")
def short_clip() -> Path:
    """LJ002-0020.wav: 1.54 s of real speech, the clip of examples/LJ002-0020.npy."""
    return LJSPEECH / "wavs" / "LJ002-0020.wav"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core CPU: a second intra-op thread only spins (10-100x the CPU time per step).
    Modules of tiny-model tests opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
