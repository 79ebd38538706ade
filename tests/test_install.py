"""What a fresh install relies on: the packaged files, and torchaudio loaded only where audio is resampled.

torchaudio's compiled library is tied to one torch release (a mismatched pair fails at import with undefined
symbols), so vocoding, training and evaluating at the model's own sample rate must run with it unimportable.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wavflow import resources

from synth_helpers import LJSPEECH, REPO, save_tiny_waveglow

TINY_YAML = REPO / "recipes" / "ljspeech" / "conf" / "waveglow.tiny.yaml"


def test_packaging_lists_every_subpackage_and_the_shipped_files():
    """pyproject.toml names the packages one by one (the data folders are mapped in): a new subpackage must be
    added there, or a wheel install would lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "wavflow").rglob("__init__.py")}
    assert on_disk <= set(conf["packages"])
    assert conf["package-dir"] == {"wavflow.checkpoints": "checkpoints", "wavflow.examples": "examples"}
    for name in resources.SHIPPED:
        assert (REPO / "checkpoints" / resources.checkpoint_name(name)).is_file()



def _without_torchaudio(tmp: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m wavflow...` with a torchaudio package on the path that fails at import, as a broken pair does."""
    shim = tmp / "shim" / "torchaudio"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("raise ImportError('libtorchaudio.so: undefined symbol (simulated)')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("WAVFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_vocode_train_and_evaluate_run_when_torchaudio_cannot_load(tmp_path):
    ckpt = save_tiny_waveglow(tmp_path / "tiny.pt")
    probe = _without_torchaudio(tmp_path, "torchaudio", cwd=tmp_path)
    assert probe.returncode != 0 and "simulated" in probe.stderr  # the shim really is what gets imported

    r = _without_torchaudio(tmp_path, "wavflow.synthesize", "--example", "--checkpoint", str(ckpt), "-o",
                            str(tmp_path / "e.wav"), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "e.wav")).frames == np.load(resources.example_mel()).shape[1] * 256

    r = _without_torchaudio(tmp_path, "wavflow.train", str(TINY_YAML), "--out-dir", str(tmp_path / "run"),
                            f"data.root={LJSPEECH}", "data.num_workers=0", "data.batch_size=1",
                            "data.segment_length=4096", "train.max_steps=2", "train.device=cpu",
                            "train.valid_every=2", "train.valid_clips=1", "train.valid_max_seconds=0.2",
                            "train.tensorboard=false", "train.progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "best.pt").is_file()

    r = _without_torchaudio(tmp_path, "wavflow.evaluate", str(tmp_path / "run" / "best.pt"), "--data-root",
                            str(LJSPEECH), "--max-clips", "1", "--max-seconds", "0.2", "--device", "cpu",
                            "--griffin-lim-iters", "0", "--json", str(tmp_path / "eval.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "eval.json").is_file()


def test_resampling_without_torchaudio_is_one_line(tmp_path):
    sf.write(str(tmp_path / "16k.wav"), np.zeros(1600, np.float32), 16000)
    r = _without_torchaudio(tmp_path, "wavflow.mel", str(tmp_path / "16k.wav"), "-o", str(tmp_path / "m.npy"),
                            cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and "needs a working torchaudio" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m.npy").exists()
