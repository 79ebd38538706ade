"""Bookkeeping of the equal-budget CPU experiment (cpu_experiment.sh): pitch checks, the best variant, the report.

    python recipes/ljspeech/cpu_experiment.py check OUT/VARIANT MINUTES     # append a pitch check to checks.jsonl
    python recipes/ljspeech/cpu_experiment.py best OUT/eval/results.json    # print the best variant's name
    python recipes/ljspeech/cpu_experiment.py report OUT MINUTES RESULTS.json...  # OUT/results.md, OUT/spectrograms.png
    python recipes/ljspeech/cpu_experiment.py decide OUT JUDGE.json SHIPPED INSTALL  # cpu_continue.sh's last stage
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from pathlib import Path

GPE_TARGET = 0.2


def _last_step(run: Path) -> tuple[int, int]:
    """(optimizer steps, audio samples seen) of a run, from its log.jsonl."""
    steps, samples, _ = _run_totals(run)
    return steps, samples


def _run_totals(run: Path) -> tuple[int, int, float]:
    """(optimizer steps, audio samples seen, CPU seconds) of a run over all its processes, from its log.jsonl.

    A process that ended normally or by a signal wrote a summary (run/end) with its samples and CPU seconds. One
    that was killed (SIGKILL, a machine restart) did not: its log windows count instead, the last one's running
    totals (run/samples, run/cpu_seconds), or in logs older than those, each window's steps times its samples per
    step and its wall time for CPU time (an estimate, right for one thread on an idle core; the first window of
    such a process is not counted). A new process shows as a summary before it, a window whose step is not past
    the last one (it resumed from an earlier checkpoint), or running totals that fell.
    """
    steps, samples, cpu = 0, 0, 0.0
    open_process: dict | None = None  # the windows of a process not yet closed by its summary

    def count_killed() -> None:
        nonlocal samples, cpu
        if open_process is not None:
            samples += open_process["samples"]
            cpu += open_process["cpu"]

    log = run / "log.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        record = json.loads(line)
        step = int(record.get("step", 0))
        steps = max(steps, step)
        if "run/end" in record:
            samples += int(record["run/samples"])
            cpu += float(record.get("run/cpu_seconds") or 0.0)
            open_process = None
        elif "train/steps_per_s" in record:
            rate, per_s = record["train/steps_per_s"], record["train/samples_per_s"]
            running = "run/samples" in record
            if open_process is not None and (step <= open_process["step"] or (
                    running and record["run/cpu_seconds"] < open_process["cpu"])):
                count_killed()
                open_process = None
            if running:
                open_process = {"step": step, "samples": int(record["run/samples"]),
                                "cpu": float(record["run/cpu_seconds"])}
            elif open_process is None:
                # an old log's first window of a process: how many steps it held is not recorded; not counted
                open_process = {"step": step, "samples": 0, "cpu": 0.0}
            else:
                window = step - open_process["step"]
                open_process = {"step": step, "samples": open_process["samples"] + round(window * per_s / rate),
                                "cpu": open_process["cpu"] + window / rate}
    count_killed()
    return steps, samples, cpu


def check(run: Path, minutes: int) -> None:
    row = json.loads((run / f"check-{minutes}.json").read_text())["systems"][-1]
    steps, samples = _last_step(run)
    record = {"minutes": minutes, "steps": steps, "samples": samples, "gpe": row.get("gpe"), "vde": row.get("vde")}
    with open(run / "checks.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{run.name}: {minutes} min, step {steps}: GPE {_pct(row.get('gpe'))}, V/UV error {_pct(row.get('vde'))}")


def _gpe(row: dict) -> float:
    value = row.get("gpe")
    return 1.0 if value is None or not math.isfinite(value) else value


def best(results: Path) -> str:
    """Pitch first (GPE <= 20%), then DNSMOS P.808."""
    rows = [r for r in json.loads(results.read_text())["systems"] if r["kind"] == "vocoder"]
    rows.sort(key=lambda r: (_gpe(r) > GPE_TARGET, -(r.get("dnsmos_p808") or 0.0), _gpe(r)))
    return rows[0]["name"]


def _pct(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _first_pitch(run: Path) -> str:
    checks = run / "checks.jsonl"
    if not checks.is_file():
        return "-"
    for line in checks.read_text().splitlines():
        record = json.loads(line)
        if record.get("gpe") is not None and math.isfinite(record["gpe"]) and record["gpe"] <= GPE_TARGET:
            return str(record["minutes"])
    return "not reached"


def report(out: Path, minutes: int, results: list[Path]) -> None:
    rows, seen = [], set()
    for path in results:
        for row in json.loads(path.read_text())["systems"]:
            if row["name"] not in seen:
                seen.add(row["name"])
                rows.append(row)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    lines = [f"Equal-budget CPU experiment: {minutes} minutes per variant, one thread each, on {model} "
             f"(Python {platform.python_version()}). Held-out: {len(json.loads(results[0].read_text())['clips'])} "
             "validation clips, whole. GPE <= 20% first reached: pitch checks on 6 clips x 3 s after each segment.",
             "",
             "| system | steps | samples seen | NLL (nats) | DNSMOS P.808 | GPE | V/UV error | F0 RMSE (cents) | "
             "MR-STFT | log-mel L1 | minutes to GPE <= 20% |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        run = out / row["name"]
        steps, samples = _last_step(run) if row["kind"] == "vocoder" else (0, 0)
        lines.append(
            f"| {row['name']} | {steps if steps else '-'} | {f'{samples / 1e6:.1f} M' if samples else '-'} | "
            f"{_num(row.get('nll_nats'), 4)} | {_num(row.get('dnsmos_p808'), 2)} | {_pct(row.get('gpe'))} | "
            f"{_pct(row.get('vde'))} | {_num(row.get('f0_rmse_cents'), 0)} | {_num(row.get('mrstft'))} | "
            f"{_num(row.get('logmel_l1'))} | {_first_pitch(run) if row['kind'] == 'vocoder' else '-'} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(out, [r["name"] for r in rows if r["kind"] == "vocoder"], json.loads(results[0].read_text()))


def figure(out: Path, variants: list[str], results: dict) -> None:
    """Log-mel spectrograms of the first validation clip: the recording, Griffin-Lim, each variant (seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    import wavflow
    from wavflow.data import LJSpeech, validation_clips
    from wavflow.frontend import MelConfig, mel_spectrogram
    from wavflow.metrics import griffin_lim

    mel_config = MelConfig()
    clip = validation_clips(LJSpeech(results["data_root"], "valid", results["n_valid"], mel_config=mel_config), 1)[0]
    mel = mel_spectrogram(clip.audio[None], mel_config)
    panels = [("recording", clip.audio), ("Griffin-Lim, 60 iterations",
                                          griffin_lim(mel[0], mel_config, 60, clip.audio.shape[0]))]
    for name in variants:
        model = wavflow.load(out / name / "last.pt")
        panels.append((name, wavflow.synthesize(mel, model=model, seed=0)[0][: clip.audio.shape[0]]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.5 * len(panels)), sharex=True, squeeze=False)
    seconds = clip.audio.shape[0] / mel_config.sample_rate
    for ax, (name, audio) in zip(axes[:, 0], panels, strict=True):
        m = mel_spectrogram(torch.as_tensor(audio).float()[None], mel_config)[0].numpy()
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=mel_config.silence, vmax=2.0,
                       extent=(0.0, seconds, 0, m.shape[0]), interpolation="nearest")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("mel band")
    axes[-1, 0].set_xlabel(f"time (s): {clip.id}")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="ln mel", shrink=0.9)
    fig.savefig(out / "spectrograms.png", dpi=60)  # small enough to keep in docs/
    print(f"wrote {out / 'spectrograms.png'}")


def _sampling(row: dict, option: str) -> float | None:
    """The sigma (a WaveGlow row of evaluate's JSON) or temperature (a teacher's or student's) the row sampled at:
    the one evaluate was given, else its file's own default (absent from a file written before it had one: 1)."""
    from wavflow.checkpoint import read_checkpoint

    families, default = {"sigma": (("waveglow",), None), "temperature": (("wavenet", "student"), 1.0)}[option]
    given = (row.get("infer_options") or {}).get(option)
    if given is not None or row.get("model_type") not in families or not Path(row.get("checkpoint", "")).is_file():
        return given
    return read_checkpoint(row["checkpoint"])["model_config"].get(f"infer_{option}", default)


PITCH_TARGET = 0.10  # issue 22's gross pitch error target for the WaveGlow


def paired(new: dict, old: dict, key: str) -> tuple[float, float] | None:
    """Mean and standard error of the per-clip difference new - old of figure `key` over the clips both rows score
    (evaluate's per_clip, same clips and noise seeds); None without two such clips."""
    a = {c["id"]: c.get(key) for c in new.get("per_clip") or []}
    b = {c["id"]: c.get(key) for c in old.get("per_clip") or []}
    diffs = [a[i] - b[i] for i in a if i in b and a[i] is not None and b[i] is not None
             and math.isfinite(a[i]) and math.isfinite(b[i])]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def beats(new: dict, old: dict, change: tuple[float, float] | None) -> bool:
    """The ship rule. DNSMOS P.808 better by more than two standard errors of the per-clip paired difference
    (`change`, from `paired`; by the mean where evaluate gave no per-clip figures); and gross pitch error lower (a
    file with no voiced frame counts as 100%) or, where the shipped file already meets the pitch target, still
    within it."""
    if change is None:
        dnsmos = (new.get("dnsmos_p808") or 0.0) > (old.get("dnsmos_p808") or 0.0)
    else:
        dnsmos = change[0] > 2 * change[1]
    pitch = _gpe(new) < _gpe(old) or _gpe(new) <= PITCH_TARGET >= _gpe(old)
    return dnsmos and pitch


def decide(out: Path, judge: Path, shipped: Path, install: bool) -> bool:
    """Ship the continued model when it beats the shipped one (`beats`); record the judgement. The candidate is the
    file that was judged (OUT/judged.pt, cpu_continue.sh's stage 2) where there is one, else OUT/last.pt with fp16
    weights."""
    import datetime
    import shutil

    from wavflow.checkpoint import file_sha256
    from wavflow.convert import convert

    rows = {r["name"]: r for r in json.loads(judge.read_text())["systems"]}
    old, new = rows["shipped"], rows["continued"]
    change = paired(new, old, "dnsmos_p808")
    better = beats(new, old, change)
    steps, samples, cpu = _run_totals(out)
    keys = ("nll_nats", "nll_given_pitch_nats", "dnsmos_p808", "gpe", "vde", "f0_rmse_cents", "mrstft", "logmel_l1")
    record = {"date": datetime.date.today().isoformat(), "cpu_minutes": round(cpu / 60, 1), "steps": steps,
              "samples": samples, "better": better,
              **{f"{name}/{k}": rows[name].get(k) for name in rows for k in keys},
              **{f"{name}/{option}": _sampling(rows[name], option) for name in rows
                 for option in ("sigma", "temperature")}}
    if change is not None:
        record["dnsmos_p808_change"], record["dnsmos_p808_change_se"] = change
    with open(out / "history.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(f"continued: DNSMOS P.808 {_num(new.get('dnsmos_p808'), 2)} (shipped {_num(old.get('dnsmos_p808'), 2)}"
          f"{'' if change is None else f'; per clip {change[0]:+.3f} +- {change[1]:.3f}'}), "
          f"GPE {_pct(new.get('gpe'))} (shipped {_pct(old.get('gpe'))}), after {cpu / 60:.0f} CPU-minutes in all, "
          f"step {steps}: {'better' if better else 'not better'}")
    if better:
        if (out / "judged.pt").is_file():
            shutil.copyfile(out / "judged.pt", out / "candidate.pt")
            info = {"path": str(out / "candidate.pt"), "bytes": (out / "candidate.pt").stat().st_size,
                    "sha256": file_sha256(out / "candidate.pt")}
        else:
            info = convert(out / "last.pt", out / "candidate.pt", dtype="fp16")
        print(f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MiB, sha256 {info['sha256'][:12]})")
        if install:
            shutil.copyfile(out / "candidate.pt", shipped.with_name(f".{shipped.name}.tmp"))
            shipped.with_name(f".{shipped.name}.tmp").replace(shipped)
            print(f"installed {shipped}")
    return better


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "check":
        check(Path(args[0]), int(args[1]))
    elif command == "best":
        print(best(Path(args[0])))
    elif command == "report":
        report(Path(args[0]), int(args[1]), [Path(a) for a in args[2:]])
    elif command == "decide":
        decide(Path(args[0]), Path(args[1]), Path(args[2]), args[3] == "1")
    else:
        sys.exit(f"cpu_experiment.py: unknown command {command}")
