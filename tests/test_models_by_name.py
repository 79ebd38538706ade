"""Shipped models by name: wavflow.load(NAME), --model NAME, `python -m wavflow.synthesize --list-models`, and the
held-out DNSMOS figures read from checkpoints/README.md."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import wavflow
from wavflow import resources
from wavflow.checkpoint import load
from wavflow.commands import export as export_cli
from wavflow.commands import synthesize as synth_cli
from wavflow.errors import WavflowError

from synth_helpers import REPO, run_in_process, save_tiny_waveglow, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = {"waveglow": "WaveGlow", "wavenet": "WaveNet teacher", "student": "IAF student"}


def test_registry_names_every_shipped_file():
    assert resources.SHIPPED == ("waveglow", "wavenet", "student")
    assert {m.name: m.family for m in resources.MODELS.values()} == FAMILIES
    shipped_files = sorted(p.name for p in (REPO / "checkpoints").glob("*.pt"))
    assert sorted(m.file for m in resources.MODELS.values()) == shipped_files  # none left out of the registry
    for name, model in resources.MODELS.items():
        assert resources.shipped_checkpoint(name) == REPO / "checkpoints" / model.file
        assert resources.checkpoint_name(name) == model.file


@pytest.mark.parametrize("name", resources.SHIPPED)
def test_load_by_name_is_the_shipped_file(name):
    model = wavflow.load(name)
    assert model.model_type == resources.MODELS[name].model_type and not model.training
    from_file = load(resources.shipped_checkpoint(name))
    expected = from_file.state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_waveglow(tmp_path / "student")  # a file that happens to be called like a shipped model
    model = wavflow.load("student")
    assert model.model_type == "waveglow" and model.config.wn_channels == 16


@pytest.mark.parametrize("name", ["wavglow", "WaveGlow", "hifigan", "waveglow-ljspeech-mini"])
def test_unknown_name_is_one_line_listing_the_names(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WavflowError) as info:
        wavflow.load(name)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and f"'{name}'" in message and "no such checkpoint file" in message
    assert all(n in message for n in resources.SHIPPED) and "--list-models" in message


def test_a_missing_path_keeps_its_own_message(tmp_path):
    with pytest.raises(WavflowError, match=r"nope\.pt: no such checkpoint file$"):
        wavflow.load(tmp_path / "nope.pt")
    with pytest.raises(WavflowError, match="unknown shipped model 'nope'; choose one of waveglow, wavenet, student"):
        resources.shipped_checkpoint("nope")


def test_synthesize_model_option_takes_every_name(tmp_path, capsys):
    parser = synth_cli.build_parser()
    for name in resources.SHIPPED:
        assert parser.parse_args(["m.npy", "--model", name]).model == name
    mel = np.load(REPO / "examples" / "LJ002-0020.npy")[:, :4]
    np.save(tmp_path / "m.npy", mel)
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "m.npy", "--model", "student", "-o",
                                                    tmp_path / "s.wav", "-q"], capsys, prog=synth_cli.PROG)
    assert code == 0, err
    audio, sr = sf.read(str(tmp_path / "s.wav"))
    assert audio.shape == (4 * 256,) and sr == 22050
    code, _, err = run_in_process(synth_cli.run, [tmp_path / "m.npy", "--model", "wavglow"], capsys,
                                  prog=synth_cli.PROG)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "wavglow" in err
    assert all(n in err for n in resources.SHIPPED)


def test_export_model_option_takes_every_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The teacher is a shipped name export accepts, then refuses by what it is (autoregressive), not by name.
    code, _, err = run_in_process(export_cli.run, ["--model", "wavenet"], capsys, prog=export_cli.PROG)
    assert code == 2 and "WaveNet teacher cannot be exported" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_in_process(export_cli.run, ["--model", "glow"], capsys, prog=export_cli.PROG)
    assert code == 2 and "invalid choice: 'glow'" in err and all(n in err for n in resources.SHIPPED)
    assert snapshot(tmp_path) == set()


def _table_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in out.splitlines()
            if line.split() and line.split()[0] in resources.SHIPPED}


def test_list_models(capsys):
    code, out, err = run_in_process(synth_cli.run, ["--list-models"], capsys, prog=synth_cli.PROG)
    assert code == 0 and err == ""
    header = out.splitlines()[0]
    for column in ("name", "family", "parameters", "sample rate", "held-out DNSMOS P.808"):
        assert column in header
    rows = _table_rows(out)
    assert list(rows) == list(resources.SHIPPED)
    dnsmos = resources.held_out_dnsmos()
    readme = _readme_parameters()
    for name, (_row_name, family, parameters, rate, score, file) in rows.items():
        model = load(resources.shipped_checkpoint(name))
        assert family == FAMILIES[name] and file == resources.MODELS[name].file
        assert parameters == f"{sum(p.numel() for p in model.parameters()):,}" == readme[file]
        assert rate == f"{model.mel_config.sample_rate} Hz"
        assert score == (f"{dnsmos[name]:.2f}" if name in dnsmos else "-")


def test_list_models_into_a_closed_pipe_stops_quietly():
    # `--list-models | head -1`: the reader leaves after one line; the command ends with SIGPIPE's status, no traceback
    proc = subprocess.Popen([sys.executable, "-m", "wavflow.synthesize", "--list-models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_list_models_without_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(resources, "_homes", lambda folder: [tmp_path / folder])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "student-ljspeech-mini.pt").write_text("not a checkpoint")
    (tmp_path / "checkpoints" / "README.md").write_text(
        "| run | model | DNSMOS P.808 |\n|---|---|---:|\n| 1 | WaveGlow 5.3M | 2.91 |\n")
    code, out, _ = run_in_process(synth_cli.run, ["--list-models"], capsys, prog=synth_cli.PROG)
    assert code == 0
    rows = _table_rows(out)
    assert rows["waveglow"][2:] == ["-", "-", "2.91", "waveglow-ljspeech-mini.pt (not found)"]
    assert rows["student"][2:] == ["-", "-", "-", "student-ljspeech-mini.pt (unreadable)"]


def _readme_parameters() -> dict[str, str]:
    """checkpoints/README.md's first table: file -> parameters cell."""
    text = (REPO / "checkpoints" / "README.md").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        cells = [c.replace("`", "").strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].split()[0] in {m.file for m in resources.MODELS.values()}:
            out.setdefault(cells[0].split()[0], cells[3])
    return out


SAMPLE = """\
# Shipped checkpoints

| file | model | parameters | DNSMOS P.808 |
|---|---|---:|---:|
| `waveglow-ljspeech-mini.pt` (21.3 MB) | WaveGlow | 5,306,136 | 9.99 |

Prose between the tables | with a pipe.

| run | model | steps | DNSMOS P.808 | scored on |
|---|---|---:|---:|---|
| - | real recordings | - | 4.07 | 20 clips |
| - | Griffin-Lim, 60 iterations | - | 3.57 | 20 clips |
| 1 | WaveGlow 5.3M | 3,500 | 2.10 | 20 clips |
| 1 | WaveNet teacher 3.8M | 500 | 1.50 | 20 clips |
| 1 | IAF student 2.8M | 463 | - | 20 clips |
| 2 | all three | - | 3.00 | pending |
| 3 | **WaveGlow 5.3M** | 4,000 | 2.45 (fp16) | 20 clips |
| 3 | student | 900 | 1.75 | 20 clips |
| 4 | waveglow | 5,000 | pending | - |

| system | DNSMOS P.808 |
|---|---:|
| WaveGlow | 8.88 |

| judgement | model | DNSMOS P.808 | shipped |
|---|---|---:|---|
| 5 | WaveNet teacher 4.0M | 2.41 | yes (sha256 `914ffbc9...`) |
| 6 | WaveNet teacher 4.0M | 2.50 | no: DNSMOS within noise |
"""


def test_parse_dnsmos_takes_each_models_newest_figure():
    # The first table's 9.99 is a file row with a figure, replaced by the history's later rows; the reference
    # rows, "all three" and the "system" table (no model column) name no shipped model; "-" and "pending" are
    # none; in a table with a "shipped" column only a row that shipped speaks for the shipped file.
    assert resources.parse_dnsmos(SAMPLE) == {"waveglow": 2.45, "wavenet": 2.41, "student": 1.75}
    assert resources.parse_dnsmos("no tables here") == {}


def test_the_readme_gives_every_shipped_model_a_dnsmos_row():
    """checkpoints/README.md is where the figures live: its history table must keep a DNSMOS P.808 column and a
    row the parser recognises for every shipped model, so that a figure written there reaches --list-models."""
    text = (REPO / "checkpoints" / "README.md").read_text(encoding="utf-8")
    assert resources.held_out_dnsmos() == resources.parse_dnsmos(text)
    filled, column, n = [], None, 0
    for line in text.splitlines():  # every DNSMOS cell of every table given a distinct made-up figure
        cells = line.strip().strip("|").split("|")
        if not line.startswith("|"):
            column = None
        elif column is None:
            names = [c.strip().lower() for c in cells]
            column = names.index("dnsmos p.808") if "dnsmos p.808" in names else -1
        elif column >= 0 and not re.fullmatch(r"[\s:|-]+", line):
            n += 1
            cells[column] = f" {n}.5 "
            line = "|" + "|".join(cells) + "|"
        filled.append(line)
    found = resources.parse_dnsmos("\n".join(filled))
    assert set(found) == set(resources.SHIPPED), found


def test_held_out_dnsmos_reads_the_wheels_readme(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "_homes", lambda folder: [tmp_path / "pkg" / folder, tmp_path / folder])
    assert resources.held_out_dnsmos() == {}
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "README.md").write_text(SAMPLE)
    assert resources.held_out_dnsmos() == {"waveglow": 2.45, "wavenet": 2.41, "student": 1.75}
