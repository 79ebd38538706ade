"""wavflow.report: the HTML evaluation report. Its page parses and refers only to files it wrote, beside it; its
audio is each system's audio; names with markup stay text; one colour scale per clip; and, where Chromium is
installed, every player of the page opened from the file system knows its clip's duration."""
from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.audio import load_audio
from wavflow.errors import WavflowError
from wavflow.evaluate import SystemResult, _json_safe
from wavflow.frontend import MelConfig, mel_spectrogram
from wavflow.metrics import METRIC_KEYS, clip_metrics
from wavflow.pitch import PitchTrack, pitch_errors
from wavflow.report import (
    COLUMNS,
    SHA_PREFIX,
    clip_colour_range,
    machine_description,
    pitch_range,
    safe_names,
    write_report,
)

from synth_helpers import clip as fixture_clip

CONFIG = MelConfig()
SR = CONFIG.sample_rate
N = 26 * CONFIG.hop_length  # 0.3 s: whole hops, as evaluate cuts its clips
CLIPS = ("LJ002-0020", "LJ001-0001")
VOCODER = "<b>x</b> model"
SYSTEMS = ("real", "griffin-lim-60", VOCODER)
CHECKPOINT = "runs/<b>x</b>.pt"
SHA = "0123456789abcdef" * 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The page's own void elements; every other tag must be closed, in order.
VOID = {"meta", "img", "br", "input", "link"}


class Page(HTMLParser):
    """Every tag with its attributes, in document order, the text, and the nesting errors found on the way."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []
        self._open: list[str] = []
        self.feed(text)
        self.close()
        if self._open:
            self.errors.append(f"never closed: {self._open}")

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self._open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self._open or self._open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self._open[-1] if self._open else 'nothing'}")
        else:
            self._open.pop()

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def _tracks(n_frames: int, base: float, seed: int) -> PitchTrack:
    """A made-up pitch track: a gliding F0 voiced over the middle of the clip (pYIN is not what is tested)."""
    rng = np.random.default_rng(seed)
    f0 = (base * 2 ** (np.linspace(0, 0.5, n_frames) + 0.02 * rng.standard_normal(n_frames))).astype(np.float32)
    voiced = np.zeros(n_frames, bool)
    voiced[n_frames // 5: 4 * n_frames // 5] = True
    return PitchTrack(np.where(voiced, f0, 0.0).astype(np.float32), voiced)


@pytest.fixture(scope="module")
def inputs() -> tuple[dict, dict, dict]:
    """(report, audio, pitch) as evaluate would hand them over: 2 clips x the recordings, Griffin-Lim and a
    vocoder whose name is markup. The vocoder is louder than the recording, so a clip's colour scale tops at
    another system's mel than the recording's."""
    gen = torch.Generator().manual_seed(0)
    real = {c: load_audio(fixture_clip(c), SR)[4096: 4096 + N] for c in CLIPS}
    audio = {"real": real,
             "griffin-lim-60": {c: 0.7 * x + 0.01 * torch.randn(N, generator=gen) for c, x in real.items()},
             VOCODER: {c: (3.0 * x).clamp(-1.0, 1.0) for c, x in real.items()}}
    frames = CONFIG.num_frames(N)
    pitch = {s: {c: _tracks(frames, 110.0 + 10 * i, seed=i) for c in CLIPS} for i, s in enumerate(SYSTEMS)}
    results = [SystemResult("real", "reference", info={"description": "the recordings themselves"}),
               SystemResult("griffin-lim-60", "griffin-lim",
                            info={"description": "librosa NNLS mel inversion + 60 Griffin-Lim iterations",
                                  "iterations": 60}),
               SystemResult(VOCODER, "vocoder", info={"checkpoint": CHECKPOINT, "sha256": SHA,
                                                      "model_type": "waveglow", "parameters": 123456, "step": 7,
                                                      "infer_options": {"sigma": 0.6}},
                            nll_nats=-3.25, nll_samples=2 * N, synthesis_seconds=0.1, audio_seconds=0.6)]
    for result in results:
        for c in CLIPS:
            metrics = clip_metrics(audio[result.name][c], real[c], SR, CONFIG, {})
            errors = pitch_errors(pitch["real"][c], pitch[result.name][c])
            metrics.update({k: errors[k] for k in ("gpe", "vde", "f0_rmse_cents")})
            result.per_clip.append({"id": c, **metrics})
    report = {
        "format": "wavflow-evaluate", "version": 1, "data_root": "tests/data/ljspeech", "n_valid": 20,
        "clips": [{"id": c, "seconds": N / SR, "full_seconds": 1.5} for c in CLIPS], "sample_rate": SR,
        "metrics": ["nll_nats", "logmel_l1", "mrstft", "pitch"],
        "settings": {"max_clips": 2, "max_seconds": 0.3, "student_nll_max_seconds": 1.0, "griffin_lim_iters": 60,
                     "seed": 0, "sigma": None, "temperature": None, "device": "cpu", "torch_threads": 1,
                     "torch": torch.__version__, "python": "3.11.2"},
        "systems": [r.summary() for r in results],
    }
    return report, audio, pitch


CREATED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory) -> tuple[Path, str, Page]:
    report, audio, pitch = inputs
    index = write_report(tmp_path_factory.mktemp("report") / "eval", report, audio, SR, CONFIG, pitch,
                         machine="<i>test</i> machine", created=CREATED)
    text = index.read_text(encoding="utf-8")
    return index, text, Page(text)


def _local(index: Path, url: str) -> Path:
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not parts.path.startswith("/"), f"not relative: {url}"
    return index.parent / unquote(parts.path)


def test_page_parses_with_one_player_and_image_per_system_and_clip(written):
    index, text, page = written
    assert index.name == "index.html" and text.startswith("<!DOCTYPE html>")
    assert page.errors == []
    assert len(page.all("table")) == 2 + len(CLIPS)  # metrics, settings, one per clip
    assert len(page.all("audio")) == len(CLIPS) * len(SYSTEMS)
    assert all("controls" in a for a in page.all("audio"))
    assert len(page.all("img")) == 2 * len(CLIPS) * len(SYSTEMS)  # spectrogram + pitch contour
    # Self-contained: nothing loaded from elsewhere, the one script inline.
    assert not page.all("link") and all("src" not in s for s in page.all("script"))
    assert not re.search(r"(?:src|href)\s*=\s*\"(?:https?:)?//", text)


def test_every_reference_is_a_file_beside_the_page(written):
    index, _, page = written
    urls = [a["src"] for t in ("audio", "img") for a in page.all(t)]
    urls += [a["href"] for a in page.all("a") if not a["href"].startswith("#")]
    assert len(urls) == 4 * len(CLIPS) * len(SYSTEMS)  # audio, its download link, two images
    for url in urls:
        path = _local(index, url)
        assert path.is_file(), url
        assert path.resolve().is_relative_to(index.parent.resolve())
        assert re.fullmatch(r"[A-Za-z0-9._/-]+", url), url  # safe names: quoting had nothing to change
    anchors = {a["id"] for t, a in page.tags if "id" in a}
    assert all(a["href"][1:] in anchors for a in page.all("a") if a["href"].startswith("#"))


def test_audio_files_hold_each_systems_audio(written, inputs):
    index, _, page = written
    _, audio, _ = inputs
    srcs = [a["src"] for a in page.all("audio")]
    expected = [(s, c) for c in CLIPS for s in SYSTEMS]  # clip by clip, the systems in the report's order
    assert len(set(srcs)) == len(srcs)
    for src, (system, clip) in zip(srcs, expected, strict=True):
        info = sf.info(str(_local(index, src)))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", SR, 1)
        decoded, _ = sf.read(str(_local(index, src)), dtype="float32")
        # 16-bit: x * 32767 rounded, read back / 32768
        np.testing.assert_allclose(decoded, audio[system][clip].numpy(), rtol=0, atol=1.5 / 32768, err_msg=src)


def test_markup_in_names_is_text(written):
    _, text, page = written
    assert "<b>" not in text and "<i>" not in text
    assert not page.all("b") and not page.all("i")
    assert "&lt;b&gt;x&lt;/b&gt; model" in text
    shown = "".join(page.text)
    assert VOCODER in shown and CHECKPOINT in shown and "<i>test</i> machine" in shown


def test_metrics_table_rows_checkpoint_and_settings(written, inputs):
    _, text, page = written
    report, _, _ = inputs
    table = text[text.index('<table class="sortable'): text.index("</table>")]
    sub = Page(table)
    rows = [a for t, a in sub.tags if t == "tr"]
    assert len(rows) == 1 + len(SYSTEMS)
    cells = "".join(sub.text)
    assert cells.index("real") < cells.index("griffin-lim-60") < cells.index(VOCODER)
    assert SHA[:SHA_PREFIX] in cells and SHA[:SHA_PREFIX + 1] not in cells
    headers = [a.get("title", "") for t, a in sub.tags if t == "th"]
    for key in ("nll_nats", "logmel_l1", "mrstft", "gpe", "vde", "f0_rmse_cents", "rtf"):
        assert any(h.startswith(key + ";") for h in headers), key
    assert not any(h.startswith("pesq_wb") for h in headers)  # not run: no column
    vocoder = report["systems"][2]
    assert f'data-sort="{vocoder["logmel_l1"]!r}"' in table and "sigma=0.6" in cells
    shown = "".join(page.text)
    assert CREATED.isoformat(timespec="seconds") in shown and "tests/data/ljspeech" in shown
    assert "griffin_lim_iters" in shown and "cpu" in shown


def test_images_are_png_and_one_clip_shares_one_colour_scale(written, inputs):
    index, _, page = written
    _, audio, _ = inputs
    for img in page.all("img"):
        assert _local(index, img["src"]).read_bytes()[:8] == PNG_MAGIC, img["src"]
    spectrograms = [a for a in page.all("img") if "data-vmin" in a]
    assert len(spectrograms) == len(CLIPS) * len(SYSTEMS)
    for i, clip in enumerate(CLIPS):
        shown = {(float(a["data-vmin"]), float(a["data-vmax"]))
                 for a in spectrograms[i * len(SYSTEMS): (i + 1) * len(SYSTEMS)]}
        mels = {s: mel_spectrogram(audio[s][clip][None], CONFIG)[0] for s in SYSTEMS}
        assert shown == {clip_colour_range(mels.values(), CONFIG)}
        lo, hi = shown.pop()
        assert lo == pytest.approx(CONFIG.silence)
        assert hi == pytest.approx(float(max(m.max() for m in mels.values())), abs=1e-5)
        assert hi > float(mels["real"].max()) + 0.5  # the louder vocoder sets the top, for the recording too


def test_clip_colour_range():
    lo = CONFIG.silence
    quiet = torch.full((80, 5), lo)
    assert clip_colour_range([quiet, quiet.numpy()], CONFIG) == (lo, lo + 1.0)  # nothing above the floor
    a, b = quiet.clone(), quiet.clone()
    a[3, 2], b[7, 1], b[0, 0] = -1.0, 1.5, math.nan
    assert clip_colour_range([a, b], CONFIG) == (lo, 1.5)  # the top of all of them, NaN ignored
    assert clip_colour_range([], CONFIG) == (lo, lo + 1.0)
    log10 = MelConfig(log_base="10")
    assert clip_colour_range([torch.zeros(80, 3)], log10) == (pytest.approx(-5.0), 0.0)


def test_pitch_range():
    voiced = PitchTrack(np.array([0, 100, 200, 0], np.float32), np.array([False, True, True, False]))
    silent = PitchTrack(np.zeros(4, np.float32), np.zeros(4, bool))
    lo, hi = pitch_range([voiced, silent])
    assert lo < 100 < 200 < hi
    assert pitch_range([silent, PitchTrack(np.zeros(0, np.float32), np.zeros(0, bool))]) == (65.0, 600.0)


def test_without_pitch_into_a_new_nested_directory_leaving_other_files(inputs, tmp_path):
    report, audio, _ = inputs
    # The JSON evaluate writes (NaN as null) works as well as the dict it holds in memory.
    report = json.loads(json.dumps(_json_safe(report)))
    directory = tmp_path / "a" / "b"
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_text("mine")
    (directory / "audio").mkdir()
    (directory / "audio" / "keep.flac").write_bytes(b"not ours")
    for _ in range(2):  # writing again over a report replaces it
        index = write_report(directory, report, audio, SR, CONFIG)
    page = Page(index.read_text(encoding="utf-8"))
    assert page.errors == []
    assert len(page.all("audio")) == len(CLIPS) * len(SYSTEMS)
    assert len(page.all("img")) == len(CLIPS) * len(SYSTEMS)
    assert not list(directory.rglob("*-f0.png"))
    assert (directory / "notes.txt").read_text() == "mine"
    assert (directory / "audio" / "keep.flac").read_bytes() == b"not ours"
    assert not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]
    fresh = write_report(tmp_path / "new" / "deeper", report, {"real": audio["real"]}, SR, CONFIG)
    assert len(Page(fresh.read_text(encoding="utf-8")).all("audio")) == len(CLIPS)  # rows only where audio is


def test_table_alone_and_infinities(inputs, tmp_path):
    report, _, _ = inputs
    report = json.loads(json.dumps(_json_safe(report)))
    report["systems"][2]["rtf"] = "inf"  # as evaluate's JSON writes an infinity
    index = write_report(tmp_path / "new", report, {}, SR, CONFIG)  # no audio: the tables, no clip section
    text = index.read_text(encoding="utf-8")
    page = Page(text)
    assert page.errors == [] and len(page.all("table")) == 2 and not page.all("audio")
    assert '<td class="num" data-sort="Infinity">inf</td>' in text  # Number("Infinity") sorts it last


def test_bad_arguments(inputs, tmp_path):
    report, audio, _ = inputs
    with pytest.raises(ValueError, match="Hz"):
        write_report(tmp_path / "r", report, audio, 16000, CONFIG)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WavflowError, match="not a directory"):
        write_report(tmp_path / "file", report, audio, SR, CONFIG)
    with pytest.raises(ValueError, match=r"\[T\]"):
        write_report(tmp_path / "r", report, {"real": {CLIPS[0]: torch.zeros(1, N)}}, SR, CONFIG)


def test_safe_names_are_plain_and_distinct():
    names = ["a/b", "a:b", "A-B", "a b", "..", "", "../../etc", "con", "naïve café", "x" * 100, "a\\b",
             "<b>x</b> model"]
    safe = safe_names(names)
    assert list(safe) == names
    for name, stem in safe.items():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem), (name, stem)
        assert len(stem) <= 64
    assert len({s.lower() for s in safe.values()}) == len(names)  # distinct on a case-insensitive file system
    assert safe["a/b"] == "a-b" and safe["a:b"] == "a-b-2" and safe["naïve café"] == "naive-cafe"
    assert safe["con"] != "con" and safe_names(names) == safe  # deterministic


def test_columns_cover_every_metric():
    assert set(METRIC_KEYS) <= {c[0] for c in COLUMNS}


def test_machine_description():
    text = machine_description("cpu")
    assert text and "logical CPUs" in text


# ----------------------------------------------------------------------------------------------------------------
# In a browser

# Added to a copy of the page: once every player has its metadata, write the durations, then the system column
# after one and two clicks on the log-mel L1 header, into the page for --dump-dom to show.
PROBE = """<script>
window.addEventListener("load", function () {
  var players = Array.prototype.slice.call(document.querySelectorAll("audio"));
  function names() {
    var body = document.querySelector("table.sortable").tBodies[0];
    return Array.prototype.map.call(body.rows, function (r) { return r.cells[0].textContent; });
  }
  Promise.all(players.map(function (a) {
    return new Promise(function (done) {
      if (a.readyState >= 1 || a.error) { done(); return; }  // loaded, or failed, before the page
      a.addEventListener("loadedmetadata", done);
      a.addEventListener("error", done);
    });
  })).then(function () {
    var head = Array.prototype.filter.call(document.querySelectorAll("table.sortable th"),
                                           function (th) { return th.title.indexOf("logmel_l1;") === 0; })[0];
    head.click();
    var up = names();
    head.click();
    var out = document.createElement("pre");
    out.id = "probe";
    out.textContent = JSON.stringify({durations: players.map(function (a) { return String(a.duration); }),
                                      errors: players.map(function (a) { return a.error && a.error.code; }),
                                      up: up, down: names()});
    document.body.appendChild(out);
  });
});
</script>"""


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="no chromium (or chromium-browser) on PATH")
def test_players_know_their_duration_in_chromium(written, inputs, tmp_path):
    index, text, _ = written
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
    assert result["errors"] == [None] * len(CLIPS) * len(SYSTEMS)
    durations = [float(d) for d in result["durations"]]
    assert len(durations) == len(CLIPS) * len(SYSTEMS)
    assert all(math.isfinite(d) and d == pytest.approx(N / SR, abs=0.01) for d in durations), durations
    rows = sorted(inputs[0]["systems"], key=lambda r: r["logmel_l1"])
    assert result["up"] == [r["name"] for r in rows] and result["down"] == result["up"][::-1]
