"""python -m wavflow.benchmark: the --quick run CI does, its FLOP and memory accounting, and its input errors.

No timing is asserted (the machine is shared): only that every promised row is there with sane numbers, that
FLOPs are counted the way the module says, and that bad input is one line and exit status 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wavflow import benchmark as bm
from wavflow.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_writes_every_promised_row(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    env = dict(os.environ)
    # One torch thread: on a CPU shared with other jobs, two spinning OpenMP threads per small op make the tiny
    # models' step loops erratic; the run checks what is reported, not how fast.
    proc = subprocess.run([sys.executable, "-m", "wavflow.benchmark", "--quick", "--threads", "1", "--json",
                           str(out_json), "--plot", str(out_png)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())
    rows, meta = report["rows"], report["meta"]

    # Every row at every quick length; naive WaveNet at the shortest only (that is its --quick length).
    lengths = [round(bm.frames_for(s) * 256 / 22050, 4) for s in bm.QUICK_LENGTHS]
    expected = {(e.name, L) for e in bm.ENTRIES for L in (lengths[:1] if e.naive else lengths)}
    got = {(r["model"], round(r["length_s"], 4)) for r in rows}
    assert got == expected, f"missing {expected - got}, unexpected {got - expected}; skipped: {meta['skipped']}"
    assert meta["skipped"] == {}

    for r in rows:
        for key in ("parameters", "median_s", "samples_per_s", "rtf", "x_real_time", "flops_per_sample", "gflops",
                    "pct_peak", "speedup_vs_cached"):
            assert r[key] is not None and np.isfinite(r[key]) and r[key] > 0, (r["model"], key, r[key])
        assert r["peak_mem_bytes"] >= 0
        assert len(r["times_s"]) == 3 and r["median_s"] == sorted(r["times_s"])[1]
        assert r["samples"] == r["batch"] * round(r["length_s"] * 22050)
        assert r["rtf"] == pytest.approx(r["median_s"] / (r["samples"] / 22050))
        assert r["x_real_time"] == pytest.approx(1 / r["rtf"])
        assert r["gflops"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e9)
        assert r["peak_gflops"] == meta["matmul_peak_gflops"] > 0  # fp32 run: one peak for every row
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / r["peak_gflops"])
    by = {(r["model"], round(r["length_s"], 4)): r for r in rows}
    for L in lengths:
        cached = by[("wavenet_cached", L)]
        assert cached["speedup_vs_cached"] == 1.0
        assert by[("wavenet_batched", L)]["batch"] == bm.BATCH
        # batched and cached run the same network: same FLOPs per sample (the teacher-forced count)
        assert by[("wavenet_batched", L)]["flops_per_sample"] == pytest.approx(cached["flops_per_sample"])
        for name in ("waveglow", "student"):
            assert by[(name, L)]["speedup_vs_cached"] == pytest.approx(
                by[(name, L)]["samples_per_s"] / cached["samples_per_s"])
    # Naive recomputes a window of up to a receptive field (61 samples for the tiny teacher) per sample.
    naive, cached = by[("wavenet_naive", lengths[0])], by[("wavenet_cached", lengths[0])]
    assert 20 < naive["flops_per_sample"] / cached["flops_per_sample"] < 61

    assert meta["torch_threads"] == 1 and meta["device"] == "cpu" and meta["dtype"] == "fp32"
    assert meta["matmul_peak_gflops"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    assert "| WaveNet naive * |" in proc.stdout and "WaveNet cached / naive at" in proc.stdout


def test_flop_count_matches_torch_counter_and_formula():
    net = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.Conv1d(6, 5, 1))
    lin = nn.Linear(7, 3)
    x, y = torch.randn(2, 4, 50), torch.randn(10, 7)

    def f():
        return net(x).sum() + lin(y).sum()

    with torch.no_grad():
        _, ours = bm.count_flops(f)
        ref = FlopCounterMode(display=False)
        with ref:
            f()
    assert ours == ref.get_total_flops() == 2 * (2 * 50 * (6 * 4 * 3 + 5 * 6 * 1) + 10 * 7 * 3)
    # In-place and out= products, which the fast WaveGlow and student paths use, count like the plain ones
    # (FlopCounterMode itself counts addmm_ as zero); matrix-vector products too.
    a, b, c = torch.randn(64, 32), torch.randn(32, 16), torch.zeros(64, 16)
    assert bm.count_flops(lambda: c.addmm_(a, b))[1] == 2 * 64 * 32 * 16
    assert bm.count_flops(lambda: torch.mm(a, b, out=c))[1] == 2 * 64 * 32 * 16
    assert bm.count_flops(lambda: torch.baddbmm(torch.zeros(3, 4, 5), torch.randn(3, 4, 6), torch.randn(3, 6, 5))
                          )[1] == 2 * 3 * 4 * 6 * 5
    assert bm.count_flops(lambda: torch.mv(a, torch.randn(32)))[1] == 2 * 64 * 32


def test_naive_flops_extrapolation_equals_counting_every_step(monkeypatch):
    threads = torch.get_num_threads()
    settings = bm.parse_args(["--quick", "--models", "wavenet_naive", "--quiet", "--threads", "1"])
    try:
        runner = bm.Runner(settings, lambda msg: None)
        entry = bm.ENTRY_BY_NAME["wavenet_naive"]
        mel = runner.mel_for(entry, 0.02)  # 2 frames = 512 samples, past the tiny teacher's 61-sample field
        model = runner.models["wavenet"].model
        assert mel.shape[-1] * 256 > model.receptive_field + 16
        audio, total = bm.count_flops(lambda: runner.call(entry, mel))
        assert runner.naive_flops(entry, mel) == pytest.approx(total / audio.numel(), rel=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_mel_tiling_and_batch_offsets():
    mel = np.arange(80 * 5, dtype=np.float32).reshape(80, 5)
    tiled = bm.tile_mel(mel, 12)
    assert tiled.shape == (80, 12)
    np.testing.assert_array_equal(tiled[:, :5], mel)
    np.testing.assert_array_equal(tiled[:, 5:10], mel)
    np.testing.assert_array_equal(tiled[:, 10:], mel[:, :2])
    np.testing.assert_array_equal(bm.tile_mel(mel, 3), mel[:, :3])
    batch = bm.mel_batch(mel, 4, 5)
    assert batch.shape == (5, 80, 4)
    for i in range(5):  # utterance i starts at frame i: all different
        np.testing.assert_array_equal(batch[i].numpy(), bm.tile_mel(mel, 4, i))
    assert bm.frames_for(1.0) == 86 and bm.frames_for(0.001) == 1


def test_cpu_memory_measure_sees_an_allocation():
    mem = bm.Memory(torch.device("cpu"))
    mem.start()
    x = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
    peak = mem.stop()
    del x
    assert 30 * 2**20 <= peak < 200 * 2**20


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "abc"], "--lengths: expected comma-separated seconds"),
    (["--lengths", "1,0"], "--lengths: each length must be in (0, 600]"),
    (["--models", "wavenet_cached,hifigan"], "--models: unknown model 'hifigan'"),
    (["--checkpoint", "wavenet=/nonexistent/wn.pt"], "/nonexistent/wn.pt: no such checkpoint file"),
    (["--checkpoint", "melgan=x.pt"], "--checkpoint: unknown model family 'melgan'"),
    (["--config", "wavenet=huge"], None),
    (["--repeats", "2"], "--repeats: at least 3"),
    (["--dtype", "fp8"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    if argv[0] == "--config":  # an unknown preset is found when the model is built; keep that build tiny
        argv = argv + ["--models", "wavenet_cached", "--quick"]
        message = "WaveNetConfig has no preset 'huge'"
    with pytest.raises(SystemExit) as e:
        run_cli(bm.PROG, bm.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_cuda_without_gpu_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(bm.PROG, bm.main, ["--device", "cuda", "--dtype", "fp16"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err


def test_checkpoint_of_another_family_is_refused(tmp_path, capsys):
    from wavflow.checkpoint import model_payload, save_checkpoint
    from wavflow.models import build_model

    path = tmp_path / "student.pt"
    save_checkpoint(path, model_payload(build_model("student", bm.preset_config("student", "tiny"))))
    with pytest.raises(SystemExit) as e:
        run_cli(bm.PROG, bm.main, ["--models", "wavenet_cached", "--wavenet", str(path), "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a student model" in err


def test_plan_naive_length_and_caps():
    def names(argv):
        return [(s, [e.name for e in entries]) for s, entries in bm.plan(bm.parse_args(argv))]

    all_rows = [e.name for e in bm.ENTRIES]
    parallel = ["wavenet_cached", "wavenet_batched", "waveglow", "student"]
    assert names(["--lengths", "0.5,1,2", "--cap", "wavenet_batched=1"]) == [
        (0.1, ["wavenet_naive", "wavenet_cached"]), (0.5, parallel), (1.0, parallel),
        (2.0, ["wavenet_cached", "waveglow", "student"])]
    assert names(["--lengths", "0.5,1", "--naive-length", "0.5", "--naive-all"]) == [(0.5, all_rows),
                                                                                    (1.0, all_rows)]
    assert names(["--lengths", "0.5,1", "--ar-max", "0.5", "--models", "waveglow,wavenet_batched"]) == [
        (0.5, ["wavenet_batched", "waveglow"]), (1.0, ["waveglow"])]


def test_speedups_against_cached_at_same_or_longest_length():
    def row(model, length, sps):
        return bm.Row(model=model, label=model, family="x", source="", parameters=1, length_s=length, batch=1,
                      samples=1, times_s=[1.0] * 3, median_s=1.0, samples_per_s=sps, rtf=1.0, x_real_time=1.0,
                      speedup_vs_cached=None, speedup_ref_length_s=None, flops_per_sample=1.0, flops_method="",
                      gflops=1.0, pct_peak=1.0, peak_gflops=1.0, peak_mem_bytes=0, dtype="fp32")

    rows = [row("wavenet_naive", 0.1, 2.0), row("wavenet_cached", 0.1, 100.0), row("wavenet_cached", 0.5, 200.0),
            row("student", 0.5, 5000.0), row("student", 4.0, 8000.0)]
    bm.add_speedups(rows)
    assert [r.speedup_vs_cached for r in rows] == [0.02, 1.0, 1.0, 25.0, 40.0]
    assert [r.speedup_ref_length_s for r in rows] == [0.1, 0.1, 0.5, 0.5, 0.5]
    table = bm.format_table(rows)
    assert table.count("†") == 1 and "| 40 † |" in table
