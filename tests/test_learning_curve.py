"""recipes/ljspeech/learning_curve.py, docs/quality.md's CPU learning curve: `add` takes the newest judgement of a
cpu_continue.sh history (its "continued" figures and sigma, offset by the run's starting cost), `show` tabulates
and plots every record."""
from __future__ import annotations

import importlib.util
import json

from synth_helpers import REPO


def _module():
    spec = importlib.util.spec_from_file_location("learning_curve", REPO / "recipes" / "ljspeech" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _judgement(minutes: float, steps: int, dnsmos: float, gpe: float | None, sigma: float | None) -> dict:
    return {"date": "2026-12-07", "cpu_minutes": minutes, "steps": steps, "samples": steps * 32768, "better": False,
            "shipped/dnsmos_p808": 2.82, "shipped/gpe": None, "shipped/sigma": 0.6,
            "continued/dnsmos_p808": dnsmos, "continued/gpe": gpe, "continued/vde": 0.19, "continued/nll_nats": -4.2,
            "continued/sigma": sigma}


def test_add_takes_the_newest_judgement_with_its_sigma_and_offsets(tmp_path):
    lc = _module()
    history, curve = tmp_path / "history.jsonl", tmp_path / "curve.jsonl"
    history.write_text("\n".join(json.dumps(r) for r in (_judgement(50.0, 3000, 2.7, None, 0.6),
                                                         _judgement(99.0, 7085, 2.8, 0.002, 0.15))) + "\n")
    record = lc.add(curve, history, "warm start", start_minutes=15.0, start_samples=1000)
    assert record == json.loads(curve.read_text())
    assert record["cpu_minutes"] == 114.0 and record["steps"] == 7085 and record["samples"] == 1000 + 7085 * 32768
    assert record["sigma"] == 0.15 and record["dnsmos_p808"] == 2.8 and record["gpe"] == 0.002
    assert record["mrstft"] is None  # a figure the judgement lacks stays missing, not zero
    assert record["temperature"] is None
    teacher = {**_judgement(30.0, 400, 2.4, 0.01, None), "continued/temperature": 0.4,
               "continued/nll_given_pitch_nats": -1.5}
    history.write_text(json.dumps(teacher) + "\n")
    record = lc.add(curve, history, "teacher", start_minutes=0.0, start_samples=0, start_steps=1833)
    assert record["steps"] == 1833 + 400  # a fresh run from a shipped file that CPU runs had trained
    assert record["temperature"] == 0.4 and record["sigma"] is None and record["nll_given_pitch_nats"] == -1.5


def test_show_tables_every_record_and_draws_the_curve(tmp_path, capsys):
    lc = _module()
    curve = tmp_path / "curve.jsonl"
    rows = [{"model": "a", "date": "2026-12-07", "cpu_minutes": 0.0, "steps": 10, "samples": 327680,
             "nll_nats": -4.1, "dnsmos_p808": 2.82, "gpe": None, "vde": 0.601},  # no voiced frame, no sigma
            {"model": "a", "date": "2026-12-07", "cpu_minutes": 90.0, "steps": 20, "samples": 655360, "sigma": 0.15,
             "nll_nats": -4.2, "dnsmos_p808": 2.80, "gpe": 0.002, "vde": 0.194},
            {"model": "t", "date": "2026-12-07", "cpu_minutes": 120.0, "steps": 30, "samples": 983040,
             "temperature": 0.4, "nll_nats": -1.0, "nll_given_pitch_nats": -1.5, "dnsmos_p808": 2.40, "gpe": 0.01,
             "vde": 0.1}]
    curve.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "curve.png"
    lc.main(["show", str(curve), "--plot", str(png), "--reference", "Griffin-Lim=3.57"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| a | 2026-12-07 | 0.00 | 10 | 0.3 M | - | -4.100 | - | 2.82 | - | 60.1% | - | - |"
    assert lines[3] == "| a | 2026-12-07 | 1.50 | 20 | 0.7 M | 0.15 | -4.200 | - | 2.80 | 0.2% | 19.4% | - | - |"
    assert lines[4] == "| t | 2026-12-07 | 2.00 | 30 | 1.0 M | T 0.40 | -1.000 | -1.500 | 2.40 | 1.0% | 10.0% | - | - |"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
