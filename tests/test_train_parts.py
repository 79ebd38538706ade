"""The trainer's parts on their own: the budget clock, the run log, the teacher attachment, the stop signals and
the epochs of the training data. No training runs here (test_train.py and test_train_continue.py run it)."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from wavflow.checkpoint import model_payload, save_checkpoint
from wavflow.errors import WavflowError
from wavflow.frontend import MelConfig
from wavflow.models.student import IAFStudent, StudentConfig
from wavflow.models.waveglow import WaveGlow
from wavflow.models.wavenet import WaveNet, WaveNetConfig
from wavflow.train.budget import BudgetClock
from wavflow.train.config import DataConfig
from wavflow.train.feed import TrainingData
from wavflow.train.runlog import RunLog
from wavflow.train.runtime import Runtime, StopSignals
from wavflow.train.state import RunState
from wavflow.train.teacher import Teacher

CPU = torch.device("cpu")


# -- the budget clock ------------------------------------------------------------------------------------------------

def test_a_cpu_budget_clock_stops_after_its_cpu_minutes_whatever_the_wall_clock(monkeypatch):
    cpu, wall = [0.0], [1000.0]
    monkeypatch.setattr("wavflow.train.budget.time.process_time", lambda: cpu[0])
    monkeypatch.setattr("wavflow.train.budget.time.time", lambda: wall[0])
    budget = BudgetClock(1.0, "cpu", started_at=1000.0, parameters=0, validates=False)
    assert budget.deadline == 60.0  # counted from the process's start, CPU second 0
    wall[0] += 3600.0  # an hour of waiting on a busy machine spends no CPU time
    assert not budget.out_of_time(Runtime(), CPU)
    cpu[0] = 61.0
    assert budget.out_of_time(Runtime(), CPU)
    # a run started inside a process that had already spent 500 CPU-s (train() from Python) has its full minute
    later = BudgetClock(1.0, "cpu", started_at=1000.0, parameters=0, validates=False, cpu_started_at=500.0)
    assert later.deadline == 560.0
    cpu[0] = 530.0
    assert not later.out_of_time(Runtime(), CPU)
    cpu[0] = 561.0
    assert later.out_of_time(Runtime(), CPU)


def test_a_wall_budget_clock_counts_from_the_start_and_reserves_the_closing_saves(monkeypatch):
    wall = [1000.0]
    monkeypatch.setattr("wavflow.train.budget.time.time", lambda: wall[0])
    monkeypatch.setattr("wavflow.train.budget.time.process_time", lambda: 0.0)
    budget = BudgetClock(1.0, "wall", started_at=1000.0, parameters=0, validates=True)
    # The reserve before any save is timed: a last.pt (1 s), a best.pt (0.5 s) and a validation (0 s so far);
    # one step and the exit margin (1 s + 1% of the budget) come on top.
    assert budget.reserve() == pytest.approx(1.5)
    budget.step_seconds.append(2.0)
    budget.longest.update(valid=3.0)
    wall[0] = 1000.0 + 60.0 - (2.0 + 1.25 * 4.5 + 1.6) - 0.01
    assert not budget.out_of_time(Runtime(), CPU)
    wall[0] += 0.02
    assert budget.out_of_time(Runtime(), CPU)


def test_the_budget_keeps_each_kind_of_duration_it_times():
    budget = BudgetClock(0.0, "wall", started_at=0.0, parameters=10**8, validates=False)
    assert budget.deadline is None and not budget.out_of_time(Runtime(), CPU)
    assert budget.reserve() == pytest.approx(1.0 + 12.0)  # last.pt of 100 M parameters, estimated; no validation
    for _ in range(2):
        with budget.timing("step"):
            pass
        with budget.timing("last"):
            pass
    assert len(budget.step_seconds) == 2 and budget.reserve() < 1.0  # the measured save replaces the estimate
    with pytest.raises(RuntimeError), budget.timing("step"):
        raise RuntimeError("a step that fails is not a duration")
    assert len(budget.step_seconds) == 2


# -- the run log -----------------------------------------------------------------------------------------------------

def _records(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_the_run_log_writes_window_means_and_rates(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("wavflow.train.runlog.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("wavflow.train.runlog.time.process_time", lambda: 42.0)
    log = RunLog(tmp_path, Runtime(), CPU)
    log.start_window()
    log.add_step({"loss": 1.0, "grad_norm": 4.0}, batch_samples=8192)
    log.add_step({"loss": 3.0, "grad_norm": 2.0}, batch_samples=8192)
    clock[0] += 4.0  # two steps in 4 s
    log.close_window(step=2, lr=1e-3)
    log.validation(2, 0.5, loss=3.0)
    log.summary(2, "max_steps", 2, wall_seconds=9.0, step_seconds=[3.0, 1.0], about={"batch": 2})
    window, valid, summary = _records(tmp_path)
    assert window == {"step": 2, "train/loss": 2.0, "train/grad_norm": 3.0, "train/lr": 1e-3,
                      "train/steps_per_s": 0.5, "train/samples_per_s": 2 * 8192 / 4.0,
                      "run/samples": 2 * 8192, "run/cpu_seconds": 42.0}  # the process's running totals
    assert valid == {"step": 2, "valid/nll": 0.5}
    assert summary["run/end"] == "max_steps" and summary["run/cpu_seconds"] == 42.0
    assert summary["run/samples"] == 2 * 8192 and summary["run/train_seconds"] == 4.0
    assert summary["run/samples_per_s"] == 2 * 8192 / 4.0
    assert summary["run/steady_samples_per_s"] == 8192 / 1.0  # the first step (warm-up) left out
    assert summary["run/batch"] == 2 and summary["run/wall_seconds"] == 9.0
    assert log.steps == 0 and log.window == {}  # the window closed


def test_only_rank_0_writes_the_run_log(tmp_path):
    log = RunLog(tmp_path, Runtime(rank=1, world_size=1), CPU)
    log.write({"step": 1, "train/loss": 1.0})
    assert not (tmp_path / "log.jsonl").exists()


# -- the teacher -----------------------------------------------------------------------------------------------------

@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, model_payload(WaveNet(WaveNetConfig.tiny())))
    return path


def test_every_model_family_declares_whether_it_needs_a_teacher():
    assert (WaveGlow.needs_teacher, WaveNet.needs_teacher, IAFStudent.needs_teacher) == (False, False, True)


def test_the_teacher_follows_the_model_declaration(teacher_file, monkeypatch):
    student = IAFStudent(StudentConfig.tiny())
    teacher = Teacher.attach(student, teacher_file, "student", CPU)
    assert student.teacher is teacher.module and student.teacher_sha256 == teacher.sha256
    assert not teacher.module.training and not any(p.requires_grad for p in teacher.module.parameters())
    with pytest.raises(WavflowError, match="set teacher: PATH"):
        Teacher.attach(IAFStudent(StudentConfig.tiny()), None, "student", CPU)
    with pytest.raises(WavflowError, match="only for a model that is distilled"):
        Teacher.attach(WaveNet(WaveNetConfig.tiny()), teacher_file, "wavenet", CPU)
    # The declaration decides, not the presence of attach_teacher.
    monkeypatch.setattr(IAFStudent, "needs_teacher", False)
    assert Teacher.attach(IAFStudent(StudentConfig.tiny()), None, "student", CPU) is None


def test_a_teacher_that_moved_is_caught(teacher_file):
    teacher = Teacher.attach(IAFStudent(StudentConfig.tiny()), teacher_file, "student", CPU)
    teacher.check_frozen()
    with torch.no_grad():
        next(teacher.module.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="must stay frozen"):
        teacher.check_frozen()


# -- stop signals ----------------------------------------------------------------------------------------------------

def test_a_signal_asks_the_run_to_stop_and_a_second_ctrl_c_aborts():
    announced = []
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals(announced.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and announced == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


# -- the training data -----------------------------------------------------------------------------------------------

def test_the_batches_carry_on_into_the_next_epoch_from_the_saved_position(ljspeech_root):
    config = DataConfig(root=str(ljspeech_root), n_valid=2, segment_length=4096, batch_size=5, num_workers=0)
    data = TrainingData(config, MelConfig(), seed=3, runtime=Runtime())
    per_epoch = len(data.train_set) // config.batch_size
    state = RunState(None, None, None)
    batches = data.batches(state, pin_memory=False)
    first = [next(batches) for _ in range(per_epoch)]
    assert state.epoch == 0
    state.batches_in_epoch = per_epoch  # the trainer counts the batches it trains on
    next(batches)
    assert state.epoch == 1 and state.batches_in_epoch == 0
    # A resumed run (a fresh TrainingData at the position a checkpoint saved) cuts the same crops.
    again = TrainingData(config, MelConfig(), seed=3, runtime=Runtime())
    resumed = RunState(None, None, None, epoch=0, batches_in_epoch=2)
    assert torch.equal(next(again.batches(resumed, pin_memory=False)), first[2])
