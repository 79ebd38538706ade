"""Files that ship with wavflow: the trained checkpoints and the example mel.

Their home is the repository's top level (`checkpoints/`, `examples/`); a wheel carries them inside the package
(`wavflow/checkpoints/`, `wavflow/examples/`, mapped there by pyproject.toml). Both places are looked up, so the
same code serves a clone, an editable install and `pip install wavflow` run from any directory.

The shipped models are known by name (MODELS: waveglow, wavenet, student), which `wavflow.load(NAME)`,
`--model NAME` and `python -m wavflow.synthesize --list-models` accept. Their held-out DNSMOS P.808 is not kept
here: it is read from checkpoints/README.md (held_out_dnsmos), the one place the figures are written down.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import WavflowError


@dataclass(frozen=True)
class ShippedModel:
    """One shipped checkpoint: the name it is asked for by, its file, and its family as the model_type the file
    builds and as checkpoints/README.md calls it (`aliases`: the other names a README row may give it)."""
    name: str
    file: str
    model_type: str
    family: str
    aliases: tuple[str, ...] = ()


MODELS = {m.name: m for m in (
    ShippedModel("waveglow", "waveglow-ljspeech-mini.pt", "waveglow", "WaveGlow"),
    ShippedModel("wavenet", "wavenet-ljspeech-mini.pt", "wavenet", "WaveNet teacher", ("WaveNet",)),
    ShippedModel("student", "student-ljspeech-mini.pt", "student", "IAF student", ("student",)),
)}
SHIPPED = tuple(MODELS)
README = "README.md"  # of the checkpoints folder: the shipped models' trainings and held-out figures
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
    """The file name of a shipped model (unknown names: an error naming the shipped ones)."""
    return shipped_model(model).file


def shipped_model(name: str) -> ShippedModel:
    """A shipped model by name; an unknown name is a one-line error that lists the known ones."""
    if name not in MODELS:
        raise WavflowError(f"unknown shipped model '{name}'; choose one of {', '.join(SHIPPED)}")
    return MODELS[name]


def shipped_checkpoint(model: str) -> Path:
    """The shipped checkpoint of one family: waveglow, wavenet or student."""
    shipped_model(model)
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


# ----------------------------------------------------------------------------------------------------------------
# Held-out figures from checkpoints/README.md

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped of code spans and emphasis: '| `a` | **b** |' -> ['a', 'b']."""
    return [re.sub(r"[`*]", "", c).strip() for c in line.strip().strip("|").split("|")]


def _is_model(cell: str, model: ShippedModel) -> bool:
    """Whether a README row's model cell names `model`: its file, or its name, family or an alias, alone or
    followed by more words ("WaveGlow 5.3M")."""
    text = cell.lower()
    if model.file in text:
        return True
    return any(text == a.lower() or text.startswith(a.lower() + " ") for a in (model.name, model.family,
                                                                               *model.aliases))


def parse_dnsmos(text: str, column: str = "DNSMOS P.808") -> dict[str, float]:
    """The held-out DNSMOS P.808 of each shipped model in a README's markdown: in every table with a 'model' (or
    'file') column and a `column` column, each row that names a shipped model (_is_model) and holds a number
    there; a later row replaces an earlier one (the README's history tables put the newest run last). In a table
    with a 'shipped' column only the rows whose cell there says "yes" count: a judgement that did not ship says
    nothing of the shipped file. A model with no such row is left out (not measured)."""
    found: dict[str, float] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):  # the |---|---:| line under the header
            continue
        keys = [k for k in ("model", "file") if k in header]
        if column.lower() not in header or not keys:
            continue
        if "shipped" in header and len(cells) == len(header) \
                and not cells[header.index("shipped")].lower().startswith("yes"):
            continue
        value_cell = cells[header.index(column.lower())] if len(cells) == len(header) else ""
        number = _NUMBER.match(value_cell)
        if number is None:  # "-", "pending", or a row with a stray '|'
            continue
        for model in MODELS.values():
            if any(_is_model(cells[header.index(k)], model) for k in keys):
                found[model.name] = float(number.group(0))
    return found


def held_out_dnsmos() -> dict[str, float]:
    """parse_dnsmos of the shipped checkpoints/README.md ({} where the README is not found)."""
    for home in _homes("checkpoints"):
        if (home / README).is_file():
            return parse_dnsmos((home / README).read_text(encoding="utf-8"))
    return {}
