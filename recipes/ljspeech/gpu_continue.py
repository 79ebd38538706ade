"""The bookkeeping of gpu_continue.sh: configs, budget shares, the keep-or-replace decision, the results files.

    python recipes/ljspeech/gpu_continue.py config SRC.yaml OUT.yaml
    python recipes/ljspeech/gpu_continue.py budget --total S --elapsed S --stage MODEL --models A,B,C ...
    python recipes/ljspeech/gpu_continue.py record --model M --train-dir DIR --eval EVAL.json --candidate F ...
    python recipes/ljspeech/gpu_continue.py throughput --train-dir DIR --config NAME --out OUT
    python recipes/ljspeech/gpu_continue.py pending --model M --out OUT --reason TEXT

It imports neither torch nor wavflow's models (each call costs milliseconds): what it reads is YAML, the
trainer's log.jsonl and wavflow.evaluate's JSON. OUT/results.jsonl gets one JSON line per run and OUT/results.md
one table row per run; both are rewritten whole through a temporary file and a rename (never half written).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

MIB = 2**20
LIMIT_BYTES = 16 * MIB  # the largest file a GPU call brings back
KEYS = ("nll_nats", "nll_given_pitch_nats", "logmel_l1", "mrstft", "gpe")


def atomic_text(path: Path, text: str) -> None:
    # wavflow.fileio.atomic_write without importing wavflow (and with it torch): the same temporary-then-rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def log_records(train_dir: Path) -> list[dict[str, Any]]:
    path = train_dir / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_of(train_dir: Path) -> dict[str, Any]:
    """The trainer's closing record (run/...) and its validation NLLs (first and best)."""
    records = log_records(train_dir)
    summary = next((r for r in reversed(records) if "run/end" in r), {})
    valid = [(r["step"], r["valid/nll"]) for r in records if "valid/nll" in r]
    return {"summary": summary, "valid": valid}


# ------------------------------------------------------------------------------------------------- config

def cmd_config(args: argparse.Namespace) -> int:
    """A training config for --init: the source config without model_config, mel and teacher (the architecture
    and the mel come from the checkpoint; the teacher from the command line)."""
    config = yaml.safe_load(Path(args.src).read_text(encoding="utf-8"))
    for key in ("model_config", "mel", "teacher"):
        config.pop(key, None)
    atomic_text(Path(args.out), yaml.safe_dump(config, sort_keys=False))
    return 0


def cmd_source_of(args: argparse.Namespace) -> int:
    """The student's overrides that grow it the source of the teacher at `teacher` (one per line; nothing for a
    teacher without one): a student distils from a source teacher only with a source alike (IAFStudent)."""
    from wavflow.checkpoint import read_checkpoint

    config = read_checkpoint(args.teacher)["model_config"]
    if config.get("source_harmonics"):
        for key in ("source_harmonics", "source_channels"):
            print(f"model_config.{key}={config[key]}")
    return 0


# ------------------------------------------------------------------------------------------------- budget

def cmd_budget(args: argparse.Namespace) -> int:
    """Minutes for the next training stage: its share of the time left once every later stage's evaluation, the
    throughput slice and the closing reserve are set aside; shares of stages already done flow to later ones.
    Prints 0 when less than --min-seconds would be left."""
    models = args.models.split(",")
    shares = dict(zip(models, (float(x) for x in args.shares.split(",")), strict=True))
    reserves = dict(item.split("=") for item in args.eval_reserve.split(","))
    remaining = models[models.index(args.stage):]
    left = args.total - args.elapsed - args.closing - args.throughput
    left -= sum(float(reserves.get(m, 30)) for m in remaining)
    share = shares[args.stage] / sum(shares[m] for m in remaining)
    seconds = left * share
    print(f"{seconds / 60:.4f}" if seconds >= args.min_seconds else "0")
    return 0


# ------------------------------------------------------------------------------------------------- record

def _row(systems: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((s for s in systems if s["name"] == name), None)


def _figures(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = {k: row.get(k) for k in KEYS}
    out.update({k: row[k] for k in ("checkpoint", "sha256", "step", "parameters") if k in row})
    return out


def _read_results(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _write_results(out: Path, results: list[dict[str, Any]]) -> None:
    atomic_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    atomic_text(out / "results.md", markdown(results))


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| run | model | steps (run / total) | wall s | samples seen | samples/s | held-out NLL old -> new | "
             "log-mel L1 old -> new | MR-STFT old -> new | shipped |",
             "|---|---|---:|---:|---:|---:|---|---|---|---|"]
    gl = None
    for r in results:
        if r.get("kind") == "throughput":
            continue
        old, new = r.get("old") or {}, r.get("new") or {}
        gl = r.get("griffin_lim") or gl
        steps = f"{_fmt(r.get('steps'), ',')} / {_fmt(r.get('steps_total'), ',')}"
        lines.append(
            f"| {r['run']} | {r['model']} | {steps} | {_fmt(r.get('wall_seconds'), '.0f')} | "
            f"{_fmt(r.get('samples'), ',')} | {_fmt(r.get('samples_per_s'), ',.0f')} | "
            f"{_fmt(old.get('nll_nats'), '.4f')} -> {_fmt(new.get('nll_nats'), '.4f')} | "
            f"{_fmt(old.get('logmel_l1'), '.3f')} -> {_fmt(new.get('logmel_l1'), '.3f')} | "
            f"{_fmt(old.get('mrstft'), '.3f')} -> {_fmt(new.get('mrstft'), '.3f')} | "
            f"{'yes' if r.get('replaced') else 'no'}: {r.get('decision', '')} |")
    if gl:
        lines += ["", f"Griffin-Lim on the same clips: log-mel L1 {_fmt(gl.get('logmel_l1'), '.3f')}, MR-STFT "
                      f"{_fmt(gl.get('mrstft'), '.3f')}."]
    for r in results:
        if r.get("kind") == "throughput":
            lines += ["", f"Training throughput, {r['config']} ({_fmt(r.get('parameters'), ',')} parameters), "
                          f"{r.get('precision')}, batch {r.get('batch')} x {r.get('segment_length')} on "
                          f"{r.get('device_name')}: {_fmt(r.get('steady_samples_per_s'), ',.0f')} samples/s "
                          f"({_fmt(r.get('steps'), ',')} steps in {_fmt(r.get('train_seconds'), '.1f')} s, the first "
                          f"step left out)."]
    return "\n".join(lines) + "\n"


def cmd_record(args: argparse.Namespace) -> int:
    """Decide keep or replace for one model and append its run to the results. Prints `replace` or `keep`."""
    out = Path(args.out)
    trained = summary_of(Path(args.train_dir))
    s = trained["summary"]
    record: dict[str, Any] = {
        "kind": "continue", "run": args.run, "model": args.model, "date": time.strftime("%Y-%m-%d"),
        "device_name": args.device_name, "budget_minutes": args.budget_minutes,
        "steps": s.get("run/steps"), "wall_seconds": s.get("run/wall_seconds"),
        "train_seconds": s.get("run/train_seconds"), "samples": s.get("run/samples"),
        "samples_per_s": s.get("run/steady_samples_per_s"), "batch": s.get("run/batch"),
        "segment_length": s.get("run/segment_length"), "precision": s.get("run/precision"),
        "end": s.get("run/end"), "valid_nll_trainer": trained["valid"],
    }
    init = s.get("run/init_from") or {}
    if record["steps"] is not None and isinstance(init.get("steps_before"), int):
        record["steps_total"] = init["steps_before"] + record["steps"]
        record["steps_total_judged"] = None
    candidate = Path(args.candidate) if args.candidate else None
    decision, replace = "", False
    if candidate is None or not candidate.is_file():
        decision = "no continued checkpoint to judge"
    else:
        size = candidate.stat().st_size
        record["candidate_mib"] = size / MIB
        report = json.loads(Path(args.eval).read_text())
        systems = report["systems"]
        old, new = _figures(_row(systems, "shipped")), _figures(_row(systems, "continued"))
        griffin_lim = next((r for r in systems if r["kind"] == "griffin-lim"), None)
        record.update(old=old, new=new, griffin_lim=_figures(griffin_lim),
                      eval={"clips": len(report["clips"]), "seconds": sum(c["seconds"] for c in report["clips"]),
                            "settings": report["settings"]})
        if new and isinstance(init.get("steps_before"), int) and isinstance(new.get("step"), int):
            record["steps_total_judged"] = init["steps_before"] + new["step"]
        # A model with a source samples at its predicted pitch, which the free-running NLL mostly scores: its
        # likelihood is the one given the recordings' pitch, where both rows have it.
        nll = ("nll_given_pitch_nats" if new.get("nll_given_pitch_nats") is not None
               and old.get("nll_given_pitch_nats") is not None else "nll_nats")
        better = {k: new[k] is not None and old[k] is not None and new[k] < old[k] for k in (nll, "logmel_l1")}
        if new.get("gpe") is not None and old.get("gpe") is not None:
            better["gpe"] = new["gpe"] <= old["gpe"]  # no worse: pitch is what the source is for
        if size > LIMIT_BYTES:
            decision = f"{size / MIB:.1f} MiB is over the 16 MiB a GPU call brings back"
        elif all(better.values()):
            replace, decision = True, f"improved on {', '.join(better)}{' (gpe: no higher)' * ('gpe' in better)}"
        else:
            worse = [k for k, b in better.items() if not b]
            decision = f"{' and '.join(worse)} did not improve"
    record.update(replaced=replace, decision=decision)
    results = _read_results(out) + [record]
    _write_results(out, results)
    print("replace" if replace else "keep")
    print(f"{args.model}: {decision}", file=sys.stderr)
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    """A stage that did not run (no time left, or it failed): a results line that says so."""
    out = Path(args.out)
    _write_results(out, _read_results(out) + [{"kind": "continue", "run": args.run, "model": args.model,
                                                 "date": time.strftime("%Y-%m-%d"), "replaced": False,
                                                 "decision": args.reason}])
    return 0


def cmd_throughput(args: argparse.Namespace) -> int:
    out = Path(args.out)
    trained = summary_of(Path(args.train_dir))
    s = trained["summary"]
    record = {"kind": "throughput", "run": args.run, "config": args.config, "date": time.strftime("%Y-%m-%d"),
              "device_name": args.device_name, "parameters": args.parameters, "steps": s.get("run/steps"),
              "train_seconds": s.get("run/train_seconds"), "samples_per_s": s.get("run/samples_per_s"),
              "steady_samples_per_s": s.get("run/steady_samples_per_s"), "batch": s.get("run/batch"),
              "segment_length": s.get("run/segment_length"), "precision": s.get("run/precision")}
    _write_results(out, _read_results(out) + [record])
    print(f"throughput {args.config}: {_fmt(record['steady_samples_per_s'], ',.0f')} samples/s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("src")
    c.add_argument("out")
    b = sub.add_parser("budget")
    b.add_argument("--total", type=float, required=True)
    b.add_argument("--elapsed", type=float, required=True)
    b.add_argument("--stage", required=True)
    b.add_argument("--models", required=True)
    b.add_argument("--shares", required=True)
    b.add_argument("--eval-reserve", required=True)
    b.add_argument("--throughput", type=float, default=0.0)
    b.add_argument("--closing", type=float, default=10.0)
    b.add_argument("--min-seconds", type=float, default=20.0)
    r = sub.add_parser("record")
    for name in ("--model", "--train-dir", "--out", "--run"):
        r.add_argument(name, required=True)
    r.add_argument("--eval")
    r.add_argument("--candidate")
    r.add_argument("--device-name", default="")
    r.add_argument("--budget-minutes", type=float)
    t = sub.add_parser("throughput")
    for name in ("--train-dir", "--out", "--run", "--config"):
        t.add_argument(name, required=True)
    t.add_argument("--device-name", default="")
    t.add_argument("--parameters", type=int)
    sub.add_parser("source-of").add_argument("teacher")
    n = sub.add_parser("pending")
    for name in ("--model", "--out", "--run", "--reason"):
        n.add_argument(name, required=True)
    args = p.parse_args(argv)
    return {"config": cmd_config, "budget": cmd_budget, "record": cmd_record, "throughput": cmd_throughput,
            "pending": cmd_pending, "source-of": cmd_source_of}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
