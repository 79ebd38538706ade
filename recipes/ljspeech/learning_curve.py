"""The CPU learning curve of docs/quality.md: held-out figures of every model trained on the CPU, against the CPU
hours and samples it has seen, kept as one JSON record per judgement in docs/quality_curve.jsonl.

    python recipes/ljspeech/learning_curve.py add docs/quality_curve.jsonl exp/cpu_continue/history.jsonl \
        --model "WaveGlow, shipped + harmonic mean" --start-minutes 0     # the newest judgement of a run
    python recipes/ljspeech/learning_curve.py show docs/quality_curve.jsonl --plot docs/quality_curve.png

`show` prints the markdown table and draws DNSMOS P.808, gross pitch error and NLL against CPU hours, one line
per model. A model with a source has a second NLL, given the recordings' pitch tracks as it trains (design.md
section 9). A model with no voiced frame in its output has no pitch error: it is drawn at 100% with a hollow mark.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

FIGURES = ("nll_nats", "nll_given_pitch_nats", "dnsmos_p808", "gpe", "vde", "f0_rmse_cents", "logmel_l1", "mrstft")


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def add(curve: Path, history: Path, model: str, start_minutes: float, start_samples: int,
        start_steps: int = 0) -> dict:
    """Append the newest judgement in a cpu_continue.sh history.jsonl (its "continued" row) to the curve.

    start_minutes/start_samples/start_steps: what the run's starting point had already cost (a run resumed from an
    experiment's state, or started afresh from a shipped file that earlier CPU runs trained), added to the run's
    own."""
    last = read(history)[-1]
    record = {"model": model, "date": last["date"], "cpu_minutes": round(start_minutes + last["cpu_minutes"], 1),
              "steps": start_steps + last["steps"], "samples": start_samples + last["samples"],
              "sigma": last.get("continued/sigma"), "temperature": last.get("continued/temperature"),
              **{k: last.get(f"continued/{k}") for k in FIGURES}}
    with open(curve, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def _num(value, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _sampling(r: dict) -> str:
    """A WaveGlow's sigma, or a teacher's or student's temperature as "T 0.4"."""
    if r.get("sigma") is not None:
        return _num(r["sigma"], 2)
    return "-" if r.get("temperature") is None else f"T {_num(r['temperature'], 2)}"


def table(records: list[dict]) -> str:
    lines = ["| model | date | CPU hours | steps | samples seen | sigma / T | NLL (nats) | NLL given pitch | "
             "DNSMOS P.808 | GPE | V/UV error | log-mel L1 | MR-STFT |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['date']} | {r['cpu_minutes'] / 60:.2f} | {r['steps']:,} | "
                     f"{r['samples'] / 1e6:.1f} M | {_sampling(r)} | {_num(r.get('nll_nats'), 3)} | "
                     f"{_num(r.get('nll_given_pitch_nats'), 3)} | {_num(r.get('dnsmos_p808'), 2)} | "
                     f"{_pct(r.get('gpe'))} | {_pct(r.get('vde'))} | {_num(r.get('logmel_l1'), 3)} | "
                     f"{_num(r.get('mrstft'), 3)} |")
    return "\n".join(lines)


def plot(records: list[dict], out: Path, references: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for model in models:
        rows = sorted((r for r in records if r["model"] == model), key=lambda r: r["cpu_minutes"])
        hours = [r["cpu_minutes"] / 60 for r in rows]
        line, = axes[0].plot(hours, [r.get("dnsmos_p808") for r in rows], "o-", label=model)
        gpe = [r.get("gpe") for r in rows]
        voiced = [g is not None and math.isfinite(g) for g in gpe]
        shown = [100 * g if ok else 100.0 for g, ok in zip(gpe, voiced, strict=True)]
        axes[1].plot(hours, shown, "-", color=line.get_color())
        for h, g, ok in zip(hours, shown, voiced, strict=True):
            axes[1].plot([h], [g], "o", color=line.get_color(), markerfacecolor=line.get_color() if ok else "none")
        axes[2].plot(hours, [r.get("nll_nats") for r in rows], "o-", color=line.get_color())
        given = [(h, r["nll_given_pitch_nats"]) for h, r in zip(hours, rows, strict=True)
                 if r.get("nll_given_pitch_nats") is not None]
        if given:
            axes[2].plot(*zip(*given, strict=True), "x--", color=line.get_color())
    for name, value in references.items():
        axes[0].axhline(value, color="grey", lw=0.8, ls="--")
        axes[0].annotate(name, (0, value), fontsize=7, color="grey", va="bottom")
    axes[1].axhline(10, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("DNSMOS P.808 (higher is better)")
    axes[1].set_ylabel("gross pitch error, %\n(hollow: no voiced frame)")
    axes[2].set_ylabel("held-out NLL, nats/sample (lower is better)\n(x, dashed: given the recorded pitch)")
    for ax in axes:
        ax.set_xlabel("CPU hours of training")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="learning_curve.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="append a cpu_continue.sh run's newest judgement to the curve")
    a.add_argument("curve", type=Path)
    a.add_argument("history", type=Path)
    a.add_argument("--model", required=True)
    a.add_argument("--start-minutes", type=float, default=0.0)
    a.add_argument("--start-samples", type=int, default=0)
    a.add_argument("--start-steps", type=int, default=0)
    s = sub.add_parser("show", help="print the table; --plot draws the curve")
    s.add_argument("curve", type=Path)
    s.add_argument("--plot", type=Path)
    s.add_argument("--reference", action="append", default=[], metavar="NAME=DNSMOS",
                   help="a dashed DNSMOS line, e.g. 'Griffin-Lim=3.57' (repeatable)")
    args = p.parse_args(argv)
    if args.command == "add":
        if not args.history.is_file():
            sys.exit(f"learning_curve.py: no history at {args.history}")
        print(json.dumps(add(args.curve, args.history, args.model, args.start_minutes, args.start_samples,
                             args.start_steps)))
        return
    records = read(args.curve)
    if not records:
        sys.exit(f"learning_curve.py: no records in {args.curve}")
    print(table(records))
    if args.plot:
        refs = {k: float(v) for k, v in (r.split("=", 1) for r in args.reference)}
        plot(records, args.plot, refs)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
