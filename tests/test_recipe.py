"""recipes/ljspeech/run.sh end to end on LJSpeech-1.1-mini with the tiny configs and a couple of training steps.

The run is kept CPU-sized by the recipe's own options: 2 training steps per model, validation on one clip,
vocoding and evaluation (with its HTML report) of one validation clip cut to 0.3 s, a benchmark of three rows at one
length.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "recipes" / "ljspeech" / "run.sh"
MODELS = ("wavenet", "waveglow", "student")
STAGES = {0: "download", 1: "prepare", 2: "wavenet", 3: "waveglow", 4: "student", 5: "vocode", 6: "evaluate",
          7: "benchmark"}
SECONDS = 0.3
FRAMES = int(SECONDS * 22050) // 256 + 1  # the vocoded mel: the first FRAMES frames of the clip's mel
# Smallest steps the tiny configs allow: one 4096-sample crop per step, validation on one 0.3 s clip.
TRAIN_ARGS = ("data.batch_size=1 data.segment_length=4096 data.num_workers=0 train.valid_clips=1 "
              "train.valid_max_seconds=0.3 train.tensorboard=false train.audio_every=0")


def recipe(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)


def cheap_args(root: Path, exp: Path) -> list[str]:
    return ["--data-root", str(root), "--conf-suffix", "tiny", "--exp-dir", str(exp), "--steps", "2",
            "--device", "cpu", "--max-clips", "1", "--max-seconds", str(SECONDS), "--nll-max-seconds", "0.1",
            "--train-args", TRAIN_ARGS,
            "--bench-args", "--quick --models wavenet_cached,waveglow,student --lengths 0.1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ljspeech_root):
    exp = tmp_path_factory.mktemp("recipe") / "exp"
    proc = recipe(*cheap_args(ljspeech_root, exp))
    return exp, proc


def test_every_stage_runs(run, ljspeech_root):
    exp, proc = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "stage 0 (download): skipped" in out and "holds metadata.csv" in out
    for n in range(1, 8):
        log = exp / "logs" / f"stage{n}.{STAGES[n]}.log"
        assert f"stage {n} ({STAGES[n]}): running; log: {log}" in out
        assert f"stage {n} ({STAGES[n]}): done" in out
        assert log.is_file() and log.stat().st_size > 0

    # prepare: the split is wavflow.data's (the last 20 lines of metadata.csv validate), one mel per clip
    ids = [line.split("|")[0] for line in (ljspeech_root / "metadata.csv").read_text().splitlines() if line.strip()]
    valid = (exp / "data" / "valid.list").read_text().split()
    train = (exp / "data" / "train.list").read_text().split()
    assert [Path(p).stem for p in valid] == ids[-20:] and [Path(p).stem for p in train] == ids[:-20]
    assert sorted(p.stem for p in (exp / "data" / "valid_mel").glob("*.npy")) == sorted(ids[-20:])

    # training wrote checkpoints; the student names the teacher it was distilled from
    import torch

    for model in MODELS:
        assert (exp / model / "last.pt").is_file()
    student = torch.load(exp / "student" / "last.pt", map_location="cpu", weights_only=True)
    teacher = exp / "wavenet" / ("best.pt" if (exp / "wavenet" / "best.pt").exists() else "last.pt")
    from wavflow.checkpoint import file_sha256

    assert student["teacher_sha256"] == file_sha256(teacher)
    assert student["step"] == 2

    # vocode: one clip, cut to FRAMES frames, by each model: exactly FRAMES * 256 samples
    for model in MODELS:
        wavs = sorted((exp / "vocoded" / model).glob("*.wav"))
        assert [w.stem for w in wavs] == [ids[-20]]
        info = sf.info(str(wavs[0]))
        assert info.frames == FRAMES * 256 and info.samplerate == 22050

    # evaluate: the two reference rows then the three models, named
    r = json.loads((exp / "eval" / "results.json").read_text())
    assert [s["name"] for s in r["systems"]] == ["real", "griffin-lim-60", *MODELS]
    assert [c["id"] for c in r["clips"]] == [ids[-20]]
    for row in r["systems"][2:]:
        assert row["nll_nats"] is not None and row["logmel_l1"] > 0
    assert (exp / "eval" / "spectrograms.png").read_bytes()[:4] == b"\x89PNG"
    table = (exp / "eval" / "results.md").read_text()
    assert all(f"| {m} |" in table for m in MODELS)
    # the HTML report: a player per system of the one clip (the two reference rows and the three models), every
    # file it refers to beside it
    index = exp / "eval" / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    players = re.findall(r'<audio [^>]*src="([^"]+)"', page)
    assert len(players) == 2 + len(MODELS)
    for url in players + re.findall(r'<img [^>]*src="([^"]+)"', page):
        assert (index.parent / unquote(url)).is_file(), url
    assert all(f"<td>{m}</td>" in page for m in ("real", "griffin-lim-60", *MODELS))

    # benchmark
    bench = json.loads((exp / "bench" / "bench.json").read_text())
    assert bench
    assert (exp / "bench" / "bench.png").is_file()
    for d in ("data", *MODELS, "vocoded", "eval", "bench"):
        assert (exp / d / ".done").is_file(), d


def test_second_run_skips_every_stage(run, ljspeech_root):
    exp, first = run
    assert first.returncode == 0
    before = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and "logs" not in p.parts}
    proc = recipe(*cheap_args(ljspeech_root, exp), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for n in range(1, 8):
        assert f"stage {n} ({STAGES[n]}): skipped" in proc.stdout, proc.stdout
    after = {p: p.stat().st_mtime_ns for p in exp.rglob("*") if p.is_file() and "logs" not in p.parts}
    assert after == before


def test_force_reruns_a_stage_and_a_failure_names_its_log(run, ljspeech_root):
    exp, first = run
    assert first.returncode == 0
    # --force redoes a finished stage; --n-gpus 2 trains it with two processes under torchrun (gloo on CPU)
    marker = exp / "waveglow" / ".done"
    old = marker.stat().st_mtime_ns
    proc = recipe("--data-root", str(ljspeech_root), "--conf-suffix", "tiny", "--exp-dir", str(exp), "--steps", "2",
                  "--device", "cpu", "--stage", "3", "--stop-stage", "3", "--force", "--n-gpus", "2",
                  "--train-args", TRAIN_ARGS,
                  timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stage 3 (waveglow): done" in proc.stdout and marker.stat().st_mtime_ns > old
    import torch

    state = torch.load(exp / "waveglow" / "last.pt", map_location="cpu", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 2

    # the retrained WaveGlow makes the evaluation out of date: it is redone without --force
    proc = recipe(*cheap_args(ljspeech_root, exp), "--stage", "6", "--stop-stage", "6", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed since it was made: redoing it" in proc.stdout and "stage 6 (evaluate): done" in proc.stdout
    r = json.loads((exp / "eval" / "results.json").read_text())
    from wavflow.checkpoint import file_sha256

    glow = exp / "waveglow" / ("best.pt" if (exp / "waveglow" / "best.pt").exists() else "last.pt")
    assert r["systems"][3]["name"] == "waveglow" and r["systems"][3]["sha256"] == file_sha256(glow)

    # A training stage that fails stops the recipe with the trainer's status, names its log, shows its last
    # lines, and leaves no completion marker behind (the next run retries it).
    proc = recipe("--data-root", str(ljspeech_root), "--conf-suffix", "tiny", "--exp-dir", str(exp),
                  "--stage", "3", "--stop-stage", "3", "--force", "--train-args", "train.lr=fast", timeout=300)
    log = exp / "logs" / "stage3.waveglow.log"
    assert proc.returncode == 2
    assert "stage 3 (waveglow): FAILED (exit 2)" in proc.stderr and str(log) in proc.stderr
    assert "train.lr" in proc.stderr and "train.lr" in log.read_text()
    assert not (exp / "waveglow" / ".done").exists()


@pytest.mark.parametrize("args, needle", [
    (["--n-gpus", "0"], "--n-gpus"),
    (["--stage", "5", "--stop-stage", "2"], "--stage 5 is after --stop-stage 2"),
    (["--stage", "x"], "stage numbers"),
    (["--steps", "-3"], "--steps"),
    (["--conf-suffix", "nope"], "nope.yaml"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--max-seconds", "abc"], "--max-seconds"),
    (["--mel-preset", "kaldi"], "--mel-preset 'kaldi': one of tacotron2, hifigan, espnet, parallel_wavegan"),
    (["--mel-stats", "nope.npy"], "--mel-stats nope.npy: no such file"),
])
def test_bad_options_one_line_exit_2(args, needle, tmp_path, ljspeech_root):
    proc = recipe("--data-root", str(ljspeech_root), "--exp-dir", str(tmp_path / "exp"), *args, timeout=30)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run.sh: error:") and needle in err, err
    assert not list((tmp_path).rglob("*.log"))


def test_mel_preset_trains_on_that_convention_at_another_rate(ljspeech_root, tmp_path):
    exp = tmp_path / "exp"
    rate = "mel.sample_rate=16000 mel.hop_length=200 mel.n_fft=1024 mel.win_length=800"
    proc = recipe("--data-root", str(ljspeech_root), "--conf-suffix", "tiny", "--exp-dir", str(exp), "--steps", "1",
                  "--device", "cpu", "--stage", "2", "--stop-stage", "2", "--mel-preset", "espnet",
                  "--train-args", f"{TRAIN_ARGS} {rate}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import torch

    mel = torch.load(exp / "wavenet" / "last.pt", map_location="cpu", weights_only=True)["mel_config"]
    assert (mel["log_base"], mel["fmin"], mel["fmax"]) == ("10", 80.0, 7600.0)  # the preset's
    assert (mel["sample_rate"], mel["hop_length"], mel["win_length"]) == (16000, 200, 800)
    assert "resampled to mel.sample_rate=16000 Hz" in (exp / "logs" / "stage2.wavenet.log").read_text()


def test_data_root_without_metadata(tmp_path):
    proc = recipe("--data-root", str(tmp_path), "--exp-dir", str(tmp_path / "exp"), timeout=30)
    assert proc.returncode == 2 and "no metadata.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
