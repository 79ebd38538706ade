"""The `wavflow` command: its dispatcher, every subcommand's help, the old entry points that now run it, the
console scripts, and `wavflow stream` (whose bad-input cases live in test_hostile.py with every command's)."""
from __future__ import annotations

import runpy
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow import commands
from wavflow.checkpoint import read_checkpoint
from wavflow.commands import stream as stream_cmd
from wavflow.commands import synthesize as synth_cmd
from wavflow.convert import convert

from synth_helpers import REPO, run_command, run_in_process, save_tiny_waveglow, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXAMPLE = REPO / "examples" / "LJ002-0020.npy"
SHIMS = {  # the module `python -m` runs -> the prog its help and errors carry
    "wavflow.synthesize": "python -m wavflow.synthesize", "wavflow.mel": "python -m wavflow.mel",
    "wavflow.evaluate": "python -m wavflow.evaluate", "wavflow.export": "python -m wavflow.export",
    "wavflow.convert": "python -m wavflow.convert", "wavflow.benchmark": "python -m wavflow.benchmark",
    "wavflow.train": "wavflow.train", "wavflow.train.ship": "python -m wavflow.train.ship",
}


def _dispatch(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        commands.main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_waveglow(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def short_mel(tmp_path_factory):
    path = tmp_path_factory.mktemp("mel") / "short.npy"
    np.save(path, np.load(EXAMPLE)[:, :40])  # 0.46 s: a few chunks of 0.1 s
    return path


# ---------------------------------------------------------------------------------------------------------------
# The dispatcher

def test_help_lists_every_command_and_imports_no_torch():
    code = ("import sys\nfrom wavflow.commands import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('heavy:', sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: wavflow COMMAND [ARGS ...]") and r.stdout.rstrip().endswith("heavy: []")
    for name, what in commands.COMMANDS.items():
        assert f"  {name}  " in r.stdout and what in r.stdout
    assert set(commands.COMMANDS) == {"synthesize", "stream", "mel", "train", "evaluate", "benchmark", "export",
                                      "convert"}


@pytest.mark.parametrize("argv,message", [
    (["synth"], "wavflow: error: unknown command 'synth'; did you mean 'synthesize'?"),
    (["frobnicate"], "wavflow: error: unknown command 'frobnicate'; choose one of synthesize, stream, mel,"),
    ([], "wavflow: error: no command given; choose one of synthesize,"),
    (["--quiet", "synthesize"], "wavflow: error: unknown option '--quiet'; wavflow itself takes --help or --version"),
])
def test_bad_command_is_one_line_exit_2(argv, message, capsys):
    code, out, err = _dispatch(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(message), err


def test_version(capsys):
    import wavflow

    assert _dispatch(["--version"], capsys)[:2] == (0, f"wavflow {wavflow.__version__}\n")


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_command_shows_its_own_help_under_its_name(name, capsys):
    code, out, err = _dispatch([name, "--help"], capsys)
    assert code == 0 and err == "" and out.startswith(f"usage: wavflow {name} ")
    code, _, err = _dispatch([name, "--no-such-flag"], capsys)  # and its errors carry the same name
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"wavflow {name}: error: "), err


def test_python_dash_m_wavflow_is_the_same_command(ckpt, short_mel, tmp_path):
    """A real process: `python -m wavflow stream -o -` writes raw PCM on a pipe; bad input is one line, exit 2."""
    r = subprocess.run([sys.executable, "-m", "wavflow", "stream", str(short_mel), "--checkpoint", str(ckpt),
                        "-o", "-", "--device", "cpu"], capture_output=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 40 * 256 * 2 and b"raw 16-bit PCM (mono, 22050 Hz, little-endian)" in r.stderr
    r = run_command("stream", tmp_path / "none.npy", "--checkpoint", ckpt, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == f"wavflow stream: error: {tmp_path / 'none.npy'}: no such file\n"


# ---------------------------------------------------------------------------------------------------------------
# The old entry points and the console scripts

@pytest.mark.parametrize("module", list(SHIMS))
# runpy warns that this test process imported the module already (other tests did); `python -m` has not
@pytest.mark.filterwarnings("ignore:'wavflow.:RuntimeWarning")
def test_old_entry_points_run_the_command_under_their_own_name(module, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=True)  # what `python -m MODULE --help` does
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None) and out.startswith(f"usage: {SHIMS[module]} "), out[:200]
    if module == "wavflow.train.ship":  # convert, with the default it always had
        assert "(default fp16;" in out


def test_console_scripts(capsys, monkeypatch):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"wavflow": "wavflow.commands:main",
                       "wavflow-synthesize": "wavflow.commands.synthesize:legacy_main"}
    monkeypatch.setattr(sys, "argv", ["wavflow-synthesize", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        synth_cmd.legacy_main()
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: wavflow-synthesize ")


def test_ship_is_convert_with_fp16(tmp_path):
    from wavflow.train.ship import ship

    source = save_tiny_waveglow(tmp_path / "full.pt")
    info = ship(source, tmp_path / "half.pt")
    assert info["dtype"] == "fp16" and read_checkpoint(tmp_path / "half.pt")["weights_dtype"] == "fp16"
    assert convert(source, tmp_path / "full-again.pt")["dtype"] == "fp32"
    assert "weights_dtype" not in read_checkpoint(tmp_path / "full-again.pt")


# ---------------------------------------------------------------------------------------------------------------
# wavflow stream

def test_streamed_wav_is_synthesizes_audio_and_stdout_is_the_same_samples(ckpt, short_mel, tmp_path, capsysbinary):
    common = ["--checkpoint", ckpt, "--seed", "5", "--sigma", "0.7", "--device", "cpu"]
    code, out, err = run_in_process(stream_cmd.run, [short_mel, "-o", tmp_path / "s.wav", "--chunk-seconds",
                                                     "0.1", *common], capsysbinary, prog=stream_cmd.PROG)
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 's.wav'}: 0.46 s of audio in chunks of 0.1 s, first after ".encode())
    code, _, err = run_in_process(synth_cmd.run, [short_mel, "-o", tmp_path / "w.wav", "-q", *common], capsysbinary,
                                  prog=synth_cmd.PROG)
    assert code == 0, err
    streamed, sr = sf.read(str(tmp_path / "s.wav"), dtype="int16")
    whole, _ = sf.read(str(tmp_path / "w.wav"), dtype="int16")
    assert sr == 22050 and streamed.shape == whole.shape == (40 * 256,)
    # The library's chunks equal the whole utterance to float rounding (wavflow.streaming): one 16-bit step at most.
    assert np.abs(streamed.astype(np.int32) - whole).max() <= 1 and np.mean(streamed == whole) > 0.99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.wav", "w.wav"]  # no temporary left behind

    code, pcm, err = run_in_process(stream_cmd.run, [short_mel, "-o", "-", "-q", "--chunk-seconds", "0.1", *common],
                                    capsysbinary, prog=stream_cmd.PROG)
    assert code == 0 and err == b"", err
    assert np.array_equal(np.frombuffer(pcm, "<i2"), streamed)  # -o -: the same samples, raw


def test_stream_refuses_a_terminal_and_writes_the_example_by_default(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_in_process(stream_cmd.run, ["--example", "--checkpoint", ckpt, "-o", "-"], capsys,
                                    prog=stream_cmd.PROG)
    assert code == 2 and out == "" and "stdout is a terminal" in err and err.count("\n") == 1
    before = snapshot(tmp_path)
    assert before == set()
    code, out, err = run_in_process(stream_cmd.run, ["--example", "--checkpoint", ckpt, "--device", "cpu", "-q"],
                                    capsys, prog=stream_cmd.PROG)
    assert code == 0 and out == "", err
    assert sf.info(str(tmp_path / "out" / "LJ002-0020.wav")).frames == np.load(EXAMPLE).shape[1] * 256


def test_backend_option_names_waveglow_sampling_backend(tmp_path, capsys):
    """--backend picks WaveGlow's sampling backend: every backend vocodes the same audio to float rounding (at most
    one 16-bit step apart), the stream command takes it too, and a family without backends refuses it in one line."""
    outputs = {}
    for backend in ("mm", "conv"):
        out = tmp_path / f"{backend}.wav"
        code, _, err = run_in_process(synth_cmd.run, [EXAMPLE, "--backend", backend, "-q", "-o", out], capsys,
                                      synth_cmd.PROG)
        assert code == 0, err
        outputs[backend] = sf.read(str(out), dtype="int16")[0].astype(np.int32)
    assert np.abs(outputs["mm"] - outputs["conv"]).max() <= 1
    code, _, err = run_in_process(stream_cmd.run, [EXAMPLE, "--backend", "mm_t", "-q", "-o", tmp_path / "s.wav"],
                                  capsys, stream_cmd.PROG)
    assert code == 0, err
    assert np.abs(sf.read(str(tmp_path / "s.wav"), dtype="int16")[0].astype(np.int32) - outputs["mm"]).max() <= 1
    before = snapshot(tmp_path)
    code, _, err = run_in_process(synth_cmd.run, [EXAMPLE, "--model", "student", "--backend", "mm", "-o",
                                                  tmp_path / "x.wav"], capsys, synth_cmd.PROG)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "backend" in err, err
    assert snapshot(tmp_path) == before
    code, _, err = run_in_process(synth_cmd.run, [EXAMPLE, "--backend", "fast"], capsys, synth_cmd.PROG)
    assert code == 2 and "invalid choice: 'fast'" in err


def test_convert_sets_a_waveglows_default_sigma(tmp_path, capsys):
    """--sigma writes a WaveGlow's default sampling sigma into the file: the converted model vocodes by default
    what the source does at that sigma; a model without a noise scale refuses it in one line, writing nothing."""
    import wavflow
    from wavflow.commands import convert as convert_cmd

    source = save_tiny_waveglow(tmp_path / "tiny.pt")
    code, _, err = run_in_process(convert_cmd.run, [source, tmp_path / "s.pt", "--sigma", "0.25"], capsys,
                                  "wavflow convert")
    assert code == 0, err
    converted = wavflow.load(tmp_path / "s.pt")
    assert converted.config.infer_sigma == 0.25 != wavflow.load(source).config.infer_sigma
    mel = np.load(EXAMPLE)[:, :20]
    assert np.array_equal(wavflow.synthesize(mel, model=converted, seed=3).numpy(),
                          wavflow.synthesize(mel, checkpoint=source, seed=3, sigma=0.25).numpy())
    student = tmp_path / "student.pt"
    convert(REPO / "checkpoints" / "student-ljspeech-mini.pt", student)
    before = snapshot(tmp_path)
    code, _, err = run_in_process(convert_cmd.run, [student, tmp_path / "x.pt", "--sigma", "0.3"], capsys,
                                  "wavflow convert")
    assert code == 2 and "no noise scale" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("family", ["wavenet", "student"])
def test_convert_sets_a_default_temperature(family, tmp_path, capsys):
    """--temperature writes a teacher's or student's default sampling temperature into the file (a file written
    before it had one samples at 1): by default the converted model vocodes, whole and streamed, what the source
    does at that temperature; a WaveGlow refuses it in one line, writing nothing."""
    import wavflow
    from wavflow.checkpoint import model_from_payload
    from wavflow.commands import convert as convert_cmd

    source = REPO / "checkpoints" / f"{family}-ljspeech-mini.pt"
    payload = read_checkpoint(source)
    payload["model_config"].pop("infer_temperature", None)
    assert model_from_payload(payload, "old").config.infer_temperature == 1.0
    code, _, err = run_in_process(convert_cmd.run, [source, tmp_path / "t.pt", "--temperature", "0.35"], capsys,
                                  "wavflow convert")
    assert code == 0, err
    converted, original = wavflow.load(tmp_path / "t.pt"), wavflow.load(source)
    assert converted.config.infer_temperature == 0.35 != original.config.infer_temperature
    mel = np.load(EXAMPLE)[:, :6]
    at = wavflow.synthesize(mel, model=converted, seed=3)
    assert torch.equal(at, wavflow.synthesize(mel, model=original, seed=3, temperature=0.35))
    assert not torch.equal(at, wavflow.synthesize(mel, model=original, seed=3))
    streamed = torch.cat(list(wavflow.stream(mel, 0.05, model=converted, seed=3)))
    torch.testing.assert_close(streamed, at, rtol=0, atol=1e-5)
    waveglow = save_tiny_waveglow(tmp_path / "tiny.pt")
    before = snapshot(tmp_path)
    code, _, err = run_in_process(convert_cmd.run, [waveglow, tmp_path / "x.pt", "--temperature", "0.5"], capsys,
                                  "wavflow convert")
    assert code == 2 and "no sampling temperature" in err and len(err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
