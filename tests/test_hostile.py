"""Hostile input: every CLI answers bad input with exit status 2, one line on stderr, no traceback, nothing written.

One table row per case. Each builder makes its files in a fresh tmp_path and returns the argv; the run must then
leave tmp_path exactly as the builder left it (no output, no temporary, no directory). Rows carrying a marker
path hold a payload that would create that file if it were ever unpickled: the marker must not exist afterwards.

The rows run in-process under run_cli (the code path of `python -m`, minus interpreter start-up); a few run as
real subprocesses too, to show the one-line contract holds for the actual command.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.checkpoint import model_payload
from wavflow.commands import benchmark, convert, evaluate, export, stream, train
from wavflow.commands import mel as mel_cli
from wavflow.commands import synthesize as synth_cli
from wavflow.device import native_bf16
from wavflow.frontend import MelConfig
from wavflow.melinput import MAX_FRAMES

from synth_helpers import LJSPEECH, REPO, run_command, run_in_process, save_tiny_waveglow, snapshot, tiny_waveglow

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


class Payload:
    """Unpickling this calls open(path, "w"), creating `path`: proof that code from the file ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class Case:
    id: str
    build: Callable[[Path, Path], list]  # (tmp_path, good checkpoint) -> argv
    match: str  # the error line must contain this (it names the problem)
    marker: str | None = None  # a file that must not exist afterwards
    marks: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Builders

def good_mel(tmp: Path, name: str = "good.npy", frames: int = 6) -> Path:
    np.save(tmp / name, np.random.default_rng(0).uniform(-11, 0, (80, frames)).astype(np.float32))
    return tmp / name


def mel_file(arr: np.ndarray, name: str = "bad.npy") -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        np.save(tmp / name, arr)
        return [tmp / name, "--checkpoint", ckpt, "-o", tmp / "out"]
    return build


def raw_file(data: bytes, name: str = "bad.npy") -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / name).write_bytes(data)
        return [tmp / name, "--checkpoint", ckpt, "-o", tmp / "out"]
    return build


def with_checkpoint(make: Callable[[Path], Path]) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        return [good_mel(tmp), "--checkpoint", make(tmp), "-o", tmp / "out"]
    return build


def fifo(tmp: Path, name: str) -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


def pickled_npy(tmp: Path, ckpt: Path) -> list:
    np.save(tmp / "evil.npy", np.array([Payload(tmp / "MARKER")], dtype=object), allow_pickle=True)
    return [tmp / "evil.npy", "--checkpoint", ckpt, "-o", tmp / "out"]


def absurd_header(tmp: Path, ckpt: Path) -> list:
    # A 100-byte file whose header claims 80 x 10^12 float32 (320 TB): refused before any allocation.
    with open(tmp / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (80, 10**12)})
    return [tmp / "huge.npy", "--checkpoint", ckpt, "-o", tmp / "out"]


def truncated_npy(tmp: Path, ckpt: Path) -> list:
    np.save(tmp / "t.npy", np.zeros((80, 50), np.float32))
    data = (tmp / "t.npy").read_bytes()
    (tmp / "t.npy").write_bytes(data[: len(data) // 2])
    return [tmp / "t.npy", "--checkpoint", ckpt, "-o", tmp / "out"]


def good_then_bad(tmp: Path, ckpt: Path) -> list:
    np.save(tmp / "z_bad.npy", np.zeros((80, 4), np.int32))
    return [good_mel(tmp), tmp / "z_bad.npy", "--checkpoint", ckpt, "-o", tmp / "out"]


def truncated_checkpoint(tmp: Path) -> Path:
    save_tiny_waveglow(tmp / "full.pt")
    data = (tmp / "full.pt").read_bytes()
    (tmp / "full.pt").unlink()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pt"


def torch_file(obj) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        torch.save(obj, tmp / "other.pt")
        return tmp / "other.pt"
    return make


def evil_checkpoint(tmp: Path) -> Path:
    torch.save({"format": "wavflow", "model": Payload(tmp / "MARKER")}, tmp / "evil.pt")
    return tmp / "evil.pt"


def mismatched_checkpoint(tmp: Path) -> Path:
    payload = model_payload(tiny_waveglow())
    payload["model_type"] = "wavenet"  # a waveglow's weights filed as a wavenet
    payload["model_config"] = {}
    torch.save(payload, tmp / "mixed.pt")
    return tmp / "mixed.pt"


def bands40_checkpoint(tmp: Path) -> Path:
    return save_tiny_waveglow(tmp / "bands40.pt", mel_config=MelConfig(n_mels=40))


def under_regular_file(suffix: str) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / "file.txt").write_text("a regular file, so nothing can be created beneath it\n")
        return [good_mel(tmp), "--checkpoint", ckpt, "-o", tmp / "file.txt" / f"out{suffix}"]
    return build


def same_stem(tmp: Path, ckpt: Path) -> list:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    return [good_mel(tmp / "a", "x.npy"), good_mel(tmp / "b", "x.npy"), "--checkpoint", ckpt, "-o", tmp / "out"]


def options(*extra: str) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        return [good_mel(tmp), "--checkpoint", ckpt, "-o", tmp / "out", *extra]
    return build


def stats_file(arr: np.ndarray | Callable[[Path], np.ndarray] | None) -> Callable[[Path, Path], list]:
    """--stats with a statistics .npy holding `arr` (made from tmp_path when callable; None: no such file)."""
    def build(tmp: Path, ckpt: Path) -> list:
        path = tmp / "none.npy" if arr is None else tmp / "stats.npy"
        if arr is not None:
            data = arr(tmp) if callable(arr) else arr
            np.save(path, data, allow_pickle=data.dtype.hasobject)
        return [*options()(tmp, ckpt), "--stats", path]
    return build


def unreadable(tmp: Path, ckpt: Path) -> list:
    path = good_mel(tmp)
    path.chmod(0)
    return [path, "--checkpoint", ckpt, "-o", tmp / "out"]


def readonly_dir(tmp: Path, ckpt: Path) -> list:
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    return [good_mel(tmp), "--checkpoint", ckpt, "-o", tmp / "ro" / "out"]


needs_non_root = pytest.mark.skipif(ROOT, reason="root reads and writes regardless of permission bits")

SYNTHESIZE = [
    Case("missing-mel", lambda t, c: [t / "nope.npy", "--checkpoint", c, "-o", t / "out"], "nope.npy: no such file"),
    Case("dir-without-mels", lambda t, c: [(t / "empty").mkdir() or t / "empty", "--checkpoint", c, "-o", t / "out"],
         "holds no mel .npy files"),
    Case("fifo-mel", lambda t, c: [fifo(t, "pipe.npy"), "--checkpoint", c, "-o", t / "out"], "not a regular file"),
    Case("unreadable-mel", unreadable, "Permission denied", marks=[needs_non_root]),
    Case("not-npy-text", raw_file(b"80 frames of mel, honest\n"), "not a .npy array file"),
    Case("empty-file", raw_file(b""), "not a .npy array file"),
    Case("npz-archive", lambda t, c: [np.savez(t / "m.npz", a=np.zeros((80, 3), np.float32)) or t / "m.npz",
                                      "--checkpoint", c, "-o", t / "out"], "not a .npy array file"),
    Case("pickled-object-npy", pickled_npy, "pickled Python object", marker="MARKER"),
    Case("dtype-int16", mel_file(np.zeros((80, 10), np.int16)), "dtype int16"),
    Case("dtype-complex", mel_file(np.zeros((80, 10), np.complex64)), "dtype complex64"),
    Case("dtype-structured", mel_file(np.zeros((80, 10), dtype=[("a", "<f4")])), "dtype"),
    Case("rank-1", mel_file(np.zeros(80, np.float32)),
         "shape (80,); accepted shapes are (80, F), (F, 80) or (1, 80, F)"),
    Case("rank-4", mel_file(np.zeros((1, 1, 80, 10), np.float32)), "shape (1, 1, 80, 10)"),
    Case("batch-of-2", mel_file(np.zeros((2, 80, 10), np.float32)), "shape (2, 80, 10)"),
    Case("81-bands", mel_file(np.zeros((81, 10), np.float32)), "shape (81, 10)"),
    Case("bands-vs-checkpoint", with_checkpoint(bands40_checkpoint), "accepted shapes are (40, F)"),
    Case("nan", mel_file(np.full((80, 10), np.nan, np.float32)), "NaN or infinite"),
    Case("inf", mel_file(np.where(np.eye(80, 10) > 0, np.inf, -5).astype(np.float32)), "NaN or infinite"),
    Case("zero-frames", mel_file(np.zeros((80, 0), np.float32)), "zero frames"),
    Case("absurd-length-header", absurd_header, f"more than the limit of {MAX_FRAMES}"),
    Case("absurd-length-real", mel_file(np.zeros((80, MAX_FRAMES + 1), np.float32)), f"{MAX_FRAMES + 1} frames"),
    Case("truncated-npy", truncated_npy, "truncated .npy file"),
    Case("good-then-bad-mel", good_then_bad, "z_bad.npy: mel has dtype int32"),
    Case("missing-checkpoint", with_checkpoint(lambda t: t / "none.pt"), "none.pt: no such checkpoint file"),
    Case("checkpoint-is-dir", with_checkpoint(lambda t: (t / "d.pt").mkdir() or t / "d.pt"), "is a directory"),
    Case("checkpoint-is-text", with_checkpoint(lambda t: (t / "c.pt").write_text("weights") and t / "c.pt"),
         "not a torch checkpoint"),
    Case("checkpoint-is-npy", with_checkpoint(lambda t: good_mel(t, "w.npy")), "not a torch checkpoint"),
    Case("truncated-checkpoint", with_checkpoint(truncated_checkpoint), "not a torch checkpoint"),
    Case("checkpoint-plain-tensor", with_checkpoint(torch_file(torch.zeros(3, 3))),
         "holds a Tensor, expected a dictionary"),
    Case("checkpoint-foreign-state-dict", with_checkpoint(torch_file({"conv.weight": torch.zeros(4, 4), "step": 3})),
         "other.pt: neither a wavflow checkpoint nor an NVIDIA WaveGlow checkpoint"),
    Case("checkpoint-list", with_checkpoint(torch_file([torch.zeros(2)])), "holds a list"),
    Case("checkpoint-runs-code", with_checkpoint(evil_checkpoint), "refused to load", marker="MARKER"),
    Case("checkpoint-other-model", with_checkpoint(mismatched_checkpoint), "mixed.pt: weights do not fit a wavenet"),
    Case("checkpoint-unknown-type", with_checkpoint(torch_file({"format": "wavflow", "model_type": "melgan",
                                                                 "model_config": {}, "mel_config": {},
                                                                 "state_dict": {}})), "unknown model type 'melgan'"),
    Case("checkpoint-bad-field-types", with_checkpoint(torch_file({"format": "wavflow", "model_type": "waveglow",
                                                                    "model_config": [1], "mel_config": {},
                                                                    "state_dict": {}})), "'model_config' is a list"),
    Case("output-under-a-file", under_regular_file(".wav"), "is not a directory"),
    Case("output-dir-under-a-file", under_regular_file(""), "is not a directory"),
    Case("output-readonly-dir", readonly_dir, "cannot write there", marks=[needs_non_root]),
    Case("output-wav-for-two-mels", lambda t, c: [good_mel(t), good_mel(t, "g2.npy"), "--checkpoint", c,
                                                 "-o", t / "one.wav"], "names one file but 2 inputs"),
    Case("output-is-a-dir", lambda t, c: [good_mel(t), "--checkpoint", c, "-o",
                                          (t / "out" / "good.wav").mkdir(parents=True) or t / "out"], "is a directory"),
    Case("two-inputs-one-output", same_stem, "would both be written to"),
    Case("sigma-negative", options("--sigma", "-1"), "--sigma: invalid non-negative float value: '-1'"),
    Case("sigma-nan", options("--sigma", "nan"), "--sigma: invalid non-negative float value: 'nan'"),
    Case("batch-size-zero", options("--batch-size", "0"), "--batch-size: invalid positive integer value: '0'"),
    Case("denoise-negative", options("--denoise", "-0.1"), "--denoise: invalid"),
    Case("seed-not-int", options("--seed", "x"), "--seed: invalid int value"),
    Case("device-unknown", options("--device", "tpu9"), "not a device"),
    Case("device-cuda-absent", options("--device", "cuda"), "CUDA is not available",
         marks=[pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")]),
    Case("temperature-for-waveglow", options("--temperature", "0.5"), "'temperature' does not apply to a waveglow"),
    Case("unknown-model", options("--model", "melgan"), "argument --model: invalid choice"),
    Case("checkpoint-and-model", options("--model", "wavenet"), "not allowed with argument"),
    Case("unknown-flag", options("--frobnicate"), "unrecognized arguments: --frobnicate"),
    Case("no-inputs", lambda t, c: ["--checkpoint", c], "give at least one mel .npy file or directory (or --example)"),
    Case("chunk-seconds-zero", options("--chunk-seconds", "0"), "--chunk-seconds: invalid positive float value: '0'"),
    Case("chunk-seconds-negative", options("--chunk-seconds", "-1"), "--chunk-seconds: invalid positive float"),
    Case("chunk-seconds-nan", options("--chunk-seconds", "nan"), "--chunk-seconds: invalid positive float"),
    Case("chunk-seconds-inf", options("--chunk-seconds", "inf"), "--chunk-seconds: invalid positive float"),
    Case("chunk-seconds-bad-mel", lambda t, c: [*mel_file(np.full((80, 10), np.nan, np.float32))(t, c),
                                                "--chunk-seconds", "0.1"], "NaN or infinite"),
    Case("mel-below-the-silence-floor", mel_file(np.full((80, 10), -30, np.float32)),
         "bad.npy: values go down to -30.00, below this checkpoint's silence floor -11.51"),
    Case("stats-missing", stats_file(None), "none.npy: no such"),
    Case("stats-40-bands", stats_file(np.ones((2, 40))), "statistics for 40 bands; the mel has 80"),
    Case("stats-one-row", stats_file(np.ones((1, 80))), "statistics of shape (1, 80); expected (2, 80)"),
    Case("stats-zero-scale", stats_file(np.stack([np.zeros(80), np.zeros(80)])), "positive scale in every band"),
    Case("stats-pickled", stats_file(lambda t: np.array([Payload(t / "MARKER")], dtype=object)),
         "not a plain .npy array", marker="MARKER"),
    Case("stats-not-npy-or-h5", lambda t, c: [*options()(t, c), "--stats",
                                              (t / "s.txt").write_text("0 1\n") and t / "s.txt"],
         "statistics must be a .npy"),
    Case("dtype-bf16-without-native-bf16", options("--dtype", "bf16"),
         "--dtype bf16: this CPU has neither the avx512_bf16 nor the amx_bf16 instructions",
         marks=[pytest.mark.skipif(native_bf16("cpu"), reason="this CPU computes bf16 natively")]),
    Case("dtype-unknown", options("--dtype", "fp8"), "argument --dtype: invalid choice: 'fp8'"),
    Case("chunk-seconds-temperature-for-waveglow", options("--chunk-seconds", "0.1", "--temperature", "0.5"),
         "'temperature' does not apply to a waveglow"),
]


# ---------------------------------------------------------------------------------------------------------------
# mel

def audio_file(samples: np.ndarray | None = None, rate: int = 22050, name: str = "a.wav",
               subtype: str = "PCM_16") -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        data = np.zeros(0, np.float32) if samples is None else samples
        sf.write(str(tmp / name), data, rate, subtype=subtype)
        return [tmp / name, "-o", tmp / "out"]
    return build


def speech(n: int = 4000) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)


def mel_good_then_nan(tmp: Path, ckpt: Path) -> list:
    # The NaN is only seen when decoding, after the header checks passed: the good file must not be kept.
    sf.write(str(tmp / "a_good.wav"), speech(), 22050)
    sf.write(str(tmp / "b_nan.wav"), np.where(np.arange(4000) == 2000, np.nan, speech()).astype(np.float32), 22050,
             subtype="FLOAT")
    return [tmp / "a_good.wav", tmp / "b_nan.wav", "-o", tmp / "mels" / "deep"]


def mel_under_file(tmp: Path, ckpt: Path) -> list:
    sf.write(str(tmp / "a.wav"), speech(), 22050)
    (tmp / "file.txt").write_text("regular file\n")
    return [tmp / "a.wav", "-o", tmp / "file.txt" / "a.npy"]


MEL = [
    Case("missing-audio", lambda t, c: [t / "nope.wav"], "nope.wav: no such file"),
    Case("dir-without-audio", lambda t, c: [(t / "empty").mkdir() or t / "empty"], "holds no audio files"),
    Case("fifo-audio", lambda t, c: [fifo(t, "pipe.wav")], "not a regular file"),
    Case("unreadable-audio", lambda t, c: [audio_file(speech())(t, c)[0].chmod(0) or t / "a.wav"],
         "Permission denied", marks=[needs_non_root]),
    Case("not-audio", lambda t, c: [(t / "x.wav").write_text("RIFF? no.") and t / "x.wav"],
         "not a readable audio file"),
    Case("mel-npy-as-audio", lambda t, c: [good_mel(t)], "not a readable audio file"),
    Case("no-samples", audio_file(None), "holds no samples"),
    Case("too-short", audio_file(speech(300)), "too short for a mel"),
    Case("absurd-length", audio_file(np.zeros(1000 * 660, np.int16), rate=1000),
         f"more than the limit of {MAX_FRAMES}"),
    Case("nan-samples", audio_file(np.full(4000, np.nan, np.float32), subtype="FLOAT"), "NaN or infinite"),
    Case("good-then-nan", mel_good_then_nan, "b_nan.wav: audio contains NaN"),
    Case("output-under-a-file", mel_under_file, "is not a directory"),
    Case("npy-output-for-two", lambda t, c: [*audio_file(speech(), name="p.wav")(t, c)[:1],
                                            *audio_file(speech(), name="q.wav")(t, c)[:1], "-o", t / "m.npy"],
         "names one file but 2 inputs"),
    Case("unknown-flag", lambda t, c: [*audio_file(speech())(t, c), "--hop", "128"], "unrecognized arguments"),
]

# ---------------------------------------------------------------------------------------------------------------
# evaluate (its own finer cases live in test_evaluate.py)

def evaluate_args(make_ckpt: Callable[[Path], Path] | None = None, *extra: str,
                  root: str | None = None) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        c = make_ckpt(tmp) if make_ckpt else ckpt
        return [c, "--data-root", root if root is not None else tmp / "no-such-root", "--device", "cpu",
                "--griffin-lim-iters", "0", *extra]
    return build


EVALUATE = [
    Case("missing-checkpoint", evaluate_args(lambda t: t / "none.pt"), "none.pt: no such checkpoint file"),
    Case("truncated-checkpoint", evaluate_args(truncated_checkpoint), "not a torch checkpoint"),
    Case("checkpoint-runs-code", evaluate_args(evil_checkpoint), "refused to load", marker="MARKER"),
    Case("checkpoint-plain-tensor", evaluate_args(torch_file(torch.zeros(3))), "holds a Tensor"),
    Case("checkpoint-other-model", evaluate_args(mismatched_checkpoint), "weights do not fit"),
    Case("missing-data-root", evaluate_args(), "no-such-root: dataset root does not exist"),
    Case("json-under-a-file", lambda t, c: (t / "file.txt").write_text("x") and
         evaluate_args(None, "--json", str(t / "file.txt" / "r.json"))(t, c), "file.txt is not a directory"),
    Case("unknown-metric", evaluate_args(None, "--metrics", "bleu"), "unknown metric(s) bleu"),
    Case("sigma-negative", evaluate_args(None, "--sigma", "-1"), "--sigma"),
    Case("device-unknown", evaluate_args(None, "--device", "tpu9"), "not a device"),
]

# ---------------------------------------------------------------------------------------------------------------
# train (its own finer cases live in test_train.py)

TINY_YAML = REPO / "recipes" / "ljspeech" / "conf" / "waveglow.tiny.yaml"


def train_args(*extra, config: Path | None = None) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        return [config or TINY_YAML, "--out-dir", tmp / "run", f"data.root={LJSPEECH}", "data.cache_audio=false",
                "train.device=cpu", *extra]
    return build


def yaml_file(text: str) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / "conf.yaml").write_text(text.replace("MARKER", str(tmp / "MARKER")))
        return train_args(config=tmp / "conf.yaml")(tmp, ckpt)
    return build


def resume_from(make: Callable[[Path], Path]) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / "run").mkdir()
        shutil.move(make(tmp), tmp / "run" / "last.pt")
        return [*train_args()(tmp, ckpt), "--resume"]
    return build


WAVENET_YAML = REPO / "recipes" / "ljspeech" / "conf" / "wavenet.tiny.yaml"
STUDENT_YAML = REPO / "recipes" / "ljspeech" / "conf" / "student.tiny.yaml"
LONGEST_TRAIN_CLIP = 213149  # samples of LJ001-0003, the longest of LJSPEECH's 13 training clips (n_valid: 20)


def wavenet_args(*extra: str) -> Callable[[Path, Path], list]:
    return train_args(*extra, config=WAVENET_YAML)


def student_args(*extra: str) -> Callable[[Path, Path], list]:
    # student.tiny.yaml names a teacher (exp/wavenet-tiny/best.pt) that does not exist under tmp_path: the config
    # error must come before the teacher is loaded, or the line would name the missing teacher instead.
    return train_args(*extra, config=STUDENT_YAML)


def train_under_file(tmp: Path, ckpt: Path) -> list:
    (tmp / "file.txt").write_text("regular file\n")
    args = train_args()(tmp, ckpt)
    args[args.index("--out-dir") + 1] = tmp / "file.txt" / "run"
    return args


TRAIN = [
    Case("missing-config", lambda t, c: [t / "none.yaml", "--out-dir", t / "run"], "none.yaml: no such config file"),
    Case("config-not-yaml", yaml_file("model: [waveglow\n  : :\n"), "not valid YAML"),
    Case("config-runs-code", yaml_file('model: !!python/object/apply:builtins.open ["MARKER", "w"]\n'),
         "not valid YAML", marker="MARKER"),
    Case("config-not-mapping", yaml_file("- waveglow\n"), "expected a mapping"),
    Case("config-unknown-key", train_args("frobnicate=1"), "frobnicate"),
    Case("override-without-value", train_args("train.max_steps"), "train.max_steps"),
    Case("override-wrong-type", train_args("train.lr=fast"), "train.lr"),
    Case("unknown-model", train_args("model=melgan"), "unknown model type 'melgan'"),
    Case("missing-data-root", lambda t, c: [TINY_YAML, "--out-dir", t / "run", f"data.root={t / 'nowhere'}"],
         "nowhere: dataset root does not exist"),
    Case("out-dir-under-a-file", train_under_file, "is not a directory"),
    Case("resume-code-running-checkpoint", resume_from(evil_checkpoint), "refused to load", marker="MARKER"),
    Case("resume-truncated-checkpoint", resume_from(truncated_checkpoint), "not a torch checkpoint"),
    Case("resume-plain-tensor", resume_from(torch_file(torch.zeros(2))), "holds a Tensor"),
    # model_config values that cannot build a model: refused by the config dataclass (or, where the mel's hop
    # is needed, by the model's constructor), never a ValueError from a layer
    Case("waveglow-flows-zero", train_args("model_config.n_flows=0"), "n_flows=0 must be an integer >= 1"),
    Case("waveglow-flows-negative", train_args("model_config.n_flows=-8"), "n_flows=-8"),
    Case("waveglow-group-odd", train_args("model_config.n_group=7"), "n_group=7 must be an even integer"),
    Case("waveglow-group-zero", train_args("model_config.n_group=0"), "n_group=0 must be an even integer"),
    Case("waveglow-group-vs-hop", train_args("model_config.n_group=6"), "n_group 6 must divide the hop length 256"),
    Case("waveglow-early-every-zero", train_args("model_config.n_early_every=0"), "n_early_every=0"),
    Case("waveglow-early-size-odd", train_args("model_config.n_early_size=3"), "n_early_size=3 must be an even"),
    Case("waveglow-early-size-negative", train_args("model_config.n_early_size=-2"), "n_early_size=-2"),
    Case("waveglow-early-exits-leave-nothing",
         train_args("model_config.n_early_every=4", "model_config.n_early_size=8"),
         "n_early_every=4 and n_early_size=8 leave fewer than 2 channels"),
    Case("waveglow-wn-layers-zero", train_args("model_config.wn_layers=0"), "wn_layers=0 must be an integer >= 1"),
    Case("waveglow-wn-channels-negative", train_args("model_config.wn_channels=-64"), "wn_channels=-64"),
    Case("waveglow-wn-kernel-even", train_args("model_config.wn_kernel_size=4"), "wn_kernel_size=4 must be an odd"),
    Case("waveglow-wn-kernel-zero", train_args("model_config.wn_kernel_size=0"), "wn_kernel_size=0"),
    Case("waveglow-upsample-kernel-vs-hop", train_args("model_config.upsample_kernel=300"),
         "upsample_kernel 300 must be a multiple of the hop length 256"),
    Case("waveglow-sigma-zero", train_args("model_config.sigma=0"), "sigma=0.0 must be a finite number > 0"),
    Case("wavenet-layers-zero", wavenet_args("model_config.layers=0"), "layers=0 must be an integer >= 1"),
    Case("wavenet-layers-not-cycles", wavenet_args("model_config.layers=13", "model_config.cycles=2"),
         "layers=13 must be a multiple of cycles=2"),
    Case("wavenet-cycles-not-divisor", wavenet_args("model_config.layers=12", "model_config.cycles=5"),
         "layers=12 must be a multiple of cycles=5"),
    Case("wavenet-cycles-zero", wavenet_args("model_config.cycles=0"), "cycles=0 must be an integer >= 1"),
    Case("wavenet-residual-zero", wavenet_args("model_config.residual_channels=0"), "residual_channels=0"),
    Case("wavenet-gate-odd", wavenet_args("model_config.gate_channels=33"), "gate_channels=33 must be an even"),
    Case("wavenet-gate-zero", wavenet_args("model_config.gate_channels=0"), "gate_channels=0 must be an even"),
    Case("wavenet-skip-negative", wavenet_args("model_config.skip_channels=-32"), "skip_channels=-32"),
    Case("wavenet-kernel-one", wavenet_args("model_config.kernel_size=1"), "kernel_size=1 must be an integer >= 2"),
    Case("wavenet-kernel-zero", wavenet_args("model_config.kernel_size=0"), "kernel_size=0"),
    Case("wavenet-upsample-channels-zero", wavenet_args("model_config.upsample_channels=0"), "upsample_channels=0"),
    Case("wavenet-upsample-factor-zero", wavenet_args("model_config.upsample_factors=[4,0,16,4]"),
         "upsample_factors=(4, 0, 16, 4)"),
    Case("wavenet-upsample-factors-vs-hop", wavenet_args("model_config.upsample_factors=[4,4,4]"),
         "upsample_factors (4, 4, 4) multiply to 64, but the mel hop is 256"),
    Case("wavenet-context-kernel-even", wavenet_args("model_config.context_kernel=4"), "context_kernel=4"),
    Case("wavenet-output-unknown", wavenet_args("model_config.output=laplace"), "output='laplace' is not a known"),
    Case("wavenet-mixture-no-components", wavenet_args("model_config.output=mixture",
                                                       "model_config.mixture_components=0"), "mixture_components=0"),
    Case("wavenet-mulaw-one-channel", wavenet_args("model_config.output=mulaw", "model_config.mulaw_channels=1"),
         "mulaw_channels=1"),
    Case("student-flow-not-whole-cycles",
         student_args("model_config.flow_layers=[6,5]", "model_config.dilation_cycle=6"),
         "a flow of 5 layers is not a whole number of dilation cycles of dilation_cycle=6"),
    Case("student-no-flows", student_args("model_config.flow_layers=[]"), "flow_layers=() must be a non-empty list"),
    Case("student-flow-of-zero-layers", student_args("model_config.flow_layers=[6,0]"), "flow_layers=(6, 0)"),
    Case("student-dilation-cycle-zero", student_args("model_config.dilation_cycle=0"), "dilation_cycle=0"),
    Case("student-residual-zero", student_args("model_config.residual_channels=0"), "residual_channels=0"),
    Case("student-gate-odd", student_args("model_config.gate_channels=63"), "gate_channels=63 must be an even"),
    Case("student-skip-zero", student_args("model_config.skip_channels=0"), "skip_channels=0"),
    Case("student-kernel-one", student_args("model_config.kernel_size=1"), "kernel_size=1 must be an integer >= 2"),
    Case("student-upsample-factors-vs-hop", student_args("model_config.upsample_factors=[4,4,4]"),
         "upsample_factors (4, 4, 4) multiply to 64, but the mel hop is 256"),
    Case("student-stft-window-over-fft", student_args("model_config.stft_resolutions=[[512,128,1024]]"),
         "stft_resolutions [512, 128, 1024]"),
    Case("student-mc-samples-zero", student_args("model_config.mc_samples=0"), "mc_samples=0"),
    Case("student-kl-weight-negative", student_args("model_config.kl_weight=-1"), "kl_weight=-1.0"),
    Case("student-base-unknown", student_args("model_config.base=laplace"),
         "model_config.base: expected gaussian | logistic, got 'laplace'"),
    # data and optimiser values
    Case("segment-length-zero", train_args("data.segment_length=0"), "data.segment_length must be positive, got 0"),
    Case("segment-length-negative", train_args("data.segment_length=-8192"),
         "data.segment_length must be positive, got -8192"),
    Case("segment-length-too-short-for-a-mel", train_args("data.segment_length=512"),
         "segment_length=512 is too short"),
    Case("segment-length-over-every-clip", train_args("data.n_valid=20", "data.segment_length=300000"),
         f"data.segment_length=300000 is longer than every training clip (the longest has {LONGEST_TRAIN_CLIP} "
         f"samples) in {LJSPEECH}"),
    Case("segment-length-one-over-the-longest-clip",
         train_args("data.n_valid=20", f"data.segment_length={LONGEST_TRAIN_CLIP + 1}"),
         f"data.segment_length={LONGEST_TRAIN_CLIP + 1} is longer than every training clip"),
    Case("segment-length-over-every-clip-student", student_args("data.n_valid=20", "data.segment_length=300000"),
         "data.segment_length=300000 is longer than every training clip"),
    Case("batch-size-zero", train_args("data.batch_size=0"), "data.batch_size must be positive, got 0"),
    Case("batch-size-negative", train_args("data.batch_size=-4"), "data.batch_size must be positive, got -4"),
    Case("batch-size-over-clips", train_args("data.n_valid=20", "data.batch_size=14"),
         "13 training clips give each of 1 process(es) 13, fewer than data.batch_size=14"),
    Case("lr-zero", train_args("train.lr=0"), "train.lr must be a positive number, got 0.0"),
    Case("lr-negative", train_args("train.lr=-1e-3"), "train.lr must be a positive number, got -0.001"),
    Case("lr-nan", train_args("train.lr=nan"), "train.lr must be a positive number, got nan"),
    Case("lr-yaml-nan", train_args("train.lr=.nan"), "train.lr must be a positive number, got nan"),
    Case("lr-inf", train_args("train.lr=inf"), "train.lr must be a positive number, got inf"),
    Case("lr-decay-gamma-negative", train_args("train.lr_decay_gamma=-0.5"),
         "train.lr_decay_gamma must be a positive number, got -0.5"),
    Case("beta-one", train_args("train.betas=[0.9,1.0]"), "train.betas[1] must be in [0, 1), got 1.0"),
    Case("grad-clip-nan", train_args("train.grad_clip=nan"), "train.grad_clip must not be negative, got nan"),
    Case("seed-negative", train_args("train.seed=-1"), "train.seed must not be negative, got -1"),
]

# ---------------------------------------------------------------------------------------------------------------
# convert, benchmark

def convert_args(make: Callable[[Path], Path] | None = None, out: str = "out.pt") -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / "file.txt").write_text("regular file\n")
        return [make(tmp) if make else ckpt, tmp / out]
    return build


CONVERT = [
    Case("missing-input", convert_args(lambda t: t / "none.pt"), "none.pt: no such checkpoint file"),
    Case("truncated-input", convert_args(truncated_checkpoint), "not a torch checkpoint"),
    Case("input-runs-code", convert_args(evil_checkpoint), "refused to load", marker="MARKER"),
    Case("input-plain-tensor", convert_args(torch_file(torch.zeros(3))), "holds a Tensor"),
    Case("input-foreign-state-dict", convert_args(torch_file({"conv.weight": torch.zeros(4, 4)})), "other.pt"),
    Case("input-other-model", convert_args(mismatched_checkpoint), "weights do not fit"),
    Case("output-under-a-file", convert_args(None, "file.txt/out.pt"), "is not a directory"),
    Case("output-is-a-dir", convert_args(None, "."), "is a directory"),
]


def bench_args(*extra: str) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        return ["--quick", "--quiet", "--models", "waveglow", "--repeats", "3", *[
            str(e).replace("TMP", str(tmp)).replace("CKPT", str(ckpt)) for e in extra]]
    return build


def bench_with(make: Callable[[Path], Path], flag: str) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        return bench_args(flag, str(make(tmp)))(tmp, ckpt)
    return build


BENCHMARK = [
    Case("missing-checkpoint", bench_args("--waveglow", "TMP/none.pt"), "none.pt"),
    Case("checkpoint-runs-code", bench_with(evil_checkpoint, "--waveglow"), "refused to load", marker="MARKER"),
    Case("truncated-checkpoint", bench_with(truncated_checkpoint, "--waveglow"), "not a torch checkpoint"),
    Case("mel-pickled-object", lambda t, c: [*bench_args()(t, c), "--mel", pickled_npy(t, c)[0]], "pickled",
         marker="MARKER"),
    Case("mel-nan", lambda t, c: [*bench_args()(t, c), "--mel",
                                  mel_file(np.full((80, 9), np.nan, np.float32))(t, c)[0]], "NaN"),
    Case("bad-lengths", bench_args("--lengths", "0"), "--lengths"),
    Case("bad-family-pair", bench_args("--checkpoint", "melgan=x.pt"), "unknown model family 'melgan'"),
    Case("json-in-missing-dir", bench_args("--json", "TMP/nowhere/b.json"), "nowhere"),
]

def export_args(make: Callable[[Path], Path] | None = None, out: str = "m.onnx", *extra: str
                ) -> Callable[[Path, Path], list]:
    def build(tmp: Path, ckpt: Path) -> list:
        (tmp / "file.txt").write_text("regular file\n")
        return [make(tmp) if make else ckpt, "-o", tmp / out, *extra]
    return build


def teacher_checkpoint(tmp: Path) -> Path:
    from wavflow.checkpoint import save_checkpoint
    from wavflow.models import build_model
    from wavflow.models.wavenet import WaveNetConfig

    save_checkpoint(tmp / "teacher.pt", model_payload(build_model("wavenet", WaveNetConfig.tiny())))
    return tmp / "teacher.pt"


EXPORT = [
    Case("missing-checkpoint", export_args(lambda t: t / "none.pt"), "none.pt: no such checkpoint file"),
    Case("truncated-checkpoint", export_args(truncated_checkpoint), "not a torch checkpoint"),
    Case("checkpoint-runs-code", export_args(evil_checkpoint), "refused to load", marker="MARKER"),
    Case("checkpoint-plain-tensor", export_args(torch_file(torch.zeros(3))), "holds a Tensor"),
    Case("checkpoint-foreign-state-dict", export_args(torch_file({"conv.weight": torch.zeros(4, 4)})), "other.pt"),
    Case("checkpoint-other-model", export_args(mismatched_checkpoint), "weights do not fit"),
    Case("autoregressive-teacher", export_args(teacher_checkpoint),
         "the WaveNet teacher cannot be exported to ONNX: it is autoregressive"),
    Case("shipped-teacher", lambda t, c: ["--model", "wavenet", "-o", t / "m.onnx"], "cannot be exported"),
    Case("no-checkpoint", lambda t, c: ["-o", t / "m.onnx"], "give a checkpoint file or --model NAME"),
    Case("checkpoint-and-model", lambda t, c: [c, "--model", "student", "-o", t / "m.onnx"],
         "give a checkpoint file or --model NAME"),
    Case("output-under-a-file", export_args(None, "file.txt/m.onnx"), "is not a directory"),
    Case("output-is-a-dir", export_args(None, "."), "is a directory"),
    Case("output-readonly-dir", lambda t, c: [c, "-o", (t / "ro").mkdir() or (t / "ro").chmod(0o555) or
                                              t / "ro" / "m.onnx"], "cannot write there", marks=[needs_non_root]),
    Case("opset-out-of-range", export_args(None, "m.onnx", "--opset", "99"), "--opset 99"),
    Case("opset-not-int", export_args(None, "m.onnx", "--opset", "x"), "--opset: invalid int value"),
]

# `wavflow stream` takes one mel: synthesize's cases less those about several inputs, a directory or batching,
# and its own.
STREAM = [c for c in SYNTHESIZE if c.id not in {"dir-without-mels", "good-then-bad-mel", "output-wav-for-two-mels",
                                                "two-inputs-one-output", "batch-size-zero", "no-inputs"}] + [
    Case("no-input", lambda t, c: ["--checkpoint", c, "-o", t / "o.wav"], "give one mel .npy file or --example"),
    Case("mel-and-example", lambda t, c: [good_mel(t), "--example", "--checkpoint", c], "give one mel .npy file"),
    Case("two-mels", lambda t, c: [good_mel(t), good_mel(t, "g2.npy"), "--checkpoint", c, "-o", t / "o.wav"],
         "unrecognized arguments"),
    Case("directory-as-mel", lambda t, c: [(t / "mels").mkdir() or t / "mels", "--checkpoint", c], "is a directory"),
]

CLIS = {
    "synthesize": (synth_cli.run, synth_cli.PROG, SYNTHESIZE),
    "stream": (stream.run, stream.PROG, STREAM),
    "mel": (mel_cli.run, mel_cli.PROG, MEL),
    "evaluate": (evaluate.run, evaluate.PROG, EVALUATE),
    "train": (train.run, train.PROG, TRAIN),
    "convert": (convert.run, convert.PROG, CONVERT),
    "benchmark": (benchmark.run, benchmark.PROG, BENCHMARK),
    "export": (export.run, export.PROG, EXPORT),
}


def _params():
    for cli, (_, _, cases) in CLIS.items():
        for case in cases:
            yield pytest.param(cli, case, id=f"{cli}:{case.id}", marks=case.marks)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_waveglow(tmp_path_factory.mktemp("good") / "tiny.pt")


@pytest.mark.parametrize("cli,case", list(_params()))
def test_hostile_input(cli, case, tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output location would land here and be caught
    main, prog, _ = CLIS[cli]
    work = tmp_path / "work"
    work.mkdir()
    argv = case.build(work, ckpt)
    before = snapshot(tmp_path)
    code, out, err = run_in_process(main, argv, capsys, prog=prog)
    assert code == 2, f"exit {code}; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert case.match in lines[0], err
    assert "Traceback" not in err + out
    assert snapshot(tmp_path) == before, "a failed run left files behind"
    if case.marker:
        assert not (work / case.marker).exists(), "the payload ran"


@pytest.mark.parametrize("cli,case", [("synthesize", "pickled-object-npy"), ("synthesize", "checkpoint-runs-code"),
                                      ("synthesize", "bands-vs-checkpoint"), ("mel", "absurd-length"),
                                      ("export", "autoregressive-teacher"), ("stream", "pickled-object-npy")])
def test_hostile_input_real_process(cli, case, tmp_path, ckpt):
    """The same contract through `python -m wavflow <cli>` (the `wavflow` command) in a fresh interpreter."""
    _, prog, cases = CLIS[cli]
    case = next(c for c in cases if c.id == case)
    argv = case.build(tmp_path, ckpt)
    before = snapshot(tmp_path)
    r = run_command(cli, *argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"{prog}: error: ") and case.match in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert snapshot(tmp_path) == before
    if case.marker:
        assert not (tmp_path / case.marker).exists()
