"""Continuing and budgeting training runs: `--init CHECKPOINT` (weights and architecture from a checkpoint, a fresh
optimizer at step 0, contradictions refused), `--max-minutes` (a wall-clock budget that ends in a validation and
saves), and the device-resident data path (the same crops, mels and losses as the DataLoader path).

Tiny WaveGlows (4 flows, WN 2 x 16) on the fixture's real LJSpeech clips, one torch thread.
"""
from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

import wavflow
from wavflow.checkpoint import file_sha256, read_checkpoint
from wavflow.cli import run_cli
from wavflow.commands.train import run as main
from wavflow.data import CropSampler, DeviceCrops, LJSpeech
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.models import config_to_dict
from wavflow.train import PROG, Trainer, load_config, train

from synth_helpers import clip
from test_train import ENV, cli, log_records, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips3(tmp_path_factory) -> Path:
    """Two training clips (1.54 s, 1.90 s) and one held-out clip (1.78 s), as symlinks in an LJSpeech root."""
    root = tmp_path_factory.mktemp("clips3")
    (root / "wavs").mkdir()
    ids = ["LJ002-0020", "LJ001-0002", "LJ001-0008"]
    for i in ids:
        (root / "wavs" / clip(i).name).symlink_to(clip(i))
    (root / "metadata.csv").write_text("".join(f"{i}|text|text\n" for i in ids))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clips3) -> Path:
    """A tiny WaveGlow run of 4 steps with a validation at step 4: its last.pt and best.pt (bf16 weights)."""
    tmp = tmp_path_factory.mktemp("trained")
    path = write_config(tmp / "c.yaml", clips3, train={"max_steps": 4, "ckpt_every": 4, "valid_every": 4,
                                                         "best_dtype": "bf16"})
    train(path, tmp / "run")
    return tmp / "run"


def _bare_config(tmp: Path, root: Path, **model_config) -> Path:
    """A config with no model_config (or only the given keys): the architecture must come from --init."""
    path = write_config(tmp / "bare.yaml", root)
    c = yaml.safe_load(path.read_text())
    c["model_config"] = model_config
    path.write_text(yaml.safe_dump(c))
    return path


# ---------------------------------------------------------------------------------------------- device-resident

def test_device_crops_equal_the_dataloader_crops_and_mels(ljspeech_root):
    # 50,000-sample crops: longer than LJ001-0008 and LJ001-0002 (39,325 and 41,885 samples), zero-padded.
    data = LJSpeech(ljspeech_root, "train", n_valid=2, segment_length=50000)
    resident = DeviceCrops(data, "cpu")
    assert resident.audio.dtype == torch.int16 and resident.audio.numel() == sum(resident.lengths)
    sampler = CropSampler(data, seed=7)
    sampler.set_state(epoch=3, start=4)  # mid-epoch, as a resumed run starts
    loader = torch.utils.data.DataLoader(data, batch_size=3, sampler=sampler, drop_last=True, num_workers=0)
    loaded = list(loader)
    cut = list(resident.batches(sampler, 3))
    assert len(loaded) == len(cut) == (len(data) - 4) // 3
    padded = 0
    for a, b in zip(loaded, cut, strict=True):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
        padded += int((b[:, -8000:] == 0).all(dim=1).sum())
        assert torch.equal(mel_spectrogram(a, data.mel_config), mel_spectrogram(b, data.mel_config))
    assert padded >= 1  # a short clip came up and was padded the same way on both paths
    other = CropSampler(data, seed=8)
    assert not torch.equal(next(iter(resident.batches(other, 3))), cut[0])  # the seed decides the crops


def test_device_crops_keep_float32_for_audio_that_is_not_16_bit(clips3):
    # Resampled to 16 kHz the clips are no longer 16-bit PCM: held as float32, the crops still equal the loader's.
    data = LJSpeech(clips3, "train", n_valid=1, segment_length=8000, mel_config=MelConfig(sample_rate=16000))
    resident = DeviceCrops(data, "cpu")
    assert resident.audio.dtype == torch.float32
    sampler = CropSampler(data, seed=3)
    loaded = list(torch.utils.data.DataLoader(data, batch_size=1, sampler=sampler, drop_last=True))
    assert all(torch.equal(a, b) for a, b in zip(loaded, resident.batches(sampler, 1), strict=True))


def test_device_resident_training_gives_the_same_losses_and_weights(clips3, tmp_path):
    # batch 1 over 2 clips: two epochs in 4 steps, the second crossing an epoch boundary on both paths.
    path = write_config(tmp_path / "c.yaml", clips3, data={"batch_size": 1}, train={"max_steps": 4, "ckpt_every": 2})
    loader = train(path, tmp_path / "loader")
    resident = train(path, tmp_path / "resident", overrides=["data.device_resident=true"])
    assert resident.device_crops is not None and loader.device_crops is None
    assert len(loader.losses) == 4 and resident.losses == loader.losses  # exact
    a, b = loader.model.state_dict(), resident.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and a resumed device-resident run continues on the same batches as the uninterrupted one.
    part = train(path, tmp_path / "part", overrides=["data.device_resident=true", "train.max_steps=3"])
    rest = train(path, tmp_path / "part", resume=True, overrides=["data.device_resident=true"])
    assert part.losses + rest.losses == loader.losses
    record = [r for r in log_records(tmp_path / "resident") if "train/loss" in r][-1]
    assert record["train/samples_per_s"] > 0
    summary = log_records(tmp_path / "resident")[-1]
    assert summary["run/end"] == "max_steps" and summary["run/steps"] == 4 and summary["run/samples"] == 4 * 4096
    assert summary["run/samples_per_s"] > 0


# ---------------------------------------------------------------------------------------------------- --init

def test_init_starts_from_the_weights_with_a_fresh_optimizer_at_step_0(trained, clips3, tmp_path):
    source = trained / "last.pt"
    ck = read_checkpoint(source)
    path = _bare_config(tmp_path, clips3, wn_layers=2)  # one key given, equal to the checkpoint's; others left out
    config = load_config(path, ["train.max_steps=2", "train.ckpt_every=2", "train.valid_every=2"])
    trainer = Trainer(config, tmp_path / "out", init=source)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], ck["state_dict"][k]) for k in state)  # the checkpoint's weights, exactly
    assert trainer.state.step == 0 and trainer.state.optimizer.state_dict()["state"] == {}  # a fresh optimizer
    assert trainer.config.model_config == ck["model_config"]  # the architecture, every key, from the checkpoint
    assert trainer.fit() == 0
    steps = [step for step, _ in trainer.valid_history]
    assert steps == [0, 2]  # the starting weights are validated first: the NLL best.pt has to beat
    last = read_checkpoint(tmp_path / "out" / "last.pt")
    assert last["step"] == 2
    assert last["init_from"] == {"path": str(source), "sha256": file_sha256(source), "model_type": "waveglow",
                                 "step": 4, "steps_before": 4}
    resolved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert resolved["model_config"] == {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in ck["model_config"].items()}
    start_nll, end_nll = trainer.valid_history[0][1], trainer.valid_history[1][1]
    assert (tmp_path / "out" / "best.pt").exists() == (end_nll < start_nll)

    # A chain: a run started from this one counts the steps behind its source weights (4 + 2).
    again = Trainer(load_config(path, ["train.max_steps=1"]), tmp_path / "again", init=tmp_path / "out" / "last.pt")
    assert again.state.init_from["steps_before"] == 6 and again.state.init_from["step"] == 2


def test_init_from_a_half_precision_best_and_from_an_nvidia_file(trained, clips3, tmp_path):
    best = read_checkpoint(trained / "best.pt")
    assert best["weights_dtype"] == "bf16"
    path = _bare_config(tmp_path, clips3)
    trainer = train(path, tmp_path / "from_best", init=trained / "best.pt", overrides=["train.max_steps=1"])
    assert trainer.losses and math.isfinite(trainer.losses[0])

    from test_nvidia import make_nvidia_model, save_train_py_style

    nvidia = tmp_path / "waveglow_nvidia.pt"
    save_train_py_style(nvidia, make_nvidia_model(fused=True, seed=1))
    expected = wavflow.load(nvidia).state_dict()
    trainer = Trainer(load_config(path, ["train.max_steps=1"]), tmp_path / "from_nvidia", init=nvidia)
    assert trainer.mel_config.n_mels == 20  # the file's own mel band count, not the config's default
    assert all(torch.equal(trainer.model.state_dict()[k], expected[k]) for k in expected)
    assert trainer.fit() == 0
    last = read_checkpoint(tmp_path / "from_nvidia" / "last.pt")
    assert last["mel_config"]["n_mels"] == 20 and last["init_from"]["steps_before"] == 580000


def test_a_student_is_redistilled_from_a_newer_teacher(clips3, tmp_path):
    from wavflow.models.student import StudentConfig
    from wavflow.models.wavenet import WaveNetConfig

    def config(name, model, model_config, **extra):
        path = write_config(tmp_path / f"{name}.yaml", clips3, train={"max_steps": 1, "ckpt_every": 1})
        c = yaml.safe_load(path.read_text())
        c.update(model=model, model_config=config_to_dict(model_config), **extra)
        path.write_text(yaml.safe_dump(c))
        return path

    teacher = config("teacher", "wavenet", WaveNetConfig.tiny())
    train(teacher, tmp_path / "t_old")
    train(teacher, tmp_path / "t_new", overrides=["train.max_steps=2", "train.seed=5"])
    old, new = tmp_path / "t_old" / "last.pt", tmp_path / "t_new" / "last.pt"
    student = config("student", "student", StudentConfig.tiny(), teacher=str(old))
    train(student, tmp_path / "s_old")
    redistilled = train(student, tmp_path / "s_new", init=tmp_path / "s_old" / "last.pt",
                        overrides=[f"teacher={new}"])
    assert len(redistilled.losses) == 1
    ck = read_checkpoint(tmp_path / "s_new" / "last.pt")
    assert ck["teacher_sha256"] == file_sha256(new) != file_sha256(old)
    assert ck["init_from"]["path"] == str(tmp_path / "s_old" / "last.pt")


def _refused(tmp: Path, root: Path, source: Path):
    bare = _bare_config(tmp, root)
    out = ["--out-dir", str(tmp / "out")]
    return [
        ([bare, "--init", source, "model=wavenet", *out], "holds a waveglow, the config trains a wavenet"),
        ([bare, "--init", source, "model_config.wn_channels=32", *out],
         "contradicts the checkpoint's in wn_channels=32 (checkpoint: 16)"),
        ([bare, "--init", source, "model_config.infer_sigma=0.5", *out], "infer_sigma=0.5 (checkpoint: 0.6)"),
        ([bare, "--init", source, "mel.n_mels=64", *out], "mel settings contradict the checkpoint's in n_mels=64"),
        ([bare, "--init", source, "--resume", *out], "--init starts a new run"),
        ([bare, "--init", tmp / "missing.pt", *out], "missing.pt: no such checkpoint file"),
        ([bare, "--init", bare, *out], "not a torch checkpoint"),
        ([bare, "--max-minutes", "0", *out], "invalid --max-minutes value: '0'"),
        ([bare, "--max-minutes", "nan", *out], "invalid --max-minutes value: 'nan'"),
        ([bare, "train.max_minutes=-1", *out], "train.max_minutes must not be negative"),
        ([bare, "train.best_dtype=fp8", *out], "train.best_dtype: expected fp32 | fp16 | bf16"),
        ([bare, "train.compile_mode=fast", *out], "train.compile_mode: expected default | reduce-overhead"),
    ]


def test_contradictions_and_bad_budgets_exit_2_with_one_line_and_write_nothing(trained, clips3, tmp_path, capsys):
    for argv, message in _refused(tmp_path, clips3, trained / "last.pt"):
        with pytest.raises(SystemExit) as e:
            run_cli(PROG, main, [str(a) for a in argv])
        err = capsys.readouterr().err
        assert e.value.code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and message in err, (argv, err)
        assert not (tmp_path / "out").exists(), argv


# ----------------------------------------------------------------------------------------------- --max-minutes

def test_max_minutes_ends_the_run_with_a_validation_and_saves_inside_the_budget(clips3, tmp_path):
    budget = 0.3  # 18 s from process start: interpreter and torch start-up, a validation, steps, final saves
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 10**6, "ckpt_every": 10**6,
                                                            "valid_every": 10**6, "log_every": 5})
    out = tmp_path / "out"
    started = time.time()
    run = subprocess.run(cli(path, "--out-dir", out, "--max-minutes", budget, "data.device_resident=true"),
                         env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    wall = time.time() - started
    assert run.returncode == 0, run.stderr
    assert wall <= 60 * budget + 2.0, wall  # the trainer ends early enough for the process to exit in time
    last = read_checkpoint(out / "last.pt")
    records = log_records(out)
    summary = records[-1]
    assert summary["run/end"] == "max_minutes" and summary["step"] == last["step"] == summary["run/steps"] >= 3
    assert f"the {budget:g}-minute budget ended the run at step {last['step']}" in run.stderr
    valid = [r for r in records if "valid/nll" in r]
    assert [r["step"] for r in valid] == [0, last["step"]]  # step 0 (measured), then the final one
    # best.pt is written at the end exactly when the final validation beats the starting one. A few steps of a
    # fresh model usually do; how many steps fit 18 s depends on the machine's load, so both outcomes are held
    # to the rule rather than one assumed.
    if valid[-1]["valid/nll"] < valid[0]["valid/nll"]:
        best = read_checkpoint(out / "best.pt")
        assert best["valid_nll"] == valid[-1]["valid/nll"] and last["best_valid_nll"] == best["valid_nll"]
    else:
        assert not (out / "best.pt").exists() and last["best_valid_nll"] == valid[0]["valid/nll"]
    assert "samples/s" in run.stderr and summary["run/samples_per_s"] > 0


def test_a_budget_already_spent_saves_step_0_and_exits_0(clips3, tmp_path):
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 100})
    config = load_config(path, ["train.max_minutes=1"])
    trainer = Trainer(config, tmp_path / "out", started_at=time.time() - 120)
    assert trainer.fit() == 0 and trainer.end_reason == "max_minutes" and trainer.losses == []
    assert read_checkpoint(tmp_path / "out" / "last.pt")["step"] == 0
    assert json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])["run/end"] == "max_minutes"


def test_bad_budget_in_code_is_refused(clips3, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", clips3))
    config.train.max_minutes = math.inf
    with pytest.raises(WavflowError, match="train.max_minutes must be finite"):
        Trainer(config, tmp_path / "out")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_resident_crops_equal_the_loader_and_adam_is_fused(clips3, ljspeech_root, tmp_path):
    data = LJSpeech(ljspeech_root, "train", n_valid=2, segment_length=50000)
    sampler = CropSampler(data, seed=7)
    loaded = list(torch.utils.data.DataLoader(data, batch_size=3, sampler=sampler, drop_last=True))
    cut = list(DeviceCrops(data, "cuda").batches(sampler, 3))
    assert all(b.is_cuda and torch.equal(a.cuda(), b) for a, b in zip(loaded, cut, strict=True))
    path = write_config(tmp_path / "c.yaml", clips3, data={"device_resident": True},
                        train={"max_steps": 3, "device": "cuda", "precision": "bf16", "threads": 0})
    trainer = train(path, tmp_path / "out")
    assert trainer.device_crops.audio.is_cuda and trainer.state.optimizer.param_groups[0]["fused"] is True
    assert len(trainer.losses) == 3 and all(math.isfinite(v) for v in trainer.losses)


def test_a_cpu_clock_budget_counts_the_process_cpu_time(clips3, tmp_path, monkeypatch):
    """train.budget_clock=cpu: the deadline reads the process's CPU time, so a run that waits (here: a wall
    clock that jumps an hour per reading) is not cut short, and one whose CPU time is spent stops."""
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 3, "valid_every": 10**6})
    config = load_config(path, ["train.max_minutes=5", "train.budget_clock=cpu"])
    wall = iter(range(0, 10**9, 3600))
    monkeypatch.setattr("wavflow.train.loop.time.time", lambda: float(next(wall)))
    trainer = Trainer(config, tmp_path / "out")
    assert trainer.fit() == 0 and trainer.end_reason == "max_steps" and len(trainer.losses) == 3
    monkeypatch.setattr("wavflow.train.loop.time.process_time", lambda: 600.0)  # 10 CPU-minutes spent
    spent = Trainer(load_config(path, ["train.max_minutes=5", "train.budget_clock=cpu", "train.max_steps=6"]),
                    tmp_path / "out", resume=True, cpu_started_at=0.0)  # as the command line: from the process's start
    assert spent.fit() == 0 and spent.end_reason == "max_minutes" and spent.losses == []
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["run/cpu_seconds"] == 600.0


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_only_where_the_cpu_has_it(clips3, tmp_path, monkeypatch, native):
    monkeypatch.setattr("wavflow.train.loop.native_bf16", lambda device: native)
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 2, "precision": "auto",
                                                            "valid_every": 10**6})
    trainer = train(path, tmp_path / "out")
    assert trainer.precision == ("bf16" if native else "fp32")
    assert trainer.amp_dtype == (torch.bfloat16 if native else None)
    assert len(trainer.losses) == 2 and all(math.isfinite(v) for v in trainer.losses)
    assert log_records(tmp_path / "out")[-1]["run/precision"] == trainer.precision


def test_a_run_resumes_after_the_model_config_gained_a_field(clips3, tmp_path):
    """A checkpoint written before a config field existed (here: its model_config lacks the source switches)
    resumes with the field's default, as it loads; a real difference is still refused by name."""
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 2, "valid_every": 10**6})
    train(path, tmp_path / "out")
    ck = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    for key in ("source", "source_filter", "source_harmonics", "energy_prior", "spectral_weight"):
        del ck["model_config"][key]
    torch.save(ck, tmp_path / "out" / "last.pt")
    trainer = Trainer(load_config(path, ["train.max_steps=3"]), tmp_path / "out", resume=True)
    assert trainer.fit() == 0 and trainer.state.step == 3
    with pytest.raises(WavflowError, match="model_config differs from the config in n_flows"):
        Trainer(load_config(path, ["train.max_steps=4", "model_config.n_flows=2"]), tmp_path / "out", resume=True)


def test_a_run_resumes_with_another_objective(clips3, tmp_path):
    """The objective's weights (WaveGlow.OBJECTIVE) may change on resume, like the learning rate: the run goes on
    with the new loss and records it; an architecture key is still refused, and named alone."""
    path = write_config(tmp_path / "c.yaml", clips3, train={"max_steps": 2, "valid_every": 10**6})
    train(path, tmp_path / "out")
    objective = ["model_config.spectral_weight=0.5", "model_config.spectral_sigma=0.2"]
    trainer = Trainer(load_config(path, ["train.max_steps=3", *objective]), tmp_path / "out", resume=True)
    assert trainer.fit() == 0 and trainer.state.step == 3
    spectral = {r["step"] for r in log_records(tmp_path / "out") if "train/spectral/sc" in r}
    assert spectral == {3}  # steps 1-2 trained on the likelihood alone, step 3 with the spectral loss
    ck = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert (ck["model_config"]["spectral_weight"], ck["model_config"]["spectral_sigma"]) == (0.5, 0.2)
    with pytest.raises(WavflowError, match=r"model_config differs from the config in n_flows;"):
        Trainer(load_config(path, ["train.max_steps=4", "model_config.n_flows=2", "model_config.spectral_weight=0"]),
                tmp_path / "out", resume=True)
