"""python -m wavflow.evaluate and wavflow.metrics: the report's fields, the distances' exact values, the NLL
pooling, the HTML report (--report) of the very audio scored, bad input."""
from __future__ import annotations

import html
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.audio import load_audio
from wavflow.checkpoint import file_sha256, model_payload, save_checkpoint
from wavflow.cli import run_cli
from wavflow.commands import evaluate as evaluate_cmd
from wavflow.errors import WavflowError
from wavflow.evaluate import default_name
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.losses import stft_loss
from wavflow.metrics import clip_metrics, griffin_lim, logmel_l1, pooled_nll
from wavflow.models import build_model
from wavflow.models.waveglow import WaveGlowConfig
from wavflow.pitch import PitchSettings, PitchTrack

from synth_helpers import clip as fixture_clip
from synth_helpers import snapshot
from test_report import BROWSER, PROBE, Page

PROG = evaluate_cmd.PROG
SECONDS = 0.5
CROP = int(SECONDS * 22050) // 256 * 256  # what --max-seconds 0.5 keeps of each clip: whole hops
ROW_KEYS = {"name", "kind", "nll_nats", "nll_bits", "nll_samples", "logmel_l1", "mrstft", "mrstft_sc",
            "mrstft_logmag", "pesq_wb", "stoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "gpe", "vde",
            "f0_rmse_cents", "rtf", "per_clip"}
PITCH_KEYS = ("gpe", "vde", "f0_rmse_cents")
VOCODER_KEYS = ROW_KEYS | {"checkpoint", "sha256", "model_type", "parameters", "step", "infer_options",
                           "nll_seconds_per_clip", "nll_wall_seconds"}


@pytest.fixture(scope="module")
def waveglow_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("waveglow", WaveGlowConfig.tiny())
    path = tmp_path_factory.mktemp("ckpt") / "tiny-waveglow.pt"
    save_checkpoint(path, model_payload(model, step=7))
    return path


def _run(argv: list[str]) -> int:
    try:
        run_cli(PROG, evaluate_cmd.run, argv)
    except SystemExit as e:
        return int(e.code or 0)
    raise AssertionError("run_cli returned without SystemExit")


@pytest.fixture(scope="module")
def report(waveglow_ckpt, ljspeech_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = [str(waveglow_ckpt), "--data-root", str(ljspeech_root), "--max-clips", "2", "--max-seconds", str(SECONDS),
            "--json", str(out / "eval.json"), "--plot", str(out / "eval.png"), "--device", "cpu"]
    assert _run(argv) == 0
    return json.loads((out / "eval.json").read_text()), out


def test_report_has_every_field(report, waveglow_ckpt, ljspeech_root):
    r, out = report
    ids = [line.split("|")[0] for line in (ljspeech_root / "metadata.csv").read_text().splitlines() if line.strip()]
    assert [c["id"] for c in r["clips"]] == ids[-20:][:2]  # the first two of the last 20: the validation split
    assert all(abs(c["seconds"] - CROP / 22050) < 1e-9 for c in r["clips"])
    assert {"data_root", "n_valid", "clips", "sample_rate", "metrics", "settings", "systems"} <= set(r)
    assert [s["name"] for s in r["systems"]] == ["real", "griffin-lim-60", "tiny-waveglow"]
    assert [s["kind"] for s in r["systems"]] == ["reference", "griffin-lim", "vocoder"]
    for row in r["systems"][:2]:
        assert set(row) >= ROW_KEYS, ROW_KEYS - set(row)
    vocoder = r["systems"][2]
    assert set(vocoder) >= VOCODER_KEYS, VOCODER_KEYS - set(vocoder)
    assert vocoder["sha256"] == file_sha256(waveglow_ckpt)
    assert vocoder["step"] == 7 and vocoder["model_type"] == "waveglow"
    assert vocoder["parameters"] == sum(p.numel() for p in build_model("waveglow", WaveGlowConfig.tiny()).parameters())
    assert vocoder["nll_samples"] == 2 * CROP
    assert vocoder["nll_bits"] == pytest.approx(vocoder["nll_nats"] / math.log(2), rel=1e-12)
    for row in r["systems"]:  # optional metrics were not asked for: present, null
        assert all(row[k] is None for k in ("pesq_wb", "stoi", "dnsmos_ovrl", "dnsmos_p808", *PITCH_KEYS))
        assert [c["id"] for c in row["per_clip"]] == [c["id"] for c in r["clips"]]
        # the row's figure is the mean of its clips'
        assert row["logmel_l1"] == pytest.approx(np.mean([c["logmel_l1"] for c in row["per_clip"]]), rel=1e-12)
        for c in row["per_clip"]:
            assert c["mrstft"] == pytest.approx(c["mrstft_sc"] + c["mrstft_logmag"], rel=1e-12)
    png = (out / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(str(out / "eval.png")).shape[:2]
    assert height > 300 and width > 300


def test_reference_rows(report):
    """The recordings against themselves score exactly 0; Griffin-Lim from the mel does not, but stays near."""
    real, gl, vocoder = report[0]["systems"]
    assert real["logmel_l1"] == 0.0 and real["mrstft"] == 0.0
    assert 0.0 < gl["logmel_l1"] < 0.5
    assert 0.0 < gl["mrstft_sc"] < 1.0
    assert vocoder["logmel_l1"] > gl["logmel_l1"]  # an untrained vocoder is worse than the floor


def test_nll_is_pooled_model_likelihood(report, waveglow_ckpt, ljspeech_root):
    """NLL = -(sum_i n_i * mean log-density_i) / sum_i n_i, from the model's own log_likelihood on the crops."""
    import wavflow

    r, _ = report
    model = wavflow.load(waveglow_ckpt)
    total, count = 0.0, 0
    for clip in r["clips"]:
        audio = load_audio(fixture_clip(clip["id"]), 22050)[:CROP][None]
        with torch.no_grad():
            ll = model.log_likelihood(audio, mel_spectrogram(audio))
        total -= float(ll[0]) * CROP
        count += CROP
    assert r["systems"][2]["nll_nats"] == pytest.approx(total / count, rel=1e-5)


def test_pooled_nll_weighs_every_sample_alike(waveglow_ckpt, short_clip):
    """The one pooled NLL (the trainer's validation and evaluate's column): total nats over total samples."""
    import wavflow

    model = wavflow.load(waveglow_ckpt)
    audio = load_audio(short_clip, 22050)
    short, long = audio[:2560], audio[:5120]
    total, count = pooled_nll(model, [short, long])
    assert count == 7680
    assert total == pooled_nll(model, [short])[0] + pooled_nll(model, [long])[0]
    assert pooled_nll(model, [long], max_samples=2560) == pooled_nll(model, [short])

    class Diverged(torch.nn.Module):
        mel_config = MelConfig()

        def log_likelihood(self, audio, mel):
            return torch.full(audio.shape[:1], math.nan)

    with pytest.raises(WavflowError, match="clip-a: the model's log-likelihood is not finite"):
        pooled_nll(Diverged(), [short], labels=["clip-a"])
    nan_total, n = pooled_nll(Diverged(), [short])  # without labels the figure is returned as it is
    assert math.isnan(nan_total) and n == 2560


def test_nll_max_seconds_caps_the_student_only(waveglow_ckpt, ljspeech_root, tmp_path):
    """The student's likelihood (step-by-step inversion) scores the first --nll-max-seconds of each clip; WaveGlow
    keeps the whole clip."""
    from wavflow.models.student import StudentConfig

    student = tmp_path / "student.pt"
    save_checkpoint(student, model_payload(build_model("student", StudentConfig.tiny()), step=1))
    out = tmp_path / "e.json"
    argv = [str(waveglow_ckpt), str(student), "--data-root", str(ljspeech_root), "--max-clips", "1",
            "--max-seconds", "0.5", "--nll-max-seconds", "0.1", "--griffin-lim-iters", "0", "--json", str(out),
            "--names", "glow,iaf"]
    assert _run(argv) == 0
    r = json.loads(out.read_text())
    assert [s["kind"] for s in r["systems"]] == ["reference", "vocoder", "vocoder"]  # no Griffin-Lim row
    glow, iaf = r["systems"][1:]
    assert (glow["name"], iaf["name"]) == ("glow", "iaf")
    cap = int(0.1 * 22050) // 256 * 256
    assert glow["nll_samples"] == CROP and glow["nll_seconds_per_clip"] is None
    assert iaf["nll_samples"] == cap and iaf["nll_seconds_per_clip"] == pytest.approx(cap / 22050)
    assert math.isfinite(iaf["nll_nats"])


def test_default_row_names():
    assert default_name(Path("exp/ljspeech/waveglow/best.pt")) == "waveglow/best"
    assert default_name(Path("exp/student/step-5000.pt")) == "student/step-5000"
    assert default_name(Path("checkpoints/waveglow-ljspeech-mini.pt")) == "waveglow-ljspeech-mini"


def test_logmel_l1_exact(short_clip):
    audio = load_audio(short_clip, 22050)
    assert logmel_l1(audio, audio) == 0.0
    # Doubling the amplitude doubles every mel bin: the log moves by exactly ln 2 wherever no bin sits on the
    # 1e-5 floor, which holds for this clip (checked, so the identity is exact and not approximate).
    assert mel_spectrogram(audio[None]).min() > math.log(1e-5) + 1e-6
    assert logmel_l1(2 * audio, audio) == pytest.approx(math.log(2), abs=1e-9)
    assert logmel_l1(audio, 2 * audio) == logmel_l1(2 * audio, audio)


def test_griffin_lim_floor_and_stft_distance(short_clip):
    audio = load_audio(short_clip, 22050)[:CROP]
    mel = mel_spectrogram(audio[None])[0]
    gl = griffin_lim(mel, MelConfig(), n_iter=8, length=CROP, seed=0)
    assert gl.shape == audio.shape
    m = clip_metrics(gl, audio, 22050, MelConfig(), {})
    assert m["logmel_l1"] > 0.05
    sc, logmag = stft_loss(gl.double()[None], audio.double()[None])
    assert m["mrstft_sc"] == pytest.approx(float(sc)) and m["mrstft_logmag"] == pytest.approx(float(logmag))
    # more Griffin-Lim iterations get closer to the mel they invert
    gl60 = griffin_lim(mel, MelConfig(), n_iter=60, length=CROP, seed=0)
    assert logmel_l1(gl60, audio) < m["logmel_l1"]


def test_optional_metrics_when_installed(short_clip):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    pytest.importorskip("speechmos")
    pytest.importorskip("onnxruntime")
    from wavflow.metrics import require_metrics

    fns = require_metrics(["pesq", "stoi", "dnsmos"])
    audio = load_audio(short_clip, 22050)
    same = clip_metrics(audio, audio, 22050, MelConfig(), fns)
    assert same["pesq_wb"] == pytest.approx(4.644, abs=1e-3)  # the top of the wide-band PESQ scale
    assert same["stoi"] == pytest.approx(1.0, abs=1e-6)
    noisy = audio + 0.03 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    worse = clip_metrics(noisy, audio, 22050, MelConfig(), fns)
    assert worse["pesq_wb"] < same["pesq_wb"] - 1 and worse["stoi"] < same["stoi"]
    assert 1.0 <= worse["dnsmos_ovrl"] < same["dnsmos_ovrl"] <= 5.0
    assert 1.0 <= same["dnsmos_p808"] <= 5.0


def test_pitch_metrics(waveglow_ckpt, ljspeech_root, tmp_path, monkeypatch, capsys):
    """--metrics pitch: every row holds its audio's pitch against the recording's, tracked once per clip; the
    recordings against themselves make no error."""
    import wavflow.metrics

    calls = []
    real_track = wavflow.metrics.track_pitch
    monkeypatch.setattr(wavflow.metrics, "track_pitch", lambda audio, settings: calls.append(settings) or
                        real_track(audio, settings))
    out = tmp_path / "e.json"
    argv = [str(waveglow_ckpt), "--data-root", str(ljspeech_root), "--max-clips", "2", "--max-seconds", str(SECONDS),
            "--griffin-lim-iters", "8", "--no-nll", "--metrics", "pitch", "--json", str(out), "--device", "cpu"]
    assert _run(argv) == 0
    table = capsys.readouterr().out
    assert "| GPE | VDE | F0 RMSE (cents) |" in table
    r = json.loads(out.read_text())
    assert "pitch" in r["metrics"]
    real, gl, vocoder = r["systems"]
    # the recordings once per clip (the real row reuses them), then Griffin-Lim's and the vocoder's audio
    assert len(calls) == 3 * len(r["clips"])
    assert all(s == PitchSettings.for_mel(MelConfig()) for s in calls)
    for row in r["systems"]:
        assert all(k in row for k in PITCH_KEYS), row["name"]
        for c in row["per_clip"]:
            assert all(k in c for k in PITCH_KEYS), (row["name"], c["id"])
            assert c["vde"] is not None and 0.0 <= c["vde"] <= 1.0
        for k in PITCH_KEYS:  # the row's figure is the mean over the clips where it is defined
            values = [c[k] for c in row["per_clip"] if c[k] is not None]
            assert row[k] == (pytest.approx(np.mean(values), rel=1e-12) if values else None), (row["name"], k)
    assert real["gpe"] == 0.0 and real["vde"] == 0.0 and real["f0_rmse_cents"] == 0.0
    assert all(c["gpe"] == 0.0 and c["vde"] == 0.0 for c in real["per_clip"])  # speech: frames voiced in both
    assert gl["vde"] < 0.2 and gl["gpe"] < 0.2  # Griffin-Lim keeps the voicing and pitch of the mel it inverts


def test_missing_metric_package_is_one_line(waveglow_ckpt, ljspeech_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pesq", None)  # makes `import pesq` raise ImportError
    assert _run([str(waveglow_ckpt), "--data-root", str(ljspeech_root), "--metrics", "pesq"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wavflow[metrics]" in err and "pesq" in err


def _bad_inputs(tmp: Path, ckpt: Path, root: Path) -> list[tuple[str, list[str], str]]:
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    text = tmp / "notes.pt"
    text.write_text("not a checkpoint\n")
    empty_root = tmp / "empty_root"
    empty_root.mkdir()
    good = [str(ckpt), "--data-root", str(root)]
    return [
        ("missing checkpoint", [str(tmp / "nope.pt"), "--data-root", str(root)], "nope.pt"),
        ("truncated checkpoint", [str(truncated), "--data-root", str(root)], "truncated.pt"),
        ("text file as checkpoint", [str(text), "--data-root", str(root)], "notes.pt"),
        ("missing data root", [str(ckpt), "--data-root", str(tmp / "nowhere")], "nowhere"),
        ("root without metadata", [str(ckpt), "--data-root", str(empty_root)], "metadata.csv"),
        ("n-valid 0", good + ["--n-valid", "0"], "--n-valid"),
        ("n-valid too large", good + ["--n-valid", "100000"], "n_valid"),
        ("unknown metric", good + ["--metrics", "pesq,mos9000"], "mos9000"),
        ("json in missing dir", good + ["--json", str(tmp / "no" / "x.json")], "does not exist"),
        ("json is a directory", good + ["--json", str(tmp)], "directory"),
        ("negative max-seconds", good + ["--max-seconds", "-1"], "--max-seconds"),
        ("nan max-seconds", good + ["--max-seconds", "nan"], "--max-seconds"),
        ("negative nll-max-seconds", good + ["--nll-max-seconds", "-1"], "--nll-max-seconds"),
        ("max-clips 0", good + ["--max-clips", "0"], "--max-clips"),
        ("negative sigma", good + ["--sigma", "-0.5"], "--sigma"),
        ("negative griffin-lim", good + ["--griffin-lim-iters", "-3"], "--griffin-lim-iters"),
        ("bogus device", good + ["--device", "tpu9"], "tpu9"),
        ("no data root", [str(ckpt)], "--data-root"),
        ("too few names", good + ["--names", "a,b"], "--names"),
        ("name of a reference row", good + ["--names", "real"], "--names"),
        ("report is a file", good + ["--report", str(text)], "--report"),
        ("report under a file", good + ["--report", str(text / "report")], "--report"),
    ]


def test_bad_input_is_one_line_exit_2(waveglow_ckpt, ljspeech_root, tmp_path, capsys):
    for what, argv, needle in _bad_inputs(tmp_path, waveglow_ckpt, ljspeech_root):
        code = _run(argv)
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert code == 2, f"{what}: exit {code}, stderr {err!r}"
        assert len(err.splitlines()) == 1 and err.startswith(PROG), f"{what}: {err!r}"
        assert needle in err, f"{what}: {err!r} does not name {needle!r}"
        assert captured.out == "", f"{what}: wrote to stdout"
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.png"))


def test_entry_point_exit_status(tmp_path, ljspeech_root):
    proc = subprocess.run([sys.executable, "-m", "wavflow.evaluate", str(tmp_path / "missing.pt"), "--data-root",
                           str(ljspeech_root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "missing.pt" in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# --report DIR

REPORT_SYSTEMS = ("real", "griffin-lim-4", "<i>glow</i>")


@pytest.fixture(scope="module")
def html_report(ljspeech_root, tmp_path_factory):
    """evaluate --report on 2 clips x 0.5 s with pitch, a checkpoint file at '<b>x</b>.pt' and a row name with
    markup; every audio tensor handed to clip_metrics is recorded, in scoring order (the recordings' clips, then
    Griffin-Lim's, then the vocoder's)."""
    import wavflow.evaluate

    tmp = tmp_path_factory.mktemp("report")
    (tmp / "<b>x<").mkdir()
    ckpt = tmp / "<b>x</b>.pt"  # a directory '<b>x<' holding 'b>.pt': '/' cannot be part of a file name
    torch.manual_seed(0)
    save_checkpoint(ckpt, model_payload(build_model("waveglow", WaveGlowConfig.tiny()), step=3))
    scored: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_clip_metrics = wavflow.evaluate.clip_metrics

    def recording(estimate, reference, *args, **kwargs):
        scored.append((estimate, reference))
        return real_clip_metrics(estimate, reference, *args, **kwargs)

    out = tmp / "out"
    argv = [str(ckpt), "--names", REPORT_SYSTEMS[2], "--data-root", str(ljspeech_root), "--max-clips", "2",
            "--max-seconds", str(SECONDS), "--griffin-lim-iters", "4", "--no-nll", "--metrics", "pitch",
            "--json", str(tmp / "eval.json"), "--report", str(out), "--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wavflow.evaluate, "clip_metrics", recording)
        assert _run(argv) == 0
    index = out / "index.html"
    text = index.read_text(encoding="utf-8")
    return index, text, Page(text), json.loads((tmp / "eval.json").read_text()), scored, ckpt


def _local(index: Path, url: str) -> Path:
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not parts.path.startswith("/"), f"not relative: {url}"
    return index.parent / unquote(parts.path)


def test_report_page_parses_and_refers_only_to_its_files(html_report):
    index, text, page, r, _, _ = html_report
    n = len(r["clips"]) * len(REPORT_SYSTEMS)
    assert [s["name"] for s in r["systems"]] == list(REPORT_SYSTEMS)
    assert text.startswith("<!DOCTYPE html>") and page.errors == []
    assert len(page.all("audio")) == n and len(page.all("img")) == 2 * n  # spectrogram + pitch contour
    urls = [a["src"] for t in ("audio", "img") for a in page.all(t)]
    urls += [a["href"] for a in page.all("a") if not a["href"].startswith("#")]
    assert len(urls) == 4 * n
    for url in urls:
        path = _local(index, url)
        assert path.is_file() and path.stat().st_size > 0, url
        assert path.resolve().is_relative_to(index.parent.resolve()), url
    assert not page.all("link") and all("src" not in a for a in page.all("script"))  # nothing from elsewhere
    # The metrics table: a row per system, the reference rows included.
    table = Page(text[text.index('<table class="sortable'): text.index("</table>")])
    assert len([t for t, _ in table.tags if t == "tr"]) == 1 + len(REPORT_SYSTEMS)
    cells = "".join(table.text)
    assert all(name in cells for name in REPORT_SYSTEMS)


def test_report_audio_is_the_audio_evaluate_scored(html_report, ljspeech_root):
    index, _, page, r, scored, _ = html_report
    clips = [c["id"] for c in r["clips"]]
    assert len(scored) == len(REPORT_SYSTEMS) * len(clips)
    srcs = [a["src"] for a in page.all("audio")]
    # The page: clip by clip, the systems in the table's order; the scoring: system by system, clip by clip.
    order = [(c, s) for c in range(len(clips)) for s in range(len(REPORT_SYSTEMS))]
    for src, (clip_index, system_index) in zip(srcs, order, strict=True):
        estimate, reference = scored[system_index * len(clips) + clip_index]
        if system_index == 0:  # the recordings row scores the recording itself, cut as --max-seconds says
            assert estimate is reference
            expected = load_audio(fixture_clip(clips[clip_index]), 22050)[:CROP]
            torch.testing.assert_close(reference, expected, rtol=0, atol=0)
        info = sf.info(str(_local(index, src)))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 22050, 1)
        decoded, _ = sf.read(str(_local(index, src)), dtype="float32")
        # 16-bit: round(x * 32767) read back / 32768
        np.testing.assert_allclose(decoded, estimate.clamp(-1, 1).numpy(), rtol=0, atol=1.5 / 32768, err_msg=src)


def test_report_names_with_markup_are_text(html_report):
    _, text, page, r, _, ckpt = html_report
    assert "<b>" not in text and "<i>" not in text and not page.all("b") and not page.all("i")
    assert "&lt;i&gt;glow&lt;/i&gt;" in text and "&lt;b&gt;x&lt;/b&gt;.pt" in text
    shown = "".join(page.text)
    assert str(ckpt) in shown and "<i>glow</i>" in shown
    assert file_sha256(ckpt)[:12] in shown  # the checkpoint's sha256 prefix
    assert "griffin_lim_iters" in shown and r["settings"]["device"] in shown


@pytest.mark.skipif(BROWSER is None, reason="no chromium (or chromium-browser) on PATH")
def test_report_plays_in_chromium_from_the_file_system(html_report, tmp_path):
    """Opened from the file system in headless Chromium, every player of evaluate's page knows its clip's
    duration, and the metrics table sorts by a click."""
    index, text, _, r, _, _ = html_report
    probe = index.parent / "probe.html"  # beside index.html, so its relative references hold
    probe.write_text(text.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    try:
        run = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the probe did not report (rc {run.returncode}): {run.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    n = len(r["clips"]) * len(REPORT_SYSTEMS)
    assert result["errors"] == [None] * n
    assert [float(d) for d in result["durations"]] == pytest.approx([CROP / 22050] * n, abs=0.01)
    by_l1 = [row["name"] for row in sorted(r["systems"], key=lambda row: row["logmel_l1"])]
    assert result["up"] == by_l1 and result["down"] == by_l1[::-1]


def test_report_keeps_the_pitch_tracks_it_scored(ljspeech_root, monkeypatch):
    """With the pitch metrics, each system's audio is tracked once, and the track kept for the report is the one
    the metrics compared; the recordings' row reuses the recordings' tracks."""
    import wavflow.evaluate as ev
    import wavflow.metrics

    tracked = []
    real_track = wavflow.metrics.track_pitch
    monkeypatch.setattr(wavflow.metrics, "track_pitch", lambda audio, settings: tracked.append(audio) or
                        real_track(audio, settings))
    compared = []
    real_clip_metrics = ev.clip_metrics
    monkeypatch.setattr(ev, "clip_metrics", lambda *args, **kwargs: compared.append(kwargs) or
                        real_clip_metrics(*args, **kwargs))
    clips = ev.load_clips(ljspeech_root, 20, 2, SECONDS, MelConfig())
    optional = wavflow.metrics.require_metrics(["pitch"])
    pitch = ev.recording_pitch(clips, MelConfig(), optional)
    real, gl = ev.evaluate_references(clips, MelConfig(), optional, 4, 0, pitch)
    assert len(tracked) == 2 * len(clips)  # the recordings, then Griffin-Lim's audio: nothing tracked twice
    for i, clip in enumerate(clips):
        assert real.audio[clip.id] is clip.audio and real.pitch[clip.id] is pitch[clip.id]
        assert compared[i]["estimate_pitch"] is pitch[clip.id]
        torch.testing.assert_close(tracked[len(clips) + i], gl.audio[clip.id], rtol=0, atol=0)
        assert compared[len(clips) + i]["estimate_pitch"] is gl.pitch[clip.id]
        assert len(gl.pitch[clip.id]) == MelConfig().num_frames(clip.audio.shape[0])


def _refused_report(ckpt: Path, root: Path, tmp: Path, report: Path, capsys) -> str:
    """Run evaluate with --json, --plot and a bad --report: exit 2, one line, nothing written; the line."""
    before = snapshot(tmp)
    code = _run([str(ckpt), "--data-root", str(root), "--json", str(tmp / "e.json"), "--plot", str(tmp / "e.png"),
                 "--report", str(report)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(PROG) and "--report" in err, err
    assert snapshot(tmp) == before  # no JSON, no figure, no report directory
    return err


def test_report_under_a_file_is_refused_before_any_work(waveglow_ckpt, ljspeech_root, tmp_path, capsys):
    (tmp_path / "eval.txt").write_text("a file, not a directory")
    err = _refused_report(waveglow_ckpt, ljspeech_root, tmp_path, tmp_path / "eval.txt" / "report", capsys)
    assert "eval.txt is not a directory" in err
    err = _refused_report(waveglow_ckpt, ljspeech_root, tmp_path, tmp_path / "eval.txt", capsys)
    assert "eval.txt is not a directory" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_report_dir_is_refused_before_any_work(waveglow_ckpt, ljspeech_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _refused_report(waveglow_ckpt, ljspeech_root, tmp_path, locked / "report", capsys)
        assert "locked" in err
    finally:
        locked.chmod(0o700)


def test_a_source_model_is_also_scored_given_the_recordings_pitch(waveglow_ckpt, ljspeech_root, tmp_path):
    """With the recordings' pitch tracks, a model with a source gets a second NLL, given them as it trains
    (metrics.pooled_nll's `pitch`); the row's NLL stays the one it samples by; a plain model gets no second."""
    import wavflow.evaluate as ev

    torch.manual_seed(0)
    source = build_model("waveglow", WaveGlowConfig(**{**WaveGlowConfig.tiny().__dict__, "source": True,
                                                       "source_channels": 8, "source_harmonics": 4}))
    with torch.no_grad():
        source.harmonics.out.weight.normal_(0.0, 0.02)
    save_checkpoint(tmp_path / "source.pt", model_payload(source, step=3))
    clips = ev.load_clips(ljspeech_root, 20, 2, SECONDS, MelConfig())
    frames = {c.id: MelConfig().num_frames(c.audio.shape[0]) for c in clips}
    pitch = {i: PitchTrack(np.full(n, 140.0, np.float32), np.arange(n) % 4 != 0) for i, n in frames.items()}
    run = {"device": torch.device("cpu"), "metric_mel": MelConfig(), "optional": {}, "nll_cap": None,
           "skip_nll": False, "seed": 0, "infer_options": {}, "log": lambda msg: None, "reference_pitch": pitch}
    checkpoint = ev.load_model(tmp_path / "source.pt", torch.device("cpu"))
    row = ev.evaluate_checkpoint(checkpoint, clips, **run).summary()
    total, count = pooled_nll(checkpoint.model, [c.audio for c in clips], pitch=[pitch[c.id] for c in clips])
    assert row["nll_samples"] == count and row["nll_given_pitch_nats"] == pytest.approx(total / count, rel=1e-6)
    assert abs(row["nll_given_pitch_nats"] - row["nll_nats"]) > 1e-4
    plain = ev.evaluate_checkpoint(ev.load_model(waveglow_ckpt, torch.device("cpu")), clips, **run).summary()
    assert plain["nll_nats"] is not None and "nll_given_pitch_nats" not in plain
