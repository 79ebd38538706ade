"""Shared by test_synthesize, test_mel_cli and test_hostile: tiny random-weight checkpoints and CLI runners."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from wavflow.checkpoint import model_payload, save_checkpoint
from wavflow.cli import run_cli
from wavflow.frontend import MelConfig
from wavflow.models import build_model
from wavflow.models.waveglow import WaveGlowConfig

REPO = Path(__file__).resolve().parents[1]
LJSPEECH = REPO / "tests" / "data" / "ljspeech"  # the fixture clips: metadata.csv + wavs/


def clip(clip_id: str) -> Path:
    """The fixture's file of one LJSpeech clip (FLAC or WAV)."""
    for suffix in (".flac", ".wav"):
        if (LJSPEECH / "wavs" / f"{clip_id}{suffix}").is_file():
            return LJSPEECH / "wavs" / f"{clip_id}{suffix}"
    raise FileNotFoundError(f"clip {clip_id} is not in {LJSPEECH}")

# 4 flows of WN 2 x 16 and an upsampler kernel of one hop (the 1024 default alone would be 6.5M parameters).
TINY_WAVEGLOW = WaveGlowConfig(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, wn_layers=2, wn_channels=16,
                               wn_kernel_size=3, upsample_kernel=256)


def tail_samples(cfg: WaveGlowConfig = TINY_WAVEGLOW) -> int:
    """Samples at the end of an utterance that WaveGlow's non-causal couplings let padding reach: each flow's WN
    sees (k - 1) / 2 * sum(dilations) groups ahead, the flows compose, and a group is n_group samples."""
    per_flow = (cfg.wn_kernel_size - 1) // 2 * sum(2**i for i in range(cfg.wn_layers))
    return cfg.n_flows * per_flow * cfg.n_group


def tiny_waveglow(seed: int = 0, mel_config: MelConfig = MelConfig()) -> torch.nn.Module:
    """A random tiny WaveGlow whose zero-initialised coupling outputs are perturbed, so the mel matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the same seed gives the same model, whatever the global generator did before
        torch.manual_seed(seed)
        model = build_model("waveglow", TINY_WAVEGLOW, mel_config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_tiny_waveglow(path: Path, seed: int = 0, mel_config: MelConfig = MelConfig()) -> Path:
    save_checkpoint(path, model_payload(tiny_waveglow(seed, mel_config), step=0))
    return path


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m wavflow.<module> args...` in a fresh interpreter, as a user would run it."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("WAVFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", f"wavflow.{module}", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_command(command: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m wavflow COMMAND args...` (the `wavflow` console script's dispatcher) in a fresh interpreter."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("WAVFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "wavflow", command, *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_in_process(main: Callable[[Sequence[str] | None], object], argv: Sequence[str], capsys,
                   prog: str = "wavflow") -> tuple[int, str, str]:
    """Run a CLI's main(argv) in this process under run_cli, exactly as `python -m` does, without paying for a
    fresh interpreter per case: (exit status, stdout, stderr). An exception run_cli lets through (a bug, which
    a user would see as a traceback) fails the test."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(prog, main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def snapshot(root: Path) -> set[str]:
    """Every path under root (files, directories, temporaries), to prove a failed run created nothing."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def live_source(model: torch.nn.Module) -> torch.nn.Module:
    """A teacher's or student's harmonic source moved off its zero start (wavflow.source.HarmonicSource): voiced
    throughout (so a phase must carry across chunks), a loud harmonic mean, an excitation that reaches the gates."""
    with torch.no_grad():
        model.source.out.bias.copy_(torch.tensor([0.0, 3.0]))
        model.harmonics.out.weight.normal_(0.0, 0.02)
        model.harmonics.out.bias.fill_(0.05)
        model.excite.weight.normal_(0.0, 1.0)
    return model
