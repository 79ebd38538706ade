"""A self-contained HTML report of an evaluation (wavflow.evaluate): the metrics table, then per clip every
system's audio, log-mel spectrogram and pitch contour, to listen to and look at side by side.

    index = write_report(Path("eval-report"), report, audio, sample_rate, mel_config, pitch)

writes

    DIR/index.html                    the page: inline CSS, and a few lines of inline script that sort the table
    DIR/audio/<system>/<clip>.flac    each system's audio of each clip, 16-bit FLAC
    DIR/img/<system>/<clip>-mel.png   its log-mel spectrogram
    DIR/img/<system>/<clip>-f0.png    its F0 over the recording's (only where pitch tracks are given)

and refers to every file relatively, so the directory opens from the file system, and can be zipped, copied or
served as it is: no script, font or style sheet comes from a network. <system> and <clip> are file-name-safe
forms of the names (safe_names: ASCII letters, digits, '.', '_', '-'), kept distinct; the page shows the names
themselves, HTML-escaped. Files of the directory that the report does not write are left alone.

Colour scale: every spectrogram of one clip shares one, from the mel convention's silence floor
(MelConfig.silence) to the loudest bin of any system's version of that clip (clip_colour_range). So one colour is
one level across the rows a reader compares; the scale fits any mel convention (natural log, log10, normalised),
where a fixed top such as the 2.0 of evaluate's --plot fits only the default one; and no system's peaks are
clipped, so a vocoder's overshoot shows as it is. Different clips may have different scales; the page says each.
"""
from __future__ import annotations

import contextlib
import html
import json
import math
import os
import platform
import re
import subprocess
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import soundfile as sf
import torch

from .audio import to_int16
from .errors import WavflowError
from .fileio import atomic_write
from .frontend import MelConfig, mel_spectrogram
from .metrics import METRIC_KEYS
from .pitch import FMAX, FMIN, PitchTrack

RECORDINGS_ROW = "real"  # evaluate's name of the recordings row, the one a pitch contour is drawn over
F0_TICKS = (50, 70, 100, 140, 200, 280, 400, 560, 800)  # Hz, half an octave apart
SHA_PREFIX = 12  # hex digits of a checkpoint's sha256 in the table: enough to tell files apart, short to read

# (key, header, format, which way is better): evaluate's columns, plus the parts of MR-STFT and DNSMOS that its
# markdown table leaves out. A metric key missing here still gets a column (_columns), headed by its key.
COLUMNS = (("nll_nats", "NLL (nats)", "{:.3f}", "lower"), ("logmel_l1", "log-mel L1", "{:.3f}", "lower"),
           ("mrstft", "MR-STFT", "{:.3f}", "lower"), ("mrstft_sc", "MR-STFT SC", "{:.3f}", "lower"),
           ("mrstft_logmag", "MR-STFT log-mag", "{:.3f}", "lower"), ("pesq_wb", "PESQ-WB", "{:.2f}", "higher"),
           ("stoi", "STOI", "{:.3f}", "higher"), ("dnsmos_ovrl", "DNSMOS OVRL", "{:.2f}", "higher"),
           ("dnsmos_sig", "DNSMOS SIG", "{:.2f}", "higher"), ("dnsmos_bak", "DNSMOS BAK", "{:.2f}", "higher"),
           ("dnsmos_p808", "DNSMOS P.808", "{:.2f}", "higher"), ("gpe", "GPE", "{:.3f}", "lower"),
           ("vde", "VDE", "{:.3f}", "lower"), ("f0_rmse_cents", "F0 RMSE (cents)", "{:.1f}", "lower"),
           ("rtf", "RTF", "{:.3g}", "lower"))


# ----------------------------------------------------------------------------------------------------------------
# Names and numbers

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Device names that Windows will not create as files, whatever the extension: a report may be copied there.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_names(names: Iterable[str], max_length: int = 60) -> dict[str, str]:
    """A file-name-safe, distinct stem for each name: accents folded to ASCII, every run of other characters
    (path separators, spaces, markup, control characters) one '-', no leading or trailing '.', '-' or '_' (no
    hidden files, no '..'), at most `max_length` characters. Stems that would coincide, compared ignoring case
    (as macOS and Windows file systems do), get '-2', '-3', ... in the order of `names`."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in out:
            continue
        ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
        base = _UNSAFE.sub("-", ascii_name)[:max_length].strip("._-") or "x"
        if base.split(".")[0].lower() in _RESERVED:
            base = f"{base}_"
        stem, k = base, 2
        while stem.lower() in taken:
            stem, k = f"{base}-{k}", k + 1
        taken.add(stem.lower())
        out[name] = stem
    return out


def _number(value: Any) -> float | None:
    """A table value as a float, None where there is none to sort by (missing, NaN, text). The strings "inf" and
    "-inf" are numbers: evaluate's JSON writes infinities so."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, str)):
        return None
    try:
        value = float(value)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _sort_key(value: Any) -> str:
    """A data-sort attribute: a number as JavaScript's Number() reads it back, "" for none."""
    number = _number(value)
    if number is None:
        return ""
    return repr(number) if math.isfinite(number) else ("Infinity" if number > 0 else "-Infinity")


def _format(value: Any, fmt: str) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, str):  # evaluate's JSON writes infinities as "inf" / "-inf"
        return value
    return "nan" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def machine_description(device: str | None = None) -> str:
    """The CPU's model name (lscpu's "Model name" on Linux, else platform.processor()) and its logical CPUs, with
    the GPU's name when `device` is a CUDA device this process sees."""
    cpu = ""
    if platform.system() == "Linux":
        try:  # C locale: lscpu translates its field names
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                 env={**os.environ, "LC_ALL": "C"}).stdout
            cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                        if line.strip().startswith("Model name:")), "")
        except (OSError, subprocess.SubprocessError):
            pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    text = f"{cpu} ({os.cpu_count()} logical CPUs)"
    if device and device.startswith("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, AssertionError, ValueError):
            text = f"{torch.cuda.get_device_name(torch.device(device))}; {text}"
    return text


# ----------------------------------------------------------------------------------------------------------------
# Figures

def clip_colour_range(mels: Iterable[np.ndarray | torch.Tensor], mel_config: MelConfig) -> tuple[float, float]:
    """The colour scale of one clip's spectrograms (log-mels [n_mels, F], one per system): from the convention's
    silence floor to the largest finite value of any of them, or to floor + 1 where none rises 0.001 above the
    floor (silence: a float32 mel's floor is a rounding above the float64 one, and no scale can be that narrow)."""
    lo = float(mel_config.silence)
    top = [float(np.max(m[np.isfinite(m)])) for m in (np.asarray(x, dtype=np.float64) for x in mels)
           if np.isfinite(m).any()]
    hi = max(top, default=lo)
    return lo, hi if hi > lo + 1e-3 else lo + 1.0


def _figure(width: float, height: float):
    # A Figure on its own Agg canvas, not pyplot: no global backend switch or figure registry in the caller's
    # process (a notebook's, or a training run's).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_mel(path: Path, mel: np.ndarray, seconds: float, colour_range: tuple[float, float],
             axis_seconds: float | None = None) -> None:
    """A log-mel [n_mels, F] of `seconds` of audio as a PNG, on the colour scale `colour_range` (vmin, vmax), its
    time axis 0..`axis_seconds` (default `seconds`: the rows of a clip share the longest one's)."""
    fig = _figure(7.0, 1.9)
    ax = fig.add_axes((0.07, 0.22, 0.8, 0.72))
    cax = fig.add_axes((0.89, 0.22, 0.015, 0.72))
    im = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=colour_range[0], vmax=colour_range[1],
                   extent=(0.0, seconds, 0, mel.shape[0]))
    ax.set_xlim(0.0, seconds if axis_seconds is None else axis_seconds)
    ax.set_xlabel("time (s)", fontsize=8, labelpad=1)
    ax.set_ylabel("mel band", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
    _save_png(fig, path)


def pitch_range(tracks: Iterable[PitchTrack]) -> tuple[float, float]:
    """The F0 axis (Hz) shared by one clip's contours: the voiced frames' span of all of them, with a margin,
    or the tracker's search range where none is voiced."""
    voiced = [t.f0[t.voiced] for t in tracks if len(t) and t.voiced.any()]
    if not voiced:
        return FMIN, FMAX
    values = np.concatenate(voiced).astype(np.float64)
    return float(values.min()) / 1.15, float(values.max()) * 1.15


def plot_pitch(path: Path, track: PitchTrack, reference: PitchTrack | None, frame_seconds: float,
               seconds: float, f0_range: tuple[float, float]) -> None:
    """F0 [F] of a system (colour) over the recording's (grey) as a PNG, unvoiced frames left blank; time axis
    0..`seconds`, F0 axis `f0_range` in Hz on a log scale (equal intervals, equal musical steps)."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    fig = _figure(7.0, 1.6)
    ax = fig.add_axes((0.07, 0.25, 0.8, 0.68))
    for t, style in ((reference, {"color": "0.6", "lw": 3.0}), (track, {"color": "tab:blue", "lw": 1.3})):
        if t is None or not len(t):
            continue
        f0 = np.where(t.voiced, t.f0, np.nan)  # NaN breaks the line: no contour across an unvoiced stretch
        ax.plot(np.arange(len(t)) * frame_seconds, f0, **style)
    ax.set_yscale("log")
    ax.set_xlim(0.0, seconds)
    ax.set_ylim(*f0_range)
    # Labelled ticks in Hz at round values: a log axis's own ticks are decades, often none in a voice's range.
    ticks = [f for f in F0_TICKS if f0_range[0] <= f <= f0_range[1]] or [math.sqrt(f0_range[0] * f0_range[1])]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.0f"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("time (s)", fontsize=8, labelpad=1)
    ax.set_ylabel("F0 (Hz)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="major", lw=0.4, alpha=0.5)
    _save_png(fig, path)


def _write_flac(path: Path, audio: torch.Tensor, sample_rate: int) -> None:
    pcm = to_int16(audio).reshape(-1)  # 16-bit as save_wav writes: clipped to [-1, 1], x 32767, rounded
    atomic_write(path, lambda f: sf.write(f, pcm, sample_rate, subtype="PCM_16", format="FLAC"))


# ----------------------------------------------------------------------------------------------------------------
# The page

STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; } h3 { margin: 1.4em 0 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: middle; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
table.clip td { padding: 4px; } table.clip img { display: block; }
table.clip th[scope="row"] { min-width: 10em; max-width: 16em; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; }
.note, .metrics { color: #555; font-size: 0.9em; font-weight: normal; }
td.path { max-width: 24em; overflow-wrap: anywhere; }
nav a { margin-right: 0.8em; }
"""

# Click a header: sort the rows by that column, ascending, then descending on the next click. A cell's data-sort
# (numeric columns) is what sorts; an empty one (no value, NaN) goes last either way.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _e(value: Any) -> str:
    """Text or an attribute value, HTML-escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def _href(relative: str) -> str:
    """A relative path as an attribute value: URL-quoted, then HTML-escaped."""
    return _e(quote(relative))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The metric columns that hold a value in some row, unknown metric keys after the known ones."""
    known = {c[0] for c in COLUMNS}
    extra = [(k, k, "{:.3g}", "") for k in METRIC_KEYS if k not in known]
    return [c for c in (*COLUMNS, *extra) if any(r.get(c[0]) is not None for r in rows)]


def _num_cell(value: Any, fmt: str) -> str:
    return f'<td class="num" data-sort="{_sort_key(value)}">{_e(_format(value, fmt))}</td>'


def _metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(rows)
    head = ['<th scope="col">system</th>', '<th scope="col">kind</th>']
    for key, label, _, better in columns:
        arrow = {"lower": " \u2193", "higher": " \u2191"}.get(better, "")
        tip = f"{key}; {better} is better" if better else key
        head.append(f'<th scope="col" title="{_e(tip)}">{_e(label + arrow)}</th>')
    head += ['<th scope="col">checkpoint</th>', '<th scope="col">sha256</th>', '<th scope="col">model</th>',
             '<th scope="col">parameters</th>', '<th scope="col">step</th>', '<th scope="col">settings</th>']
    body = []
    for r in rows:
        cells = [f"<td>{_e(r.get('name', ''))}</td>", f"<td>{_e(r.get('kind', ''))}</td>"]
        cells += [_num_cell(r.get(key), fmt) for key, _, fmt, _ in columns]
        checkpoint = r.get("checkpoint")
        sha = r.get("sha256")
        # The path as evaluate was given it: a file name alone would not tell run1/best.pt from run2/best.pt.
        cells.append(f'<td class="path">{_e(checkpoint)}</td>' if checkpoint else "<td></td>")
        cells.append(f'<td class="mono" title="{_e(sha)}">{_e(str(sha)[:SHA_PREFIX])}</td>' if sha else "<td></td>")
        cells.append(f"<td>{_e(r.get('model_type') or '')}</td>")
        cells.append(_num_cell(r.get("parameters"), "{:,}"))
        cells.append(_num_cell(r.get("step"), "{}"))
        cells.append(f"<td>{_e(_row_settings(r))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table class="sortable metrics-table">\n<thead><tr>' + "".join(head) + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


def _row_settings(row: Mapping[str, Any]) -> str:
    """What produced a row beyond the run's settings: a vocoder's inference options and NLL cap, a reference
    row's description."""
    parts = []
    if row.get("infer_options"):
        parts.append(", ".join(f"{k}={_setting(v)}" for k, v in row["infer_options"].items()))
    if row.get("nll_seconds_per_clip") is not None:
        parts.append(f"NLL over the first {row['nll_seconds_per_clip']:.2f} s of each clip")
    if row.get("description"):
        parts.append(str(row["description"]))
    return "; ".join(parts)


def _settings_table(report: Mapping[str, Any], machine: str, created: datetime) -> str:
    items: list[tuple[str, Any]] = [("date", created.isoformat(timespec="seconds")), ("machine", machine)]
    items += [(k, report.get(k)) for k in ("data_root", "n_valid", "sample_rate", "metrics") if k in report]
    items.append(("clips", len(report.get("clips", []))))
    items += list((report.get("settings") or {}).items())
    rows = "\n".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(_setting(v))}</td></tr>" for k, v in items)
    return f'<table class="settings">\n{rows}\n</table>'


@dataclass
class _Entry:
    """One system's version of one clip, and where the report puts its files (relative to the directory)."""
    system: str
    audio: torch.Tensor  # [T]
    mel: np.ndarray  # [n_mels, F]
    flac: str
    mel_png: str
    pitch_png: str | None


def _clip_metrics(row: Mapping[str, Any] | None, clip_id: str, columns: Sequence[tuple[str, str, str, str]]) -> str:
    per_clip = next((c for c in (row or {}).get("per_clip") or [] if c.get("id") == clip_id), None)
    if per_clip is None:
        return ""
    parts = [f"{label} {_format(per_clip[key], fmt)}" for key, label, fmt, _ in columns
             if per_clip.get(key) is not None]
    return " \u00b7 ".join(parts)


def write_report(directory: str | os.PathLike, report: Mapping[str, Any],
                 audio: Mapping[str, Mapping[str, torch.Tensor]], sample_rate: int, mel_config: MelConfig,
                 pitch: Mapping[str, Mapping[str, PitchTrack]] | None = None, *, machine: str | None = None,
                 created: datetime | None = None, title: str = "wavflow evaluation") -> Path:
    """Write the HTML report of an evaluation into `directory` (created if missing) and return its index.html.

    report: wavflow.evaluate's JSON dict (clips, settings, systems rows; NaN or null for a missing figure).
    audio:  audio[system name][clip id] -> that system's audio of that clip, 1-D [T] at `sample_rate`; the
            recordings row is "real". Systems are shown in the order of report["systems"], then any others of
            `audio`; clips in the order of report["clips"]; a system without a clip's audio has no row there.
    mel_config: the metric mel (evaluate's MelConfig at the models' rate) of the spectrograms and their floor.
    pitch:  pitch[system name][clip id] -> its PitchTrack (F0 [F] Hz, voiced [F], frames one hop of `mel_config`
            apart), when the pitch metrics ran: each system's contour is drawn over pitch["real"][clip id].
    machine: what ran the evaluation (default: machine_description of report["settings"]["device"]);
    created: the report's date (default: now, local time).

    The FLAC and PNG files are written before the page, and each file atomically, so an index.html that exists
    refers only to complete files.
    """
    if sample_rate != mel_config.sample_rate:
        raise ValueError(f"write_report: audio at {sample_rate} Hz, mel at {mel_config.sample_rate} Hz")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WavflowError(f"{directory}: not a directory, cannot write the report into it")
    directory.mkdir(parents=True, exist_ok=True)
    pitch = pitch or {}
    rows = list(report.get("systems") or [])
    row_by_name = {r["name"]: r for r in rows}
    systems = [r["name"] for r in rows] + [s for s in audio if s not in row_by_name]
    clips = [c["id"] for c in report.get("clips") or []] or list(dict.fromkeys(c for a in audio.values() for c in a))
    system_file, clip_file = safe_names(systems), safe_names(clips)
    columns = _columns(rows)

    sections, shown = [], []
    for clip_id in clips:
        entries = []
        for system in systems:
            x = audio.get(system, {}).get(clip_id)
            if x is None:
                continue
            x = x.detach().float().cpu()
            if x.dim() != 1:
                raise ValueError(f"write_report: audio of {system!r}, clip {clip_id!r} has shape "
                                 f"{tuple(x.shape)}, expected [T]")
            stem = f"{system_file[system]}/{clip_file[clip_id]}"
            has_pitch = pitch.get(system, {}).get(clip_id) is not None
            entries.append(_Entry(system, x, mel_spectrogram(x[None], mel_config)[0].double().numpy(),
                                  f"audio/{stem}.flac", f"img/{stem}-mel.png",
                                  f"img/{stem}-f0.png" if has_pitch else None))
        if entries:
            shown.append(clip_id)
            sections.append(_clip_section(directory, clip_id, clip_file[clip_id], entries, report, row_by_name,
                                          columns, sample_rate, mel_config, pitch))

    machine = machine if machine is not None else machine_description((report.get("settings") or {}).get("device"))
    created = created if created is not None else datetime.now().astimezone()
    nav = " ".join(f'<a href="#{_e("clip-" + clip_file[c])}">{_e(c)}</a>' for c in shown)
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="wavflow">',
        f"<title>{_e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="note">{_e(len(clips))} clip(s), {_e(len(systems))} system(s); '
        f"{_e(created.isoformat(timespec='seconds'))}; {_e(machine)}</p>",
        "<h2>Metrics</h2>",
        '<p class="note">Means over the clips (pooled over samples for the NLL). Click a column to sort; '
        "\u2193: lower is better, \u2191: higher.</p>",
        _metrics_table(rows), "<h2>Settings</h2>", _settings_table(report, machine, created),
        "<h2>Clips</h2>", f"<nav>{nav}</nav>", *sections,
        f"<script>{SCRIPT}</script>", "</body>", "</html>", ""])
    atomic_write(directory / "index.html", lambda f: f.write(page.encode("utf-8")))
    return directory / "index.html"


def _clip_section(directory: Path, clip_id: str, clip_stem: str, entries: list[_Entry], report: Mapping[str, Any],
                  row_by_name: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str, str, str]],
                  sample_rate: int, mel_config: MelConfig, pitch: Mapping[str, Mapping[str, PitchTrack]]) -> str:
    """Write one clip's files (FLAC, spectrograms, contours) and return its section of the page."""
    colour_range = clip_colour_range([e.mel for e in entries], mel_config)
    seconds = max(e.audio.shape[0] for e in entries) / sample_rate  # one time axis for every row of the clip
    reference = pitch.get(RECORDINGS_ROW, {}).get(clip_id)
    tracks = {e.system: pitch[e.system][clip_id] for e in entries if e.pitch_png is not None}
    f0_range = pitch_range([*tracks.values(), *([reference] if reference is not None else [])])
    frame_seconds = mel_config.hop_length / sample_rate
    body = []
    for e in entries:
        for relative in (e.flac, e.mel_png, e.pitch_png):
            if relative is not None:
                (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        _write_flac(directory / e.flac, e.audio, sample_rate)
        plot_mel(directory / e.mel_png, e.mel, e.audio.shape[0] / sample_rate, colour_range, seconds)
        name = _e(e.system)
        cells = [f'<th scope="row">{name}<div class="metrics">'
                 f"{_e(_clip_metrics(row_by_name.get(e.system), clip_id, columns))}</div></th>",
                 f'<td><audio controls preload="metadata" src="{_href(e.flac)}"></audio><br>'
                 f'<a href="{_href(e.flac)}" download>FLAC</a></td>',
                 f'<td><img src="{_href(e.mel_png)}" alt="log-mel spectrogram: {name}, {_e(clip_id)}" '
                 f'data-vmin="{colour_range[0]!r}" data-vmax="{colour_range[1]!r}"></td>']
        if tracks:
            if e.pitch_png is not None:
                plot_pitch(directory / e.pitch_png, tracks[e.system], None if e.system == RECORDINGS_ROW else reference,
                           frame_seconds, seconds, f0_range)
                cells.append(f'<td><img src="{_href(e.pitch_png)}" alt="F0 contour: {name}, {_e(clip_id)}"></td>')
            else:
                cells.append("<td></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    info = next((c for c in report.get("clips") or [] if c.get("id") == clip_id), {})
    length = (f"{info['seconds']:.2f} s of {info.get('full_seconds', info['seconds']):.2f} s"
              if isinstance(info.get("seconds"), (int, float)) else f"{seconds:.2f} s")
    head = ['<th scope="col">system</th>', '<th scope="col">audio</th>',
            f'<th scope="col">log-mel, colour {colour_range[0]:.2f} to {colour_range[1]:.2f}</th>']
    if tracks:
        head.append('<th scope="col">F0 (grey: the recording)</th>')
    title = f'<h3 id="{_e("clip-" + clip_stem)}">{_e(clip_id)} <span class="note">({_e(length)})</span></h3>'
    return "\n".join([title, '<table class="clip">', "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>",
                      *body, "</tbody>", "</table>"])
