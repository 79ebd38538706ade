"""The trainer: learning, bit-for-bit resume, crash safety (SIGKILL mid-save, SIGTERM, SIGINT), torchrun with two
CPU processes, the NaN guard, and one-line errors for bad configurations.

Every run uses a tiny WaveGlow (4 flows, WN 2 x 16) on real LJSpeech clips, one torch thread per process.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import wavflow
from wavflow.checkpoint import read_checkpoint
from wavflow.cli import run_cli
from wavflow.commands.train import run as main
from wavflow.models import build_model
from wavflow.models.waveglow import WaveGlow
from wavflow.train import PROG, Trainer, load_config, seed_everything, train, weights_sha256

from synth_helpers import clip

REPO = Path(__file__).resolve().parents[1]
TINY = {"n_flows": 4, "n_group": 8, "n_early_every": 2, "n_early_size": 2, "wn_layers": 2, "wn_channels": 16,
        "upsample_kernel": 256}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory, ljspeech_root) -> Path:
    """Two short training clips and one held-out clip, as symlinks in an LJSpeech-layout root."""
    root = tmp_path_factory.mktemp("two_clips")
    (root / "wavs").mkdir()
    ids = ["LJ002-0020", "LJ001-0002", "LJ001-0008"]  # 1.54 s, 1.90 s | 1.78 s validation
    for i in ids:
        (root / "wavs" / clip(i).name).symlink_to(clip(i))
    (root / "metadata.csv").write_text("".join(f"{i}|text|text\n" for i in ids))
    return root


def write_config(path: Path, root: Path, **sections) -> Path:
    config = {
        "model": "waveglow",
        "model_config": dict(TINY),
        "data": {"root": str(root), "n_valid": 1, "segment_length": 4096, "batch_size": 2, "num_workers": 0},
        "train": {"lr": 1e-3, "max_steps": 6, "log_every": 1, "valid_every": 0, "valid_max_seconds": 1.0,
                  "ckpt_every": 3, "tensorboard": False, "threads": 1},
    }
    for name, values in sections.items():
        config[name].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wavflow.train", *map(str, args)]


# `python -m wavflow.train` whose checkpoint saves hold for 2 s after the temporary file is complete and before it
# is renamed over the checkpoint (the os.replace of wavflow.fileio.atomic_write): time to SIGKILL a run mid-save.
SLOW_RENAME = """
import os, sys, time
rename = os.replace
def slow_rename(src, dst, *args, **kwargs):
    if str(dst).endswith(".pt"):
        time.sleep(2)
    return rename(src, dst, *args, **kwargs)
os.replace = slow_rename
from wavflow.commands.train import main
main(prog='wavflow train')
"""


@pytest.mark.slow
def test_validation_nll_falls_on_real_speech(two_clips, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", two_clips), [
        "train.max_steps=300", "train.valid_every=100", "train.valid_max_seconds=0", "train.ckpt_every=300",
        "train.log_every=50", "train.tensorboard=true", "train.audio_every=300"])
    trainer = Trainer(config, tmp_path / "out")
    before = trainer.validate()
    assert trainer.fit() == 0
    steps, nlls = zip(*trainer.valid_history, strict=True)
    assert steps == (100, 200, 300)
    assert 0.85 < before < 1.0  # an untrained flow ~ N(0, 1) on quiet speech: ~0.5 ln(2 pi) nats per sample
    assert nlls[-1] < before - 1.0 and max(nlls) < before - 0.5  # held-out clip, whole utterance

    best = read_checkpoint(tmp_path / "out" / "best.pt")
    assert best["valid_nll"] == min(nlls) and "optimizer" not in best
    model = wavflow.load(tmp_path / "out" / "best.pt")
    assert isinstance(model, WaveGlow)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "tb"), size_guidance={"audio": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/steps_per_s", "valid/nll"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("valid/nll")] == [100, 200, 300]
    assert {"valid/real", "valid/generated"} <= set(tags["audio"])


def test_resume_reproduces_the_uninterrupted_run_exactly(two_clips, tmp_path):
    # batch 1 over 2 clips: the checkpoint at step 3 falls mid-epoch; clipping and lr decay are in play.
    path = write_config(tmp_path / "c.yaml", two_clips, data={"batch_size": 1},
                        train={"grad_clip": 0.5, "lr_decay_every": 2, "lr_decay_gamma": 0.5})
    full = train(path, tmp_path / "full")
    part = train(path, tmp_path / "part", overrides=["train.max_steps=3"])
    rest = train(path, tmp_path / "part", resume=True)
    assert len(full.losses) == 6 and len(part.losses) == 3 and len(rest.losses) == 3
    assert part.losses + rest.losses == full.losses  # exact, not approximate
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = read_checkpoint(tmp_path / "part" / "last.pt")
    assert last["step"] == 6 and last["sampler"] == {"epoch": 2, "batches": 2}  # 2 batches per epoch
    assert isinstance(wavflow.load(tmp_path / "part" / "last.pt"), WaveGlow)  # a training checkpoint is a model too


def test_sigkill_mid_save_keeps_the_previous_checkpoint(two_clips, tmp_path):
    path = write_config(tmp_path / "c.yaml", two_clips, train={"max_steps": 4, "ckpt_every": 2})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RENAME, str(path), "--out-dir", str(out)], env=ENV,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while not ((out / "last.pt").exists() and list(out.glob(".last.pt.*.tmp"))):  # inside the 2nd save
            assert proc.poll() is None and time.time() < deadline, "training ended before its second save"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        proc.kill()
    assert list(out.glob(".last.pt.*.tmp"))  # the step-4 save died before its rename ...
    assert read_checkpoint(out / "last.pt")["step"] == 2  # ... so last.pt is the complete step-2 checkpoint
    killed = {r["step"]: r["train/loss"] for r in log_records(out)}
    assert sorted(killed) == [1, 2, 3, 4]

    done = subprocess.run(cli(path, "--out-dir", out, "--resume", "train.max_steps=5"), env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "resumed at step 2" in done.stderr
    assert read_checkpoint(out / "last.pt")["step"] == 5
    assert not list(out.glob(".*.tmp"))  # the dead run's temporary file is cleared
    resumed = [r for r in log_records(out) if "train/loss" in r][4:]  # (the run's closing summary left out)
    assert [r["step"] for r in resumed] == [3, 4, 5]
    assert [r["train/loss"] for r in resumed[:2]] == [killed[3], killed[4]]  # same steps, same losses, bit for bit


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_exits(two_clips, tmp_path, signum, status):
    # SIGINT goes to the whole process group, DataLoader workers included, as Ctrl-C in a terminal does.
    workers = 2 if signum == signal.SIGINT else 0
    path = write_config(tmp_path / "c.yaml", two_clips, data={"num_workers": workers},
                        train={"max_steps": 100000, "ckpt_every": 100000})
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(path, "--out-dir", out), env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ((out / "log.jsonl").exists() and len(log_records(out)) >= 2):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert stderr.count(f"{signal.Signals(signum).name}: finishing step") == 1  # the main process alone acts
    step = read_checkpoint(out / "last.pt")["step"]
    assert step >= 2 and log_records(out)[-1]["step"] == step  # every finished step is in the checkpoint
    assert stderr.strip().splitlines()[-1] == f"{PROG}: stopped at step {step}; saved {out / 'last.pt'}; " \
                                              f"continue with --resume"


def test_torchrun_two_cpu_processes_hold_identical_weights(two_clips, tmp_path):
    path = write_config(tmp_path / "c.yaml", two_clips,
                        data={"batch_size": 1}, train={"max_steps": 3, "valid_every": 3})
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "wavflow.train", str(path), "--out-dir", str(out)],
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ck = read_checkpoint(out / "last.pt")
    assert ck["step"] == 3 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    # Each process hashed its own weights at the save: they agree, and agree with what was saved.
    model = build_model("waveglow", ck["model_config"])
    model.load_state_dict(ck["state_dict"])
    assert ck["rank_weights_sha256"] == [weights_sha256(model)] * 2
    # The processes drew different noise streams and trained on different clips, so only DDP's gradient
    # averaging can have kept them equal; and training did move the weights.
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    seed_everything(1234)
    assert weights_sha256(build_model("waveglow", TINY)) != weights_sha256(model)
    assert math.isfinite(next(r["valid/nll"] for r in log_records(out) if "valid/nll" in r))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(two_clips, tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path / "c.yaml", two_clips, train={"ckpt_every": 2, "progress": False})
    calls = []
    original = WaveGlow.training_loss

    def poisoned(self, audio, mel):
        loss, logs = original(self, audio, mel)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), logs

    monkeypatch.setattr(WaveGlow, "training_loss", poisoned)
    with pytest.raises(SystemExit) as e:
        run_cli(PROG, main, [str(path), "--out-dir", str(tmp_path / "out")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"{PROG}: waveglow")  # the start-up line, then the error
    assert err[1].startswith(f"{PROG}: error: loss is nan at step 3; stopped without saving (last good checkpoint:")
    assert read_checkpoint(tmp_path / "out" / "last.pt")["step"] == 2


def test_config_keys_types_and_overrides(two_clips, tmp_path):
    path = write_config(tmp_path / "c.yaml", two_clips)
    c = load_config(path, ["train.lr=1e-4", "train.betas=[0.8, 0.99]", "model_config.wn_layers=3", "teacher="])
    assert c.train.lr == 1e-4 and c.train.betas == (0.8, 0.99) and c.model_config["wn_layers"] == 3
    assert c.teacher is None and c.data.root == str(two_clips)
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 3e-4"))  # YAML 1.1 reads 3e-4 as a string
    assert load_config(path).train.lr == 3e-4


def test_recipes_load(ljspeech_root):
    conf = REPO / "recipes" / "ljspeech" / "conf"
    paper = load_config(conf / "waveglow.yaml", [f"data.root={ljspeech_root}"])
    assert paper.model == "waveglow" and paper.model_config == {}  # the design.md section 3 defaults
    assert (paper.train.lr, paper.data.batch_size, paper.data.segment_length) == (1e-4, 12, 16000)
    assert paper.model_config.get("sigma", 1.0) == 1.0
    tiny = load_config(conf / "waveglow.tiny.yaml", [f"data.root={ljspeech_root}"])
    n = sum(p.numel() for p in build_model("waveglow", tiny.model_config).parameters())
    assert 4 * n < 25e6  # a shipped checkpoint of it stays under 25 MB


def _bad_cases(tmp: Path, root: Path):
    good = write_config(tmp / "good.yaml", root)
    (tmp / "bad.yaml").write_text("model: [waveglow\ndata: {}\n")
    (tmp / "list.yaml").write_text("- model\n- data\n")
    (tmp / "extra.yaml").write_text(good.read_text() + "optimiser: adam\n")
    (tmp / "afile").write_text("x")
    (tmp / "busy").mkdir()
    (tmp / "busy" / "last.pt").write_bytes(b"not a checkpoint")
    broken = tmp / "broken_root"
    (broken / "wavs").mkdir(parents=True)
    (broken / "metadata.csv").write_text("LJ404-0001|gone|gone\nLJ404-0002|gone|gone\n")
    out = ["--out-dir", str(tmp / "out")]
    return [
        ([str(tmp / "missing.yaml")], "missing.yaml: no such config file"),
        (["bad.yaml", *out], "bad.yaml: not valid YAML at line 2"),
        (["list.yaml", *out], "expected a mapping of keys"),
        (["extra.yaml", *out], "unknown key(s) optimiser"),
        (["good.yaml", "train.lrr=1", *out], "unknown key(s) train.lrr"),
        (["good.yaml", "model_config.n_flow=3", *out], "unknown key(s) model_config.n_flow"),
        (["good.yaml", "optim.lr=1", *out], "unknown key 'optim.lr'"),
        (["good.yaml", "train.max_steps", *out], "not of the form key=value"),
        (["good.yaml", "train.max_steps=ten", *out], "train.max_steps: expected an integer, got 'ten'"),
        (["good.yaml", "data.batch_size=1.5", *out], "data.batch_size: expected an integer, got 1.5"),
        (["good.yaml", "train.tensorboard=maybe", *out], "train.tensorboard: expected true/false"),
        (["good.yaml", "train.precision=fp64", *out], "train.precision: expected fp32 | bf16 | fp16"),
        (["good.yaml", "train.precision=fp16", *out], "fp16 needs a CUDA device"),
        (["good.yaml", "train.lr=-1", *out], "train.lr must be a positive number"),
        (["good.yaml", "model=wavegl0w", *out], "unknown model type 'wavegl0w'"),
        (["good.yaml", "model_config.n_group=3", *out], "invalid WaveGlowConfig"),
        (["good.yaml", 'data.root=""', *out], "data.root is not set"),
        (["good.yaml", "data.root=", *out], "data.root: expected a string, got None"),
        (["good.yaml", f"data.root={tmp / 'nowhere'}", *out], "nowhere: dataset root does not exist"),
        (["good.yaml", f"data.root={broken}", *out], "LJ404-0001.wav: missing"),
        (["good.yaml", "data.batch_size=4", *out], "fewer than data.batch_size=4"),
        (["good.yaml", "--out-dir", str(tmp / "afile" / "run")], "cannot write there"),
        (["good.yaml", "--out-dir", str(tmp / "busy")], "already holds a run; pass --resume"),
        (["good.yaml", "--resume", "--out-dir", str(tmp / "busy")], "not a torch checkpoint"),
        (["good.yaml", "teacher=t.pt", *out], "teacher: is only for a model that is distilled"),
        (["good.yaml", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ]


def test_bad_configurations_exit_2_with_one_line(two_clips, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, message in _bad_cases(tmp_path, two_clips):
        with pytest.raises(SystemExit) as e:
            run_cli(PROG, main, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and message in err, (argv, err)
        assert not (tmp_path / "out").exists(), argv  # nothing written for a refused run


def test_cli_error_has_no_traceback(tmp_path):
    run = subprocess.run(cli(tmp_path / "nope.yaml"), env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr == f"{PROG}: error: {tmp_path / 'nope.yaml'}: no such config file\n"


def test_distillation_freezes_the_teacher_and_records_its_hash(two_clips, tmp_path):
    from wavflow.checkpoint import file_sha256
    from wavflow.errors import WavflowError
    from wavflow.models import config_to_dict
    from wavflow.models.student import StudentConfig
    from wavflow.models.wavenet import WaveNetConfig

    def config(model, model_config, **extra):
        path = write_config(tmp_path / f"{model}.yaml", two_clips, train={"max_steps": 2, "ckpt_every": 2})
        c = yaml.safe_load(path.read_text())
        c.update(model=model, model_config=config_to_dict(model_config), **extra)
        path.write_text(yaml.safe_dump(c))
        return path

    teacher_conf = config("wavenet", WaveNetConfig.tiny())
    train(teacher_conf, tmp_path / "teacher")
    teacher_path = tmp_path / "teacher" / "last.pt"
    student_conf = config("student", StudentConfig.tiny(), teacher=str(teacher_path))
    trainer = train(student_conf, tmp_path / "student")
    assert len(trainer.losses) == 2 and all(math.isfinite(v) for v in trainer.losses)
    ck = read_checkpoint(tmp_path / "student" / "last.pt")
    assert ck["teacher_sha256"] == file_sha256(teacher_path)
    assert not any(k.startswith("teacher") for k in ck["state_dict"])  # the teacher is not saved inside
    saved = read_checkpoint(teacher_path)["state_dict"]
    live = trainer.teacher.state_dict()
    assert all(torch.equal(saved[k], live[k].cpu()) for k in saved)  # frozen: not one bit moved
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training

    # Resuming against another teacher file is refused; so is a student with no teacher at all.
    train(teacher_conf, tmp_path / "teacher", resume=True, overrides=["train.max_steps=3"])
    with pytest.raises(WavflowError, match="was distilled from teacher"):
        train(student_conf, tmp_path / "student", resume=True, overrides=["train.max_steps=3"])
    with pytest.raises(WavflowError, match="set teacher: PATH"):
        train(student_conf, tmp_path / "student2", overrides=["teacher="])


def test_adaptive_threads_log_the_thread_count_and_restore_torch_s(two_clips, tmp_path, monkeypatch):
    import functools

    import wavflow.train.loop as loop
    from wavflow.train.threads import ThreadGovernor

    before = torch.get_num_threads()
    # An idle machine (no busy time but this process's), a window that ends after every step, and no step slow
    # enough to go back: the first step runs on one thread, the rest on two, whatever the steps really take.
    idle = functools.partial(ThreadGovernor, cores=2, period=0.0, slow=float("inf"), gain=float("inf"),
                             busy_seconds=lambda: 0.0, own_seconds=lambda: 0.0)
    monkeypatch.setattr(loop, "ThreadGovernor", idle)
    path = write_config(tmp_path / "c.yaml", two_clips, train={"adaptive_threads": True, "threads": 2})
    trainer = train(path, tmp_path / "run")
    records = log_records(tmp_path / "run")
    assert [r["train/threads"] for r in records if "train/threads" in r] == [1, 2, 2, 2, 2, 2]
    assert records[-1]["run/thread_changes"] == 1
    # Every window carries the process's running totals, which end where the summary does.
    windows = [r for r in records if "train/loss" in r]
    assert [r["run/samples"] for r in windows] == [8192 * k for k in range(1, 7)]
    cpu = [r["run/cpu_seconds"] for r in windows]
    assert cpu == sorted(cpu) and cpu[-1] <= records[-1]["run/cpu_seconds"]
    assert windows[-1]["run/samples"] == records[-1]["run/samples"]
    assert trainer.governor.threads == 2 and torch.get_num_threads() == before
    # Without the switch there is no governor and no thread count in the log.
    plain = train(write_config(tmp_path / "p.yaml", two_clips), tmp_path / "plain")
    assert plain.governor is None and "train/threads" not in log_records(tmp_path / "plain")[0]
