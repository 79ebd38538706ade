"""recipes/ljspeech/cpu_continue.sh, the CPU continuation of the shipped WaveGlow: the whole script on a tiny
checkpoint (grown into a source model, two steps, judged on one short clip, resumed), and its ship rule
(cpu_experiment.py decide: DNSMOS P.808 better beyond the noise of the per-clip paired difference AND pitch better,
or within its target, else nothing is written)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wavflow.checkpoint import file_sha256, load, model_payload, read_checkpoint, save_checkpoint
from wavflow.models import build_model

from synth_helpers import LJSPEECH, REPO, TINY_WAVEGLOW

SCRIPT = REPO / "recipes" / "ljspeech" / "cpu_continue.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# Two optimizer steps of one 2048-sample crop; the grown model's harmonic mean has 4 harmonics.
TRAIN_ARGS = ("model_config.source=true model_config.source_harmonics=4 train.max_steps={steps} data.batch_size=1 "
              "data.segment_length=2048 data.n_valid=2 train.progress=false")
JUDGE_ARGS = "--n-valid 2 --max-clips 1 --max-seconds 0.5 --griffin-lim-iters 0"


def _decide():
    spec = importlib.util.spec_from_file_location("cpu_experiment", REPO / "recipes" / "ljspeech" / "cpu_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decide


def _run(shipped: Path, out: Path, steps: int, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "5", "--shipped", str(shipped), "--out", str(out), "--data-root",
                           str(LJSPEECH), "--threads", "1", "--metrics", "pitch", "--judge-args", JUDGE_ARGS,
                           "--train-args", TRAIN_ARGS.format(steps=steps), *extra],
                          env=ENV, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_continues_grows_resumes_and_judges(tmp_path):
    torch.manual_seed(0)
    shipped = tmp_path / "waveglow.pt"
    save_checkpoint(shipped, model_payload(build_model("waveglow", TINY_WAVEGLOW), 0))
    before = file_sha256(shipped)
    out = tmp_path / "run"
    first = _run(shipped, out, 2, tmp_path, "--install", "--sigma", "0.3")
    assert first.returncode == 0, first.stdout + first.stderr + (out / "train.log").read_text()[-3000:]
    assert "--init" in first.stdout and "stage 3: decide" in first.stdout
    state = read_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["model_config"]["source"] is True
    assert state["model_config"]["source_harmonics"] == 4
    judged = json.loads((out / "judge.json").read_text())
    assert (out / "judge-report" / "index.html").is_file()  # the judgement's report, to listen to
    judged_file = read_checkpoint(out / "judged.pt")  # what would ship: fp16 weights, the sigma asked for
    assert judged_file["model_config"]["infer_sigma"] == 0.3 and "optimizer" not in judged_file
    assert judged_file["state_dict"]["upsample.weight"].dtype == torch.float16
    assert [r["name"] for r in judged["systems"] if r["kind"] == "vocoder"] == ["shipped", "continued"]
    assert all("gpe" in r for r in judged["systems"] if r["kind"] == "vocoder")
    record = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert record["steps"] == 2 and record["samples"] == 2 * 2048 and record["cpu_minutes"] >= 0
    assert record["continued/sigma"] == 0.3 and record["shipped/sigma"] == 0.6  # each file's own default
    # without DNSMOS nothing counts as better: no candidate, the shipped file untouched despite --install
    assert record["better"] is False and not (out / "candidate.pt").exists()
    assert file_sha256(shipped) == before

    settings = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert settings["budget_clock"] == "cpu" and settings["lr"] == 5e-5 and settings["warmup_steps"] == 300
    second = _run(shipped, out, 3, tmp_path, "--clock", "wall")  # resumes the run (its own config), one more step
    assert second.returncode == 0, second.stdout + second.stderr
    assert "--resume" in second.stdout and "train 5 minutes" in second.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["budget_clock"] == "wall"
    assert read_checkpoint(out / "last.pt")["step"] == 3
    assert len((out / "history.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_the_teacher_continues_grown_the_harmonic_source(tmp_path):
    """--model wavenet: the teacher's CPU config grows a plain teacher the source (48 harmonics), trains it on the
    recordings' pitch, and judges it against the file it started from."""
    from wavflow.models.wavenet import WaveNetConfig

    torch.manual_seed(0)
    shipped = tmp_path / "wavenet.pt"
    save_checkpoint(shipped, model_payload(build_model("wavenet", WaveNetConfig.tiny()), 0))
    out = tmp_path / "run"
    run = subprocess.run(["bash", str(SCRIPT), "5", "--model", "wavenet", "--shipped", str(shipped), "--out", str(out),
                          "--data-root", str(LJSPEECH), "--threads", "1", "--metrics", "pitch", "--temperature", "0.5",
                          "--judge-args",
                          JUDGE_ARGS, "--train-args", "train.max_steps=2 data.batch_size=1 data.segment_length=2048 "
                          "data.n_valid=2 train.progress=false"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr + (out / "train.log").read_text()[-3000:]
    state = read_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["model_type"] == "wavenet"
    assert (state["model_config"]["source_harmonics"], state["model_config"]["layers"]) == (48, 8)  # grown, tiny
    settings = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert settings["lr"] == 2e-4 and settings["warmup_steps"] == 300 and settings["grad_clip"] == 1.0
    judged = json.loads((out / "judge.json").read_text())
    assert [r["name"] for r in judged["systems"] if r["kind"] == "vocoder"] == ["shipped", "continued"]
    record = json.loads((out / "history.jsonl").read_text())
    assert record["steps"] == 2 and record["continued/temperature"] == 0.5 and record["shipped/temperature"] == 1.0
    assert read_checkpoint(out / "judged.pt")["model_config"]["infer_temperature"] == 0.5
    # the held-out NLL given the recordings' pitch, of the model with a source only
    assert math.isfinite(record["continued/nll_given_pitch_nats"]) and record["shipped/nll_given_pitch_nats"] is None


@pytest.mark.slow
def test_the_student_is_redistilled_from_a_source_teacher(tmp_path):
    """--model student: the student's CPU config grows a plain student the source, which takes the teacher's pitch
    predictor and amplitudes, distils from --teacher, and is judged against the file it started from."""
    from wavflow.models.student import StudentConfig
    from wavflow.models.wavenet import WaveNetConfig

    torch.manual_seed(0)
    shipped, teacher = tmp_path / "student.pt", tmp_path / "teacher.pt"
    save_checkpoint(shipped, model_payload(build_model("student", StudentConfig.tiny()), 0))
    source = {"source_harmonics": 48, "source_channels": 64}  # the student's CPU config takes the teacher's alike
    save_checkpoint(teacher, model_payload(build_model("wavenet", WaveNetConfig.tiny(**source)), 0))
    out = tmp_path / "run"
    run = subprocess.run(["bash", str(SCRIPT), "5", "--model", "student", "--shipped", str(shipped), "--teacher",
                          teacher.name, "--out", str(out), "--data-root", str(LJSPEECH), "--threads", "1",
                          "--metrics", "pitch", "--temperature", "0.5", "--judge-args", JUDGE_ARGS + " --no-nll",
                          "--train-args", "train.max_steps=2 data.batch_size=1 data.segment_length=4096 "
                          "data.n_valid=2 train.progress=false"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr + (out / "train.log").read_text()[-3000:]
    state = read_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["model_type"] == "student"
    assert state["model_config"]["source_harmonics"] == 48 and len(state["model_config"]["flow_layers"]) == 2
    assert state["teacher_sha256"] == file_sha256(teacher)  # the teacher named, by a path relative to the caller
    grown, taught = load(out / "last.pt", "cpu"), load(teacher, "cpu")
    # the pitch predictor came from the teacher (distillation never trains it)
    assert all(torch.equal(a, b) for a, b in zip(grown.source.state_dict().values(),
                                                 taught.source.state_dict().values(), strict=True))
    record = json.loads((out / "history.jsonl").read_text())
    assert record["steps"] == 2 and record["continued/temperature"] == 0.5 and record["shipped/temperature"] == 1.0


@pytest.mark.parametrize("args,message", [(["--model", "wavernn"],
                                           "--model is waveglow, wavenet or student, not wavernn"),
                                          (["--model", "wavenet", "--sigma", "0.3"], "--sigma is the WaveGlow's"),
                                          (["--model", "student", "--sigma", "0.3"], "--sigma is the WaveGlow's"),
                                          (["--model", "wavenet", "--teacher", "t.pt"], "--teacher is the student's"),
                                          (["--temperature", "0.5"], "--temperature is the teacher's")])
def test_unknown_model_a_teachers_sigma_or_a_waveglows_temperature_exits_2(tmp_path, args, message):
    run = subprocess.run(["bash", str(SCRIPT), "1", "--out", str(tmp_path / "run"), *args], env=ENV, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_shipped_checkpoint_exits_2(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "1", "--shipped", str(tmp_path / "nothing.pt"), "--out",
                          str(tmp_path / "run")], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no checkpoint at" in run.stderr and len(run.stderr.splitlines()) == 1


def test_unknown_clock_exits_2(tmp_path):
    shipped = tmp_path / "waveglow.pt"
    save_checkpoint(shipped, model_payload(build_model("waveglow", TINY_WAVEGLOW), 0))
    run = subprocess.run(["bash", str(SCRIPT), "1", "--shipped", str(shipped), "--out", str(tmp_path / "run"),
                          "--clock", "gpu"], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--clock is cpu or wall, not gpu" in run.stderr
    assert len(run.stderr.splitlines()) == 1 and not (tmp_path / "run" / "train.log").exists()


# Per-clip DNSMOS of three clips (continued, shipped): a steady gain, and a mean gain smaller than its noise.
STEADY = ([3.1, 3.2, 3.3], [3.0, 3.1, 3.2])
NOISY = ([3.3, 2.9, 3.35], [3.1, 3.2, 3.2])


@pytest.mark.parametrize("dnsmos,gpe,ships,per_clip", [
    ((2.9, 2.8), (0.05, None), True, None),     # better on both (means only)
    ((2.7, 2.8), (0.05, None), False, None),    # pitch but a lower DNSMOS
    ((2.9, 2.8), (0.30, 0.20), False, None),    # DNSMOS up, pitch worse
    ((3.2, 3.1), (0.002, 0.001), True, STEADY),  # DNSMOS up by 0.1 on every clip; pitch within its target
    ((3.18, 3.17), (0.0, 0.001), False, NOISY),  # the mean up by 0.01, per clip +0.2, -0.3, +0.15: noise
    ((3.2, 3.1), (0.12, 0.05), False, STEADY)])  # DNSMOS up, pitch past its target
def test_ships_only_when_better_on_dnsmos_and_pitch(tmp_path, dnsmos, gpe, ships, per_clip):
    torch.manual_seed(0)
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(out / "last.pt", model_payload(build_model("waveglow", TINY_WAVEGLOW), 7))
    shipped = tmp_path / "shipped.pt"
    shutil.copyfile(out / "last.pt", shipped)
    before = file_sha256(shipped)
    (out / "log.jsonl").write_text(json.dumps({"step": 7, "run/end": "max_steps", "run/samples": 7 * 2048,
                                             "run/cpu_seconds": 90.0}) + "\n")
    judge = out / "judge.json"
    rows = [{"name": "continued", "kind": "vocoder", "dnsmos_p808": dnsmos[0], "gpe": gpe[0]},
            {"name": "shipped", "kind": "vocoder", "dnsmos_p808": dnsmos[1], "gpe": gpe[1]}]
    if per_clip is not None:
        for row, values in zip(rows, per_clip, strict=True):
            row["per_clip"] = [{"id": f"LJ{i}", "dnsmos_p808": v} for i, v in enumerate(values)]
    judge.write_text(json.dumps({"systems": rows}))
    assert _decide()(out, judge, shipped, True) is ships
    record = json.loads((out / "history.jsonl").read_text())
    if per_clip is not None:  # the paired change and its standard error are recorded
        diffs = [a - b for a, b in zip(*per_clip, strict=True)]
        assert record["dnsmos_p808_change"] == pytest.approx(sum(diffs) / 3)
        assert record["dnsmos_p808_change_se"] == pytest.approx(float(np.std(diffs, ddof=1)) / 3 ** 0.5)
    assert record["better"] is ships and record["steps"] == 7 and record["cpu_minutes"] == 1.5
    assert (out / "candidate.pt").exists() is ships
    if ships:  # installed: the fp16 candidate, which loads as the same model
        assert file_sha256(shipped) == file_sha256(out / "candidate.pt") != before
        weights = read_checkpoint(shipped)["state_dict"]
        assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    else:
        assert file_sha256(shipped) == before


def _window(step: int, steps_per_s: float = 1.0, samples: int | None = None, cpu: float | None = None) -> dict:
    record = {"step": step, "train/loss": -4.0, "train/steps_per_s": steps_per_s,
              "train/samples_per_s": steps_per_s * 1000}
    if samples is not None:
        record.update({"run/samples": samples, "run/cpu_seconds": cpu})
    return record


def _summary(step: int, steps: int, cpu: float) -> dict:
    return {"step": step, "run/end": "max_minutes", "run/steps": steps, "run/samples": steps * 1000,
            "run/cpu_seconds": cpu}


@pytest.mark.parametrize("records, steps, samples, cpu", [
    # two processes that ended with their summaries
    ([_window(10, 1.0, 10_000, 11.0), _summary(10, 10, 12.0), _window(20, 1.0, 10_000, 10.0),
      _summary(20, 10, 10.5)], 20, 20_000, 22.5),
    # killed at step 25 (last save at 20): its running totals count; the next one resumes from 20
    ([_summary(10, 10, 12.0), _window(15, 1.0, 5_000, 6.0), _window(25, 1.0, 15_000, 16.0),
      _window(25, 1.0, 5_000, 7.0), _window(30, 1.0, 10_000, 12.0), _summary(30, 10, 12.5)], 30, 35_000, 40.5),
    # the same in an old log without running totals: each window's steps at its rate (the first not counted)
    ([_summary(10, 10, 12.0), _window(15, 0.5), _window(25, 0.5), _window(25), _window(30),
      _summary(30, 10, 12.5)], 30, 30_000, 44.5),
    # killed, and nothing after it (the run was killed last)
    ([_summary(10, 10, 12.0), _window(15, 1.0, 5_000, 6.0)], 15, 15_000, 18.0),
    # a new process whose first window lies past the killed one's last: its running totals fell
    ([_window(10, 1.0, 10_000, 10.0), _window(15, 1.0, 5_000, 5.0), _summary(15, 5, 5.5)], 15, 15_000, 15.5),
])
def test_run_totals_count_killed_processes(tmp_path, records, steps, samples, cpu):
    spec = importlib.util.spec_from_file_location("cpu_experiment", REPO / "recipes" / "ljspeech" / "cpu_experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert module._run_totals(tmp_path) == (steps, samples, pytest.approx(cpu))
