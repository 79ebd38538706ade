"""Shared fixtures. Real LJSpeech clips come from ../shared/data (or $WAVFLOW_DATA); they are never copied here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("WAVFLOW_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "LJSpeech-1.1-mini" / "metadata.csv").exists():
        pytest.fail(f"LJSpeech test data not found under {d}: set WAVFLOW_DATA to the folder holding LJSpeech-1.1-mini")
    return d


@pytest.fixture(scope="session")
def ljspeech_root(data_dir: Path) -> Path:
    """The 335-clip LJSpeech-1.1-mini root (metadata.csv + wavs/)."""
    return data_dir / "LJSpeech-1.1-mini"


@pytest.fixture(scope="session")
def short_clip(ljspeech_root: Path) -> Path:
    """LJ002-0020.wav: 1.54 s of real speech."""
    return ljspeech_root / "wavs" / "LJ002-0020.wav"


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
