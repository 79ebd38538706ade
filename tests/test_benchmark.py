"""python -m wavflow.benchmark: the --quick run CI does, its clocks, FLOP and memory accounting, the NVIDIA
reference sampler, and its input errors.

No speed is asserted (the machine is shared): only that every promised row is there with numbers that follow
from what was run, that FLOPs, memory and CPU time are measured the way measure.py says, and that bad input is
one line and exit status 2.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wavflow.benchmark import entries, inputs, measure, report, runner
from wavflow.benchmark import settings as bench_settings
from wavflow.benchmark.reference import nvidia_infer
from wavflow.cli import run_cli
from wavflow.commands import benchmark as bench_cmd
from wavflow.errors import WavflowError

PROG = bench_cmd.PROG

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
DEFAULT_ROWS = [e.name for e in entries.ENTRIES if e.default]


def test_quick_run_writes_every_promised_row(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    env = dict(os.environ)
    # One torch thread: on a CPU shared with other jobs, two spinning OpenMP threads per small op make the tiny
    # models' step loops erratic; the run checks what is reported, not how fast.
    proc = subprocess.run([sys.executable, "-m", "wavflow.benchmark", "--quick", "--threads", "1", "--json",
                           str(out_json), "--plot", str(out_png)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report_ = json.loads(out_json.read_text())
    rows, meta = report_["rows"], report_["meta"]

    # Every default row at every quick length; naive WaveNet at the shortest only (that is its --quick length).
    lengths = [round(inputs.frames_for(s) * 256 / 22050, 4) for s in bench_settings.QUICK_LENGTHS]
    expected = {(e.name, L) for e in entries.ENTRIES if e.default for L in (lengths[:1] if e.naive else lengths)}
    got = {(r["model"], round(r["length_s"], 4)) for r in rows}
    assert got == expected, f"missing {expected - got}, unexpected {got - expected}"

    for r in rows:
        for key in ("parameters", "median_s", "samples_per_s", "samples_per_cpu_s", "rtf", "x_real_time",
                    "flops_per_sample", "gflops", "pct_peak", "speedup_vs_cached"):
            assert r[key] is not None and np.isfinite(r[key]) and r[key] > 0, (r["model"], key, r[key])
        assert len(r["times_s"]) == 3 and r["median_s"] == sorted(r["times_s"])[1]
        assert len(r["cpu_times_s"]) == 3
        assert r["samples_per_cpu_s"] == pytest.approx(r["samples"] / statistics.median(r["cpu_times_s"]))
        assert r["samples"] == r["batch"] * round(r["length_s"] * 22050)
        assert r["rtf"] == pytest.approx(r["median_s"] / (r["samples"] / 22050))
        assert r["x_real_time"] == pytest.approx(1 / r["rtf"])
        assert r["gflops"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e9)
        assert r["peak_gflops"] == meta["peak_gflops"] > 0  # fp32 run: one peak for every row
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / r["peak_gflops"])
    by = {(r["model"], round(r["length_s"], 4)): r for r in rows}
    for L in lengths:
        cached = by[("wavenet_cached", L)]
        assert cached["speedup_vs_cached"] == 1.0
        assert by[("wavenet_batched", L)]["batch"] == entries.BATCH
        # batched and cached run the same network: same FLOPs per sample (the teacher-forced count)
        assert by[("wavenet_batched", L)]["flops_per_sample"] == pytest.approx(cached["flops_per_sample"])
        for name in ("waveglow", "student"):
            assert by[(name, L)]["speedup_vs_cached"] == pytest.approx(
                by[(name, L)]["samples_per_s"] / cached["samples_per_s"])
        # WaveGlow holds its conditioning, n_mels x samples floats, for the whole call: the peak can be no less.
        waveglow = by[("waveglow", L)]
        assert waveglow["peak_mem_bytes"] >= 80 * waveglow["samples"] * 4, waveglow
    # Naive recomputes a window of up to a receptive field (61 samples for the tiny teacher) per sample.
    naive, cached = by[("wavenet_naive", lengths[0])], by[("wavenet_cached", lengths[0])]
    assert 20 < naive["flops_per_sample"] / cached["flops_per_sample"] < 61

    assert meta["torch_threads"] == 1 and meta["device"] == "cpu" and meta["dtype"] == "fp32"
    if sys.platform == "linux":  # the resettable high-water mark, not the process-wide fallback
        assert meta["memory"] == "cpu peak RSS growth (VmHWM reset)"
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000
    assert "| WaveNet naive * |" in proc.stdout and "WaveNet cached / naive at" in proc.stdout
    assert "samples/CPU-s" not in proc.stdout  # the column is --cpu-time's
    # The honest peak: the best of the backends measured in the same run, each one reported.
    by_backend = meta["peak_gflops_by_backend"]["fp32"]
    assert set(by_backend) == set(measure.PEAK_BACKENDS) and meta["peak_gflops"] == max(by_backend.values())
    assert "torch.mm" in proc.stdout and "conv1d 1x1" in proc.stdout
    # NVIDIA's algorithm is a default row: the ratio is printed at every length, and WaveGlow's backend choice.
    for L in lengths:
        assert f"WaveGlow / WaveGlow, NVIDIA algorithm at {L:.2f} s:" in proc.stdout
    assert meta["waveglow_backends"] and "WaveGlow sampling backend:" in proc.stdout
    for choice in meta["waveglow_backends"].values():
        assert choice["how"] == "measured" and choice["backend"] == min(choice["seconds"], key=choice["seconds"].get)


def test_flop_count_matches_torch_counter_and_formula():
    net = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.Conv1d(6, 5, 1))
    lin = nn.Linear(7, 3)
    x, y = torch.randn(2, 4, 50), torch.randn(10, 7)

    def f():
        return net(x).sum() + lin(y).sum()

    with torch.no_grad():
        _, ours = measure.count_flops(f)
        ref = FlopCounterMode(display=False)
        with ref:
            f()
    assert ours == ref.get_total_flops() == 2 * (2 * 50 * (6 * 4 * 3 + 5 * 6 * 1) + 10 * 7 * 3)
    # In-place and out= products, which the fast WaveGlow and student paths use, count like the plain ones
    # (FlopCounterMode itself counts addmm_ as zero); matrix-vector products too.
    a, b, c = torch.randn(64, 32), torch.randn(32, 16), torch.zeros(64, 16)
    assert measure.count_flops(lambda: c.addmm_(a, b))[1] == 2 * 64 * 32 * 16
    assert measure.count_flops(lambda: torch.mm(a, b, out=c))[1] == 2 * 64 * 32 * 16
    assert measure.count_flops(lambda: torch.baddbmm(torch.zeros(3, 4, 5), torch.randn(3, 4, 6),
                                                     torch.randn(3, 6, 5)))[1] == 2 * 3 * 4 * 6 * 5
    assert measure.count_flops(lambda: torch.mv(a, torch.randn(32)))[1] == 2 * 64 * 32


def test_naive_flops_extrapolation_equals_counting_every_step():
    settings = bench_cmd.parse_args(["--quick", "--models", "wavenet_naive", "--quiet"])
    run = runner.Runner(settings, lambda msg: None)
    entry = entries.ENTRY_BY_NAME["wavenet_naive"]
    mel = run.mel_for(entry, 0.02)  # 2 frames = 512 samples, past the tiny teacher's 61-sample field
    model = run.models["wavenet"].model
    assert mel.shape[-1] * 256 > model.receptive_field + 16
    audio, total = measure.count_flops(lambda: run.call(entry, mel))
    assert run.naive_flops(entry, mel) == pytest.approx(total / audio.numel(), rel=1e-12)


def test_mel_tiling_and_batch_offsets():
    mel = np.arange(80 * 5, dtype=np.float32).reshape(80, 5)
    tiled = inputs.tile_mel(mel, 12)
    assert tiled.shape == (80, 12)
    np.testing.assert_array_equal(tiled[:, :5], mel)
    np.testing.assert_array_equal(tiled[:, 5:10], mel)
    np.testing.assert_array_equal(tiled[:, 10:], mel[:, :2])
    np.testing.assert_array_equal(inputs.tile_mel(mel, 3), mel[:, :3])
    batch = inputs.mel_batch(mel, 4, 5)
    assert batch.shape == (5, 80, 4)
    for i in range(5):  # utterance i starts at frame i: all different
        np.testing.assert_array_equal(batch[i].numpy(), inputs.tile_mel(mel, 4, i))
    assert inputs.frames_for(1.0) == 86 and inputs.frames_for(0.001) == 1


def test_mel_from_an_audio_file_is_the_example_mel_of_that_clip(short_clip):
    mel, source = inputs.default_mel(str(short_clip))
    example, example_source = inputs.default_mel(None)
    assert source == f"mel of {short_clip}" and example_source == "LJ002-0020.npy"
    np.testing.assert_allclose(mel, example, atol=1e-5)


def _known_allocation(nbytes: int) -> entries.Entry:
    """A row whose call touches a buffer of `nbytes` and returns silence of the right shape."""
    def call(model, mel, generator):
        buffer = torch.ones(nbytes // 4)
        assert buffer[-1] == 1
        return torch.zeros(mel.shape[0], mel.shape[-1] * 256)
    return entries.Entry("allocates", "waveglow", "allocates", call)


def test_a_rows_peak_memory_covers_what_its_call_allocates():
    run = runner.Runner(bench_cmd.parse_args(["--quick", "--models", "waveglow", "--quiet"]), lambda msg: None)
    mel = run.mel_for(entries.ENTRY_BY_NAME["waveglow"], 0.05)
    _, _, small = run.time_once(_known_allocation(2**20), mel)
    _, _, large = run.time_once(_known_allocation(64 * 2**20), mel)
    # RSS growth: the 64 MiB buffer, less the few pages the process hands back while it runs
    assert 60 * 2**20 <= large < 164 * 2**20
    assert small < 32 * 2**20  # the 64 MiB of the other call is not carried over


def test_cpu_clock_counts_work_not_waiting():
    device = torch.device("cpu")
    _, slept = measure.time_call(lambda: time.sleep(0.3), device)
    assert slept.wall_s >= 0.3 and slept.cpu_s < 0.1

    def spin():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass

    _, busy = measure.time_call(spin, device)
    assert busy.wall_s >= 0.2 and busy.cpu_s > 0.02  # at least a tenth of the spin, on a loaded machine


def _perturbed_tiny_waveglow(seed: int = 0):
    from wavflow.models.waveglow import WaveGlow, WaveGlowConfig

    torch.manual_seed(seed)
    model = WaveGlow(WaveGlowConfig.tiny()).eval()
    with torch.no_grad():  # the end convs start at zero (identity couplings): give every coupling work to do
        for c in model.coupling:
            c.net.end.weight.normal_(0.0, 0.05)
            c.net.end.bias.normal_(0.0, 0.05)
    return model


@pytest.mark.parametrize("fold_weight_norm", [False, True])
def test_nvidia_algorithm_equals_waveglow_inverse_on_the_same_weights_and_noise(fold_weight_norm):
    model = _perturbed_tiny_waveglow()
    if fold_weight_norm:
        model.remove_weight_norm()
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, 80, 5, generator=g) - 5
    noise = torch.randn(2, 8, 5 * 256 // 8, generator=g)
    with torch.no_grad():
        ours = model.inverse(0.6 * noise, mel)
        nvidia = nvidia_infer(model, mel, noise, 0.6)
    assert nvidia.shape == (2, 5 * 256)
    assert (ours - 0.6 * noise.transpose(1, 2).reshape(2, -1)).abs().max() > 0.01  # the flows did something
    torch.testing.assert_close(nvidia, ours, atol=1e-4, rtol=0)


def test_nvidia_algorithm_on_a_source_model_with_filter_and_energy_prior_equals_infer():
    """The yardstick reads the model's own excitation and prior scale, so a WaveGlow with a source times NVIDIA's
    flow algorithm on the same conditioning and vocodes the same audio."""
    from wavflow.models.waveglow import WaveGlow, WaveGlowConfig

    torch.manual_seed(0)
    model = WaveGlow(WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "source": True, "source_channels": 8,
                                       "source_filter": True, "source_harmonics": 4, "energy_prior": True})).eval()
    with torch.no_grad():
        for c in [*model.coupling, model]:
            net = c.net if c is not model else model.filter
            net.end.weight.normal_(0.0, 0.05)
            net.cond_layer.weight.normal_(0.0, 0.1)
        model.source.out.bias.copy_(torch.tensor([0.0, 2.0]))
        model.harmonics.out.weight.normal_(0.0, 0.01)
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(1, 80, 9, generator=g) - 5
    noise = torch.randn(1, 8, 9 * 256 // 8, generator=g)
    with torch.no_grad():
        ours = model.infer(mel, noise=noise, sigma=0.6)
        nvidia = nvidia_infer(model, mel, noise, 0.6)
        track = model.source_track(mel)
        unvoiced = model.track_of(torch.zeros_like(track.f0), torch.zeros_like(track.voiced), mel)
        without_source = model.inverse(0.6 * noise * model.prior_scale(mel, noise.shape[-1]), mel, unvoiced)
    torch.testing.assert_close(nvidia, ours, atol=1e-4, rtol=0)
    assert (ours - without_source).abs().max() > 1e-3  # the source is in both rows


def test_nvidia_row_vocodes_what_the_waveglow_row_does():
    run = runner.Runner(bench_cmd.parse_args(["--quick", "--models", "waveglow,waveglow_nvidia", "--quiet"]),
                        lambda msg: None)
    mel = run.mel_for(entries.ENTRY_BY_NAME["waveglow"], 0.05)
    ours = run.call(entries.ENTRY_BY_NAME["waveglow"], mel)
    nvidia = run.call(entries.ENTRY_BY_NAME["waveglow_nvidia"], mel)
    torch.testing.assert_close(nvidia, ours, atol=1e-4, rtol=0)


def test_preset_configs_from_classmethods_recipes_and_key_files(tmp_path):
    from wavflow.models import config_from_dict, model_classes

    _, WaveGlowConfig = model_classes("waveglow")
    _, StudentConfig = model_classes("student")
    assert bench_settings.preset_config("waveglow", "paper") == WaveGlowConfig()
    assert bench_settings.preset_config("student", "parallel_wavenet") == StudentConfig.parallel_wavenet()
    recipe = REPO / "recipes" / "ljspeech" / "conf" / "waveglow.tiny.yaml"
    expected = config_from_dict(WaveGlowConfig, yaml.safe_load(recipe.read_text())["model_config"])
    assert bench_settings.preset_config("waveglow", str(recipe)) == expected != WaveGlowConfig()
    keys = tmp_path / "keys.yaml"
    keys.write_text("n_flows: 4\nn_early_every: 2\n")
    assert bench_settings.preset_config("waveglow", str(keys)) == WaveGlowConfig(n_flows=4, n_early_every=2)


def test_parse_args_leaves_torch_alone_and_main_gives_threads_back(capsys):
    before = torch.get_num_threads()
    settings = bench_cmd.parse_args(["--threads", "3", "--quick"])
    assert settings.threads == 3 and torch.get_num_threads() == before
    assert bench_cmd.run(["--quick", "--quiet", "--models", "student", "--lengths", "0.02", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 torch threads" in out and torch.get_num_threads() == before


def test_row_precision_follows_the_dtype_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    got = {(e.name, dev.type, dtype): entries.row_precision(e, dev, dtype)
           for e in entries.ENTRIES for dev in (cpu, cuda) for dtype in ("fp32", "fp16")}
    assert got[("wavenet_cached", "cpu", "fp16")] == "fp32 (numba loop)"
    assert got[("wavenet_cached", "cpu", "fp32")] == "fp32 (numba loop)"
    assert got[("wavenet_cached", "cuda", "fp16")] == "fp16 autocast"
    assert got[("wavenet_naive", "cpu", "fp16")] == "fp16 autocast"
    for name in ("waveglow", "student"):  # cast to the dtype, no autocast
        assert got[(name, "cpu", "fp16")] == got[(name, "cuda", "fp16")] == "fp16"
        assert got[(name, "cuda", "fp32")] == "fp32"
    # NVIDIA's algorithm: fp32 on a CPU whatever --dtype (its CPU path), cast on a GPU (as NVIDIA runs fp16)
    assert got[("waveglow_nvidia", "cpu", "fp16")] == got[("waveglow_nvidia", "cpu", "fp32")] == "fp32"
    assert got[("waveglow_nvidia", "cuda", "fp16")] == "fp16"


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "abc"], "--lengths: expected comma-separated seconds"),
    (["--lengths", "1,0"], "--lengths: each length must be in (0, 600]"),
    (["--models", "wavenet_cached,hifigan"], "--models: unknown model 'hifigan'"),
    (["--checkpoint", "wavenet=/nonexistent/wn.pt"], "/nonexistent/wn.pt: no such checkpoint file"),
    (["--checkpoint", "melgan=x.pt"], "--checkpoint: unknown model family 'melgan'"),
    (["--config", "wavenet=huge"], "--config wavenet=huge: WaveNetConfig has no preset 'huge'"),
    (["--config", "waveglow=/nonexistent/wg.yaml"], "/nonexistent/wg.yaml: no such config file"),
    (["--repeats", "2"], "--repeats: at least 3"),
    (["--dtype", "fp8"], "invalid choice"),
    (["--device", "tpu9"], "device 'tpu9': not a device"),
    (["--threads", "0"], "--threads: must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(PROG, bench_cmd.run, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_cuda_without_gpu_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(PROG, bench_cmd.run, ["--device", "cuda", "--dtype", "fp16"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device 'cuda': CUDA is not available" in err


def test_checkpoint_of_another_family_is_refused(tmp_path, capsys):
    from wavflow.checkpoint import model_payload, save_checkpoint
    from wavflow.models import build_model

    path = tmp_path / "student.pt"
    save_checkpoint(path, model_payload(build_model("student", bench_settings.preset_config("student", "tiny"))))
    with pytest.raises(SystemExit) as e:
        run_cli(PROG, bench_cmd.run, ["--models", "wavenet_cached", "--wavenet", str(path), "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a student model" in err


def test_plan_naive_length_and_caps():
    def names(argv):
        return [(s, [e.name for e in rows]) for s, rows in runner.plan(bench_cmd.parse_args(argv))]

    parallel = ["wavenet_cached", "wavenet_batched", "waveglow", "student", "waveglow_nvidia"]
    assert names(["--lengths", "0.5,1,2", "--cap", "wavenet_batched=1"]) == [
        (0.1, ["wavenet_naive", "wavenet_cached"]), (0.5, parallel), (1.0, parallel),
        (2.0, ["wavenet_cached", "waveglow", "student", "waveglow_nvidia"])]
    assert names(["--lengths", "0.5,1", "--naive-length", "0.5", "--naive-all"]) == [(0.5, DEFAULT_ROWS),
                                                                                    (1.0, DEFAULT_ROWS)]
    assert names(["--lengths", "0.5,1", "--ar-max", "0.5", "--models", "waveglow,wavenet_batched"]) == [
        (0.5, ["wavenet_batched", "waveglow"]), (1.0, ["waveglow"])]
    # NVIDIA's algorithm runs by default, beside wavflow's WaveGlow
    assert "waveglow_nvidia" in DEFAULT_ROWS
    assert names(["--lengths", "1", "--models", "waveglow_nvidia,waveglow"]) == [(1.0, ["waveglow",
                                                                                         "waveglow_nvidia"])]


def _row(model, length, sps, cpu_s=1.0):
    return runner.Row(model=model, label=entries.ENTRY_BY_NAME[model].label, family="x", source="", parameters=1,
                      length_s=length, batch=1, samples=1, times_s=[1.0] * 3, median_s=1.0, samples_per_s=sps,
                      cpu_times_s=[cpu_s] * 3, samples_per_cpu_s=sps / cpu_s, rtf=1.0, x_real_time=1.0,
                      speedup_vs_cached=None, speedup_ref_length_s=None, flops_per_sample=1.0, flops_method="",
                      gflops=1.0, pct_peak=1.0, peak_gflops=1.0, peak_mem_bytes=0, dtype="fp32",
                      note="naive: ..." if model == "wavenet_naive" else "")


def test_speedups_against_cached_at_same_or_longest_length():
    rows = [_row("wavenet_naive", 0.1, 2.0), _row("wavenet_cached", 0.1, 100.0), _row("wavenet_cached", 0.5, 200.0),
            _row("student", 0.5, 5000.0), _row("student", 4.0, 8000.0)]
    report.add_speedups(rows)
    assert [r.speedup_vs_cached for r in rows] == [0.02, 1.0, 1.0, 25.0, 40.0]
    assert [r.speedup_ref_length_s for r in rows] == [0.1, 0.1, 0.5, 0.5, 0.5]
    table = report.format_table(rows)
    assert table.count("†") == 1 and "| 40 † |" in table
    assert report.summary_lines(rows) == [
        "WaveNet cached / naive at 0.10 s: 50.0x",
        "IAF student / WaveNet cached at 0.50 s: 25.0x",
        "IAF student / WaveNet cached at 4.00 s (cached WaveNet at 0.50 s): 40.0x"]


def test_cpu_time_column_and_nvidia_ratio():
    rows = [_row("waveglow", 1.0, 9000.0, cpu_s=2.0), _row("waveglow_nvidia", 1.0, 6000.0, cpu_s=2.0)]
    plain, with_cpu = report.format_table(rows), report.format_table(rows, cpu_time=True)
    assert "samples/CPU-s" not in plain
    header, rule, first = with_cpu.splitlines()[:3]
    cells = [c.strip() for c in first.strip("|").split("|")]
    column = [c.strip() for c in header.strip("|").split("|")].index("samples/CPU-s")
    assert cells[column] == "4,500" and rule.count("|") == len(cells) + 1
    assert report.summary_lines(rows) == ["WaveGlow / WaveGlow, NVIDIA algorithm at 1.00 s: 1.50x"]


def test_source_row_times_the_pitch_and_excitation_of_a_source_waveglow(tmp_path, capsys):
    from wavflow.checkpoint import model_payload, save_checkpoint
    from wavflow.models.waveglow import WaveGlow, WaveGlowConfig

    path = tmp_path / "source.pt"
    save_checkpoint(path, model_payload(WaveGlow(WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__,
                                                                  "source": True, "source_channels": 8}))))
    out = tmp_path / "bench.json"
    assert bench_cmd.run(["--quick", "--quiet", "--models", "waveglow,waveglow_source", "--waveglow", str(path),
                 "--lengths", "0.05", "--json", str(out)]) == 0
    assert "WaveGlow's source (pitch predictor + excitation) at 0.05 s:" in capsys.readouterr().out
    rows = [_row("waveglow", 1.0, 9000.0), _row("waveglow_source", 1.0, 900000.0)]
    assert report.summary_lines(rows)[-1].endswith("1.0% of the WaveGlow row's time, which includes it")
    with pytest.raises(SystemExit) as e:  # a plain WaveGlow has no source to time
        run_cli(PROG, bench_cmd.run, ["--quick", "--quiet", "--models", "waveglow_source", "--lengths", "0.05"])
    assert e.value.code == 2 and "needs a WaveGlow with a source" in capsys.readouterr().err


def test_machine_peak_is_the_best_backend_and_each_is_measured():
    peak = measure.machine_peak(torch.device("cpu"), torch.float32, quick=True)
    assert set(peak.by_backend) == set(measure.PEAK_BACKENDS)
    assert all(np.isfinite(v) and v > 0 for v in peak.by_backend.values())
    assert peak.gflops == max(peak.by_backend.values())


def test_bf16_is_refused_in_one_line_without_native_bf16(monkeypatch, capsys):
    import wavflow.device as device_module

    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(SystemExit) as e:
        run_cli(PROG, bench_cmd.run, ["--quick", "--dtype", "bf16"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dtype bf16" in err and "avx512_bf16" in err, err
    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert bench_cmd.parse_args(["--quick", "--dtype", "bf16"]).dtype == "bf16"
    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert bench_cmd.parse_args(["--quick", "--dtype", "bf16"]).dtype == "bf16"


def test_bf16_run_holds_waveglow_to_nvidias_fp32(monkeypatch):
    """In a bf16 CPU run WaveGlow computes in bf16 and the NVIDIA row in fp32 on a float32 copy of the same
    weights; both vocode the same noise to nearly the same audio, and the summary names both precisions."""
    import wavflow.device as device_module

    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx512_bf16"})  # emulated here if the CPU has none
    run = runner.Runner(bench_cmd.parse_args(["--quick", "--models", "waveglow,waveglow_nvidia", "--dtype", "bf16",
                                        "--quiet"]), lambda msg: None)
    ours, theirs = entries.ENTRY_BY_NAME["waveglow"], entries.ENTRY_BY_NAME["waveglow_nvidia"]
    assert run.model(ours).upsample.weight.dtype == torch.bfloat16
    assert run.model(theirs).upsample.weight.dtype == torch.float32
    mel_ours, mel_theirs = run.mel_for(ours, 0.05), run.mel_for(theirs, 0.05)
    assert mel_ours.dtype == torch.bfloat16 and mel_theirs.dtype == torch.float32
    a, b = run.call(ours, mel_ours), run.call(theirs, mel_theirs)
    assert a.dtype == b.dtype == torch.float32  # WaveGlow's flow state stays float32
    assert (a - b).abs().max() < 0.02 * b.abs().max()
    rows = [_row("waveglow", 1.0, 9000.0), _row("waveglow_nvidia", 1.0, 3000.0)]
    rows[0].dtype = "bf16"
    assert report.summary_lines(rows) == ["WaveGlow (bf16) / WaveGlow, NVIDIA algorithm (fp32) at 1.00 s: 3.00x"]


def test_waveglow_backend_probe_is_not_counted_in_its_flops():
    """The backend probe runs before the counted warm-up call: the row's FLOPs are the call's alone, the same
    at every length (per sample) up to the conditioning's edge."""
    run = runner.Runner(bench_cmd.parse_args(["--quick", "--models", "waveglow", "--quiet"]), lambda msg: None)
    entry = entries.ENTRY_BY_NAME["waveglow"]
    short, _ = run.warm_up(entry, run.mel_for(entry, 0.05))
    again, _ = run.warm_up(entry, run.mel_for(entry, 0.05))
    assert short == again


def test_onnxruntime_rows_vocode_the_pytorch_rows_audio_and_count_the_exported_graph():
    """The onnxruntime rows run the exported graph on the same weights, mel and noise as the PyTorch rows: the
    same audio (export's tolerance); their FLOPs are the exported graph's, counted in torch. They run only when
    asked for, on the CPU in fp32."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    settings = bench_cmd.parse_args(["--quick", "--models", "waveglow,waveglow_onnx,student,student_onnx", "--quiet"])
    assert not any(e.name.endswith("_onnx") for e in bench_cmd.parse_args(["--quick", "--quiet"]).entries)
    run = runner.Runner(settings, lambda msg: None)
    for family in ("waveglow", "student"):
        torch_row, onnx_row = entries.ENTRY_BY_NAME[family], entries.ENTRY_BY_NAME[f"{family}_onnx"]
        mel = run.mel_for(onnx_row, 0.1)
        a, b = run.call(torch_row, mel), run.call(onnx_row, mel)
        assert a.shape == b.shape == (1, mel.shape[-1] * 256) and a.abs().max() > 1e-3
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
        per_sample, how = run.warm_up(onnx_row, mel)
        assert how == "counted over the exported graph in torch" and per_sample > 0
    with pytest.raises(WavflowError, match="onnxruntime's rows run on the CPU in fp32"):
        bench_cmd.parse_args(["--quick", "--models", "waveglow_onnx", "--dtype", "fp16"])
