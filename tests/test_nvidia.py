"""NVIDIA WaveGlow interop: files written the way NVIDIA's code writes them load without running their code and
vocode exactly like NVIDIA's own `infer`; refused files name the problem; `python -m wavflow.convert`.

NVIDIA's released files cannot be downloaded here, so this test writes its own: the classes below carry the
names and attributes of NVIDIA/waveglow's glow.py (WaveGlow, WN, Invertible1x1Conv, old-style weight norm,
fused `cond_layer` or the older per-layer `cond_layers`) and re-implement its infer arithmetic. They are
registered as module `glow` only while the file is written; the files are then read in a fresh process in which
no module `glow` exists.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wavflow.checkpoint import load, read_checkpoint
from wavflow.errors import WavflowError

N_MELS, HOP = 20, 256  # 20 bands keep the files small; the band count is read from the weights


# ------------------------------------------------------------------ stand-in for NVIDIA/waveglow glow.py
def _weight_norm(conv: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, but it is what NVIDIA used
        return torch.nn.utils.weight_norm(conv, name="weight")


class Invertible1x1Conv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel_size=1, stride=1, padding=0, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w.view(c, c, 1)

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "W_inverse"):  # NVIDIA caches the inverse as an attribute (it gets pickled)
            self.W_inverse = self.conv.weight.squeeze().float().inverse()[..., None]
        return F.conv1d(z, self.W_inverse)


class WN(nn.Module):
    def __init__(self, n_in_channels, n_mel_channels, n_layers, n_channels, kernel_size, fused=True):
        super().__init__()
        self.n_layers, self.n_channels, self.fused = n_layers, n_channels, fused
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.start = _weight_norm(nn.Conv1d(n_in_channels, n_channels, 1))
        self.end = nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        if fused:
            self.cond_layer = _weight_norm(nn.Conv1d(n_mel_channels, 2 * n_channels * n_layers, 1))
        else:
            self.cond_layers = nn.ModuleList()
        for i in range(n_layers):
            d = 2**i
            self.in_layers.append(_weight_norm(nn.Conv1d(n_channels, 2 * n_channels, kernel_size, dilation=d,
                                                         padding=(kernel_size * d - d) // 2)))
            if not fused:
                self.cond_layers.append(_weight_norm(nn.Conv1d(n_mel_channels, 2 * n_channels, 1)))
            out = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(_weight_norm(nn.Conv1d(n_channels, out, 1)))

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        c = self.n_channels
        if self.fused:
            spect = self.cond_layer(spect)
        for i in range(self.n_layers):
            cond = spect[:, 2 * c * i: 2 * c * (i + 1)] if self.fused else self.cond_layers[i](spect)
            in_act = self.in_layers[i](audio) + cond
            acts = torch.tanh(in_act[:, :c]) * torch.sigmoid(in_act[:, c:])
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                audio = audio + res_skip[:, :c]
                output = output + res_skip[:, c:]
            else:
                output = output + res_skip
        return self.end(output)


class WaveGlow(nn.Module):
    def __init__(self, n_mel_channels, n_flows, n_group, n_early_every, n_early_size, WN_config, fused=True):
        super().__init__()
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.n_flows, self.n_group = n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        n_half, n_remaining = n_group // 2, n_group
        for k in range(n_flows):
            if k % n_early_every == 0 and k > 0:
                n_half -= n_early_size // 2
                n_remaining -= n_early_size
            self.convinv.append(Invertible1x1Conv(n_remaining))
            self.WN.append(WN(n_half, n_mel_channels * n_group, fused=fused, **WN_config))
        self.n_remaining_channels = n_remaining

    def infer(self, spect: torch.Tensor, noise: list[torch.Tensor], sigma: float) -> torch.Tensor:
        """NVIDIA's infer, with the noise it would draw passed in (in drawing order) instead of drawn."""
        noise = list(noise)
        spect = self.upsample(spect)
        spect = spect[:, :, : -(self.upsample.kernel_size[0] - self.upsample.stride[0])]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = sigma * noise.pop(0)
        for k in reversed(range(self.n_flows)):
            n_half = audio.size(1) // 2
            audio_0, audio_1 = audio[:, :n_half], audio[:, n_half:]
            output = self.WN[k](audio_0, spect)
            s, b = output[:, n_half:], output[:, :n_half]
            audio_1 = (audio_1 - b) / torch.exp(s)
            audio = torch.cat([audio_0, audio_1], 1)
            audio = self.convinv[k].reverse(audio)
            if k % self.n_early_every == 0 and k > 0:
                audio = torch.cat((sigma * noise.pop(0), audio), 1)
        return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1)


WN_CONFIG = {"n_layers": 3, "n_channels": 16, "kernel_size": 3}
FLOWS = {"n_mel_channels": N_MELS, "n_flows": 6, "n_group": 8, "n_early_every": 2, "n_early_size": 2}


def make_nvidia_model(fused: bool, seed: int) -> WaveGlow:
    """A stand-in WaveGlow with every weight moved off its initial value (as after training)."""
    torch.manual_seed(seed)
    model = WaveGlow(WN_config=WN_CONFIG, fused=fused, **FLOWS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p) * (1.0 if "convinv" not in name else 2.0))
    return model


def nvidia_noise(z: torch.Tensor) -> list[torch.Tensor]:
    """wavflow's z layout [early outputs in leaving order..., last flow's channels] as NVIDIA's draws:
    first the last flow's channels, then the early noise from the last exit back to the first."""
    e, n_exits = FLOWS["n_early_size"], (FLOWS["n_flows"] - 1) // FLOWS["n_early_every"]
    return [z[:, n_exits * e:]] + [z[:, j * e:(j + 1) * e] for j in reversed(range(n_exits))]


@contextlib.contextmanager
def as_module_glow():
    """Make the stand-in classes pickle as glow.WaveGlow, glow.WN, glow.Invertible1x1Conv (writer side only)."""
    module = types.ModuleType("glow")
    classes = (WaveGlow, WN, Invertible1x1Conv)
    saved = [(cls.__module__, cls.__qualname__) for cls in classes]
    for cls in classes:
        cls.__module__ = "glow"
        setattr(module, cls.__name__, cls)
    sys.modules["glow"] = module
    try:
        yield
    finally:
        del sys.modules["glow"]
        for cls, (mod, qual) in zip(classes, saved, strict=True):
            cls.__module__, cls.__qualname__ = mod, qual


def save_train_py_style(path: Path, model: WaveGlow, legacy: bool = False) -> None:
    """What NVIDIA's train.py save_checkpoint writes: the whole module plus optimizer state."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    with as_module_glow():
        torch.save({"model": model, "iteration": 580000, "optimizer": optimizer.state_dict(),
                    "learning_rate": 1e-4}, path, _use_new_zipfile_serialization=not legacy)


# ------------------------------------------------------------------ fixtures: write files, load in a fresh process
LOADER = textwrap.dedent("""
    import json, sys
    import torch
    import wavflow
    from wavflow.errors import WavflowError
    cases = json.load(open(sys.argv[1]))
    out = {}
    for name, case in cases.items():
        ref = torch.load(case["ref"], weights_only=True)
        try:
            model = wavflow.load(case["file"])
        except WavflowError as e:
            out[name] = {"error": str(e)}
            continue
        audio = model.infer(ref["mel"], noise=ref["z"], sigma=ref["sigma"])
        out[name] = {"max_diff": (audio - ref["audio"]).abs().max().item(),
                     "scale": ref["audio"].abs().max().item(),
                     "shape": list(audio.shape), "config": model.config.__dict__,
                     "params": sum(p.numel() for p in model.parameters())}
    out["glow_imported"] = "glow" in sys.modules or any(m.startswith("glow.") for m in sys.modules)
    json.dump(out, open(sys.argv[2], "w"))
""")


def reference(model: WaveGlow, path: Path, seed: int, frames: int = 5, sigma: float = 0.8) -> None:
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(1, N_MELS, frames, generator=g)
    z = torch.randn(1, FLOWS["n_group"], frames * HOP // FLOWS["n_group"], generator=g)
    with torch.no_grad():
        audio = model.infer(mel, nvidia_noise(z), sigma)
    torch.save({"mel": mel, "z": z, "sigma": sigma, "audio": audio}, path)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("nvidia")
    cases = {}

    def add(name: str, model: WaveGlow, write) -> None:
        file, ref = tmp / f"{name}.pt", tmp / f"{name}.ref.pt"
        reference(model, ref, seed=len(cases))
        write(file, model)
        cases[name] = {"file": str(file), "ref": str(ref)}

    fused, split = make_nvidia_model(True, 1), make_nvidia_model(False, 2)
    add("fused_cond_layer", fused, lambda f, m: save_train_py_style(f, m))
    add("fused_legacy_format", fused, lambda f, m: save_train_py_style(f, m, legacy=True))
    add("per_layer_cond_layers", split, lambda f, m: save_train_py_style(f, m))

    def dle(prefix: str, modern_weight_norm: bool, legacy: bool = False):
        def write(f: Path, m: WaveGlow) -> None:
            state = m.state_dict()
            if modern_weight_norm:  # names torch.nn.utils.parametrizations.weight_norm gives the same pair
                state = {k.replace("weight_g", "parametrizations.weight.original0")
                          .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
            config = {**FLOWS, "WN_config": WN_CONFIG}
            if prefix:  # otherwise the state_dict's own OrderedDict, with its _metadata attribute, is saved
                state = {prefix + k: v for k, v in state.items()}
            torch.save({"epoch": 1000, "config": config, "state_dict": state,
                        "optimizer": {}}, f, _use_new_zipfile_serialization=not legacy)
        return write

    add("dle_module_prefix", split, dle("module.", False))
    add("dle_no_prefix", split, dle("", False))
    add("dle_parametrizations", split, dle("module.", True))
    add("dle_legacy_format", split, dle("", False, legacy=True))  # the 2019 Torch Hub files
    manifest, results = tmp / "cases.json", tmp / "results.json"
    manifest.write_text(json.dumps(cases))
    script = tmp / "load_them.py"
    script.write_text(LOADER)
    # a fresh interpreter, started in a folder with no glow.py: nothing named glow can be imported
    proc = subprocess.run([sys.executable, str(script), str(manifest), str(results)], cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.mark.parametrize("case", ["fused_cond_layer", "fused_legacy_format", "per_layer_cond_layers",
                                  "dle_module_prefix", "dle_no_prefix", "dle_parametrizations",
                                  "dle_legacy_format"])
def test_nvidia_checkpoint_vocodes_like_nvidia_infer(loaded, case):
    result = loaded[case]
    assert "error" not in result, result.get("error")
    assert result["shape"] == [1, 5 * HOP]
    assert result["scale"] > 0.1
    assert result["max_diff"] < 1e-5 * max(1.0, result["scale"])
    cfg = result["config"]
    assert (cfg["n_flows"], cfg["n_group"], cfg["n_early_every"], cfg["n_early_size"]) == (6, 8, 2, 2)
    assert (cfg["wn_layers"], cfg["wn_channels"], cfg["wn_kernel_size"], cfg["upsample_kernel"]) == (3, 16, 3, 1024)


def test_loading_never_imports_glow(loaded):
    assert loaded["glow_imported"] is False


# ------------------------------------------------------------------ refusals
class Payload:
    """Pickles as a call of `func(*args)`: what a code-running checkpoint looks like."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_code_running_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    model = make_nvidia_model(True, 3)
    attacks = {
        "os.system": Payload(os.system, f"touch {marker}"),
        "exec": Payload(exec, f"open({str(marker)!r}, 'w').write('x')"),
        # an allowed class name with a forbidden callable inside its state
        "nested": {"model": model, "extra": Payload(os.system, f"touch {marker}")},
    }
    for name, payload in attacks.items():
        for legacy in (False, True):  # torch's zip format and the pre-1.6 format (read by wavflow's own unpickler)
            path = tmp_path / f"{name}-{legacy}.pt"
            with as_module_glow():
                torch.save(payload if isinstance(payload, dict) else {"model": model, "x": payload}, path,
                           _use_new_zipfile_serialization=not legacy)
            with pytest.raises(WavflowError, match="refused to load"):
                load(path)
            assert not marker.exists(), f"{name}: the payload ran"


def test_unlisted_class_with_allowed_module_is_refused(tmp_path):
    class Evil(nn.Module):
        def __setstate__(self, state):  # would run on load if the class were ever imported
            Path(state["path"]).write_text("ran")

    marker = tmp_path / "ran"
    module = types.ModuleType("glow")
    Evil.__module__, Evil.__qualname__ = "glow", "Evil"
    module.Evil = Evil
    sys.modules["glow"] = module
    try:
        evil = Evil()
        evil.path = str(marker)
        torch.save({"model": evil}, tmp_path / "evil.pt")
    finally:
        del sys.modules["glow"]
    with pytest.raises(WavflowError, match="glow.Evil"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_stand_ins_are_inert_and_wrong_files_are_named(tmp_path):
    # an allowed class in the wrong place: read as an inert record, then refused by name
    with as_module_glow():
        torch.save({"model": Invertible1x1Conv(4)}, tmp_path / "wrong.pt")
    obj = read_checkpoint(tmp_path / "wrong.pt")
    assert "inert" in repr(obj["model"])
    with pytest.raises(WavflowError, match="glow.Invertible1x1Conv, expected glow.WaveGlow"):
        load(tmp_path / "wrong.pt")
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(WavflowError, match="neither a wavflow checkpoint nor an NVIDIA WaveGlow"):
        load(tmp_path / "other.pt")
    state = make_nvidia_model(True, 4).state_dict()
    del state["WN.1.start.weight_g"], state["WN.1.start.weight_v"]
    torch.save({"state_dict": state}, tmp_path / "incomplete.pt")
    with pytest.raises(WavflowError, match="WN.1.start"):
        load(tmp_path / "incomplete.pt")
    state = make_nvidia_model(True, 4).state_dict()
    state["WN.2.in_layers.0.weight_v"] = state["WN.2.in_layers.0.weight_v"][:, :, :2]
    torch.save({"state_dict": state}, tmp_path / "misshapen.pt")
    with pytest.raises(WavflowError, match="do not fit"):
        load(tmp_path / "misshapen.pt")


def test_weight_norm_folded_weights_import_exactly(tmp_path):
    """A state dict whose weight norm was removed (plain .weight) loads to the same function."""
    model = make_nvidia_model(True, 5)
    reference(model, tmp_path / "ref.pt", seed=9)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    state = model.state_dict()
    plain = {}
    for key, value in state.items():
        if key.endswith("weight_v"):
            g = state[key[:-1] + "g"]
            plain[key[: -len("_v")]] = torch._weight_norm(value, g, 0)
        elif not key.endswith("weight_g"):
            plain[key] = value
    torch.save({"state_dict": plain}, tmp_path / "plain.pt")
    audio = load(tmp_path / "plain.pt").infer(ref["mel"], noise=ref["z"], sigma=ref["sigma"])
    torch.testing.assert_close(audio, ref["audio"], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ python -m wavflow.convert
def test_convert_writes_native_checkpoint(tmp_path):
    model = make_nvidia_model(False, 6)
    src, dst = tmp_path / "nvidia.pt", tmp_path / "out" / "native.pt"
    save_train_py_style(src, model)
    reference(model, tmp_path / "ref.pt", seed=3)
    proc = subprocess.run([sys.executable, "-m", "wavflow.convert", str(src), str(dst)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    obj = read_checkpoint(dst)
    assert obj["format"] == "wavflow" and obj["model_type"] == "waveglow" and obj["step"] == 580000
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    audio = load(dst).infer(ref["mel"], noise=ref["z"], sigma=ref["sigma"])
    torch.testing.assert_close(audio, ref["audio"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", ["missing", "text", "evil"])
def test_convert_bad_input_is_one_line_exit_2(tmp_path, bad):
    src = tmp_path / "in.pt"
    marker = tmp_path / "ran"
    if bad == "text":
        src.write_text("not a checkpoint")
    elif bad == "evil":
        torch.save({"x": Payload(os.system, f"touch {marker}")}, src)
    dst = tmp_path / "out.pt"
    proc = subprocess.run([sys.executable, "-m", "wavflow.convert", str(src), str(dst)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("python -m wavflow.convert: error:")
    assert not dst.exists() and not marker.exists()


def test_truncated_legacy_file_is_named_not_run(tmp_path):
    path = tmp_path / "legacy.pt"
    save_train_py_style(path, make_nvidia_model(True, 7), legacy=True)
    data = path.read_bytes()
    for n in (100, len(data) // 2, len(data) - 10):
        (tmp_path / "cut.pt").write_bytes(data[:n])
        with pytest.raises(WavflowError, match="cannot read checkpoint"):
            load(tmp_path / "cut.pt")
