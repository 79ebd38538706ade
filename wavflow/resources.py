"""Files that ship with wavflow: the trained checkpoints and the example mel.

Their home is the repository's top level (`checkpoints/`, `examples/`); a wheel carries them inside the package
(`wavflow/checkpoints/`, `wavflow/examples/`, mapped there by pyproject.toml). Both places are looked up, so the
same code serves a clone, an editable install and `pip install wavflow` run from any directory.
"""
from __future__ import annotations

from pathlib import Path

from .errors import WavflowError

SHIPPED = ("waveglow", "wavenet", "student")
EXAMPLE_NAME = "LJ002-0020.npy"  # the Tacotron 2 mel of LJSpeech clip LJ002-0020 (133 frames, 1.54 s)


def _homes(folder: str) -> list[Path]:
    package = Path(__file__).resolve().parent
    return [package / folder, package.parent / folder]  # installed wheel, then the checkout


def _find(folder: str, name: str) -> Path | None:
    for home in _homes(folder):
        if (home / name).is_file():
            return home / name
    return None


def checkpoint_name(model: str) -> str:
    return f"{model}-ljspeech-mini.pt"


def shipped_checkpoint(model: str) -> Path:
    """The shipped checkpoint of one family: waveglow, wavenet or student."""
    if model not in SHIPPED:
        raise WavflowError(f"unknown shipped model '{model}'; choose one of {', '.join(SHIPPED)}")
    found = _find("checkpoints", checkpoint_name(model))
    if found is None:
        raise WavflowError(f"{checkpoint_name(model)}: shipped {model} checkpoint not found in "
                           f"{' or '.join(map(str, _homes('checkpoints')))}; give --checkpoint PATH")
    return found


def example_mel() -> Path:
    """The example mel, LJ002-0020.npy."""
    found = _find("examples", EXAMPLE_NAME)
    if found is None:
        raise WavflowError(f"{EXAMPLE_NAME}: the example mel is not in "
                           f"{' or '.join(map(str, _homes('examples')))}; give a mel path")
    return found
