"""recipes/ljspeech/gpu_continue.sh, the prepared GPU run, on the CPU: the whole script in --smoke mode on tiny
checkpoints (under a minute), its plan (--dry-run), its bookkeeping (budget shares, keep-or-replace, results
files) and the data packing that makes a GPU call's 64 MiB hold the data set."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import wavflow
from wavflow.checkpoint import file_sha256, model_payload, read_checkpoint, save_checkpoint
from wavflow.models import build_model
from wavflow.models.student import StudentConfig
from wavflow.models.wavenet import WaveNetConfig

from synth_helpers import LJSPEECH, REPO, TINY_WAVEGLOW

SCRIPT = REPO / "recipes" / "ljspeech" / "gpu_continue.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / "ljspeech" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _module("gpu_continue")


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """Shipped-like tiny checkpoints (as the trainer would leave them, untrained) and the shipped configs/."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    # like the shipped teacher, one with a source: the student's stage grows the student one alike
    teacher = build_model("wavenet", WaveNetConfig.tiny(source_harmonics=4, source_channels=8))
    save_checkpoint(d / "wavenet-ljspeech-mini.pt", model_payload(teacher, 0))
    # like the shipped WaveGlow, one with a source (pitch predictor and harmonic mean): a continuation needs the
    # clips' pitch tracks
    waveglow = build_model("waveglow", dataclasses.replace(TINY_WAVEGLOW, source=True, source_harmonics=4))
    save_checkpoint(d / "waveglow-ljspeech-mini.pt", model_payload(waveglow, 0))
    student = build_model("student", StudentConfig.tiny())
    save_checkpoint(d / "student-ljspeech-mini.pt",
                    model_payload(student, 0, teacher_sha256=file_sha256(d / "wavenet-ljspeech-mini.pt")))
    shutil.copytree(REPO / "checkpoints" / "configs", d / "configs")
    return d


def test_smoke_run_on_the_cpu_keeps_only_what_improved(tiny_checkpoints, tmp_path):
    before = {p.name: file_sha256(p) for p in tiny_checkpoints.glob("*.pt")}
    out = tmp_path / "out"
    started = time.time()
    run = subprocess.run(["bash", str(SCRIPT), "0.9", "--smoke", "--data-root", str(LJSPEECH), "--out", str(out),
                          "--checkpoints-dir", str(tiny_checkpoints), "--models", "waveglow,student",
                          "--shares", "0.45,0.55", "--throughput-seconds", "0"],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    wall = time.time() - started
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert wall < 0.9 * 60 + 5, wall  # the script keeps to its budget (plus its closing seconds)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in results] == ["waveglow", "student"]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    for r in results:
        # Each stage trained within its share (how many steps a loaded CPU gives the student's is not asserted).
        assert r["end"] == "max_minutes" and r["samples"] == r["steps"] * 2 * 4096, (r, run.stdout)
        shipped = out / f"{r['model']}-ljspeech-mini.pt"
        assert shipped.exists() == r["replaced"]  # a checkpoint comes back only when it improved
        if r.get("new"):
            new, old = r["new"], r["old"]  # scored given the recordings' pitch where evaluate gives that
            nll = "nll_nats" if None in (new["nll_given_pitch_nats"], old["nll_given_pitch_nats"]) else \
                "nll_given_pitch_nats"
            improved = (new[nll] < old[nll]
                        and new["logmel_l1"] < old["logmel_l1"]
                        and (None in (new["gpe"], old["gpe"]) or new["gpe"] <= old["gpe"]))  # None: nothing voiced
            assert r["replaced"] == improved, r
            assert r["griffin_lim"] is None or r["model"] == "waveglow"  # Griffin-Lim once, in the first evaluation
        if r["replaced"]:
            ck = read_checkpoint(shipped)
            assert ck["model_config"]["source_harmonics"] == 4  # the WaveGlow's own; the student's the teacher's
            assert ck["weights_dtype"] == "fp16" and ck["init_from"]["path"].endswith(f"{r['model']}-ljspeech-mini.pt")
            model = wavflow.load(shipped)
            assert all(p.dtype == torch.float32 for p in model.parameters())
    assert results[0]["steps"] >= 1 and results[0]["new"] is not None  # WaveGlow trained and was evaluated
    student = read_checkpoint(out / "student-ljspeech-mini.pt") if results[1]["replaced"] else None
    if student is not None:  # distilled from the teacher that ships (here the unchanged one)
        assert student["teacher_sha256"] == before["wavenet-ljspeech-mini.pt"]
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        student_config = yaml.safe_load(tar.extractfile("student/config.yaml").read())
    assert student_config["model_config"]["source_harmonics"] == 4  # grown the teacher's source to distil from it
    assert {"waveglow/log.jsonl", "waveglow/config.yaml", "train-waveglow.log", "train-student.log"} <= set(names)
    assert not any(n.endswith(".pt") for n in names)
    assert (out / "results.md").read_text().count("| gpu-") == 2
    assert {p.name: file_sha256(p) for p in tiny_checkpoints.glob("*.pt")} == before  # nothing installed


def test_dry_run_plans_within_the_budget_and_bad_arguments_exit_2(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "9", "--dry-run"], env=ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    budgets = {line.split(":")[0].strip(): float(line.split("--max-minutes")[1].split()[0])
               for line in run.stdout.splitlines() if "--max-minutes" in line}
    assert set(budgets) == {"waveglow", "wavenet", "student"}
    assert budgets["waveglow"] == pytest.approx(2 * budgets["wavenet"], rel=0.05)
    assert sum(budgets.values()) * 60 + 15 + 60 + 45 + 45 + 60 + 10 <= 9 * 60 + 1  # every reserve fits in 9 min
    for args, message in [(["11"], "MINUTES must be in (0, 10]"), (["x"], "MINUTES must be a positive number"),
                          ([], "usage: gpu_continue.sh MINUTES"), (["5", "--models", "hifigan"], "unknown model"),
                          (["5", "--shares", "1,2"], "one share per model"),
                          (["5", "--data-root", str(tmp_path)], "no metadata.csv")]:
        run = subprocess.run(["bash", str(SCRIPT), *args, "--out", str(tmp_path / "o")], env=ENV, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, (args, run.stderr)
        assert not (tmp_path / "o").exists(), args  # refused before anything was written


def _eval_json(path: Path, old: tuple[float, float], new: tuple[float, float]) -> Path:
    def row(name, kind, nll, l1):
        return {"name": name, "kind": kind, "nll_nats": nll, "logmel_l1": l1, "mrstft": 2.0, "step": 10}
    report = {"clips": [{"id": "a", "seconds": 1.0}], "settings": {},
              "systems": [row("real", "reference", None, 0.0), row("griffin-lim-60", "griffin-lim", None, 0.11),
                          row("shipped", "vocoder", *old), row("continued", "vocoder", *new)]}
    path.write_text(json.dumps(report))
    return path


@pytest.mark.parametrize("new, size, expected, reason", [
    ((-4.2, 0.9), 1000, "replace", "improved on nll_nats, logmel_l1"),
    ((-4.2, 1.1), 1000, "keep", "logmel_l1 did not improve"),
    ((-4.0, 0.9), 1000, "keep", "nll_nats did not improve"),
    ((-4.2, 0.9), 17 * 2**20, "keep", "over the 16 MiB"),
])
def test_a_model_is_replaced_only_when_nll_and_log_mel_l1_both_improve(tmp_path, capsys, new, size, expected, reason):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    (train_dir / "log.jsonl").write_text(json.dumps({"step": 0, "valid/nll": -4.1}) + "\n" + json.dumps(
        {"step": 50, "run/end": "max_minutes", "run/steps": 50, "run/samples": 50 * 64 * 16000,
         "run/init_from": {"steps_before": 3500}}) + "\n")
    candidate = tmp_path / "c.pt"
    candidate.write_bytes(b"\0" * size)
    args = ["record", "--model", "waveglow", "--train-dir", str(train_dir), "--out", str(tmp_path), "--run", "r1",
            "--eval", str(_eval_json(tmp_path / "e.json", (-4.1, 1.0), new)), "--candidate", str(candidate)]
    capsys.readouterr()
    assert helper.main(args) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == expected and reason in printed.err
    record = json.loads((tmp_path / "results.jsonl").read_text())
    assert record["steps_total"] == 3550 and record["steps_total_judged"] == 3510
    assert record["griffin_lim"]["logmel_l1"] == 0.11 and record["replaced"] == (expected == "replace")
    md = (tmp_path / "results.md").read_text()
    assert "| r1 | waveglow | 50 / 3,550 |" in md and "-4.1000 -> " in md and "Griffin-Lim" in md


@pytest.mark.parametrize("nll_given_pitch, gpe, expected, reason", [
    (-4.3, 0.05, "replace", "improved on nll_given_pitch_nats, logmel_l1, gpe"),
    (-4.1, 0.05, "keep", "nll_given_pitch_nats did not improve"),  # the free-running NLL improved, this did not
    (-4.3, 0.20, "keep", "gpe did not improve"),
])
def test_a_source_model_is_judged_on_its_nll_given_pitch_and_its_pitch(tmp_path, capsys, nll_given_pitch, gpe,
                                                                       expected, reason):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    (train_dir / "log.jsonl").write_text(json.dumps({"step": 50, "run/steps": 50}) + "\n")
    report = json.loads(_eval_json(tmp_path / "e.json", (-4.1, 1.0), (-4.2, 0.9)).read_text())
    for row, (given, error) in zip(report["systems"][2:], [(-4.2, 0.10), (nll_given_pitch, gpe)], strict=True):
        row.update(nll_given_pitch_nats=given, gpe=error)
    (tmp_path / "e.json").write_text(json.dumps(report))
    candidate = tmp_path / "c.pt"
    candidate.write_bytes(b"\0")
    capsys.readouterr()
    assert helper.main(["record", "--model", "waveglow", "--train-dir", str(train_dir), "--out", str(tmp_path),
                        "--run", "r1", "--eval", str(tmp_path / "e.json"), "--candidate", str(candidate)]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == expected and reason in printed.err


def test_source_of_names_the_teachers_source_for_the_student(tiny_checkpoints, tmp_path, capsys):
    assert helper.main(["source-of", str(tiny_checkpoints / "wavenet-ljspeech-mini.pt")]) == 0
    assert capsys.readouterr().out.split() == ["model_config.source_harmonics=4", "model_config.source_channels=8"]
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, model_payload(build_model("wavenet", WaveNetConfig.tiny()), 0))
    assert helper.main(["source-of", str(plain)]) == 0 and capsys.readouterr().out == ""


def test_budget_shares_flow_to_later_stages(capsys):
    def budget(elapsed, stage):
        helper.main(["budget", "--total", "540", "--elapsed", str(elapsed), "--stage", stage, "--models",
                     "waveglow,wavenet,student", "--shares", "0.5,0.25,0.25", "--eval-reserve",
                     "waveglow=60,wavenet=45,student=45", "--throughput", "60", "--closing", "10"])
        return float(capsys.readouterr().out)
    assert budget(15, "waveglow") * 60 == pytest.approx((540 - 15 - 10 - 60 - 150) * 0.5, abs=0.01)
    # WaveGlow ended a minute early: the teacher's and the student's shares grow by half a minute each.
    late = budget(15 + 60 * budget(15, "waveglow") + 60, "wavenet")
    early = budget(15 + 60 * (budget(15, "waveglow") - 1) + 60, "wavenet")
    assert early - late == pytest.approx(0.5, abs=1e-3)
    assert budget(530, "student") == 0  # nothing left: the stage is skipped, not started


def test_pack_gpu_data_fits_the_call_and_keeps_every_validation_clip(tmp_path):
    pack = _module("pack_gpu_data")
    src = tmp_path / "src"
    (src / "wavs").mkdir(parents=True)
    ids = ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004", "LJ001-0005", "LJ001-0006"]
    for i in ids[:-2]:  # as WAV, as the mini set ships them; the last two are not in the repository's fixture
        audio, sr = sf.read(str(LJSPEECH / "wavs" / f"{i}.flac"), dtype="int16")
        sf.write(str(src / "wavs" / f"{i}.wav"), audio, sr, subtype="PCM_16")
    for i in ids[-2:]:
        audio, sr = sf.read(str(LJSPEECH / "wavs" / "LJ001-0007.flac"), dtype="int16")
        sf.write(str(src / "wavs" / f"{i}.wav"), np.roll(audio, 1000 * int(i[-1])), sr, subtype="PCM_16")
    (src / "metadata.csv").write_text("".join(f"{i}|t {i}|t {i}\n" for i in ids))
    # A fixture stand-in holding the first two clips: they are reused, not packed.
    reuse = tmp_path / "reuse"
    (reuse / "wavs").mkdir(parents=True)
    for i in ids[:2]:
        (reuse / "wavs" / f"{i}.flac").symlink_to(LJSPEECH / "wavs" / f"{i}.flac")
    (reuse / "metadata.csv").write_text("".join(f"{i}|x|x\n" for i in ids[:2]))
    def flac(i):
        return len(pack.flac_bytes(*sf.read(str(src / "wavs" / f"{i}.wav"), dtype="int16")))

    # Room for the two validation clips and LJ001-0003, not for LJ001-0004 as well (20 kB to spare).
    budget = flac(ids[4]) + flac(ids[5]) + flac(ids[2]) + 20_000
    assert flac(ids[3]) > 40_000
    limit = (pack.travelling_bytes(REPO, []) + budget) / 2**20 + 1.0
    out = tmp_path / "packed"
    assert pack.main([str(src), "--out", str(out), "--n-valid", "2", "--reuse", str(reuse), "--wheels",
                      str(tmp_path / "none"), "--limit-mib", f"{limit:.6f}", "--margin-mib", "1"]) == 0
    lines = (out / "metadata.csv").read_text().splitlines()
    kept = [line.split("|")[0] for line in lines]
    assert kept[-2:] == ids[-2:] and kept[:2] == ids[:2]  # validation last, as wavflow.data splits; reused first
    assert kept == ids[:3] + ids[4:]  # the budget left LJ001-0004 out
    assert (out / "reuse.txt").read_text().splitlines() == [os.path.relpath(reuse, REPO), *ids[:2]]
    packed = sorted(p.stem for p in (out / "wavs").iterdir())
    assert packed == sorted(kept[2:])  # the reused clips are not packed
    for i in packed:  # lossless: the FLAC holds the very samples
        a, _ = sf.read(str(out / "wavs" / f"{i}.flac"), dtype="int16")
        b, _ = sf.read(str(src / "wavs" / f"{i}.wav"), dtype="int16")
        assert np.array_equal(a, b)
    assert sum(p.stat().st_size for p in (out / "wavs").iterdir()) <= budget
