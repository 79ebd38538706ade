"""Import NVIDIA's WaveGlow checkpoints without running any code from them.

Three layouts exist in the wild (design.md section 3):
  (a) NVIDIA/waveglow's train.py: torch.save({'model': <glow.WaveGlow module>, 'iteration', 'optimizer',
      'learning_rate'}) - the whole module pickled, weight norm as old-style weight_g / weight_v hooks, one fused
      `cond_layer` per WN (waveglow_256channels_universal_v5.pt and later);
  (b) the same, from before the fusion: per-layer `cond_layers.{i}`;
  (c) NVIDIA DeepLearningExamples / Torch Hub: {'state_dict', 'config', ...} with `cond_layers.{i}` and, from
      multi-GPU runs, a 'module.' prefix.
Weight-norm pairs may be named weight_g / weight_v or parametrizations.weight.original0 / original1, or be folded
into a plain weight already.

Safety: checkpoints are only ever read by `torch.load(weights_only=True)`, whose unpickler calls nothing outside
a fixed allow-list. (a) and (b) name NVIDIA's classes (glow.WaveGlow, glow.WN, ...) and a few torch.nn classes;
`foreign_globals()` adds exactly those names to the allow-list, each mapped onto an inert stand-in (`_Inert`)
that only stores the pickled attributes. No module named `glow` is imported, no constructor or hook of the real
classes runs, and any other global in the file is refused by torch (checkpoint.read_checkpoint turns that into a
WavflowError). The weights are then read out of the stand-ins' recorded state as plain tensors.
Files in torch's pre-1.6 format (NVIDIA's 2018-2020 releases) pickle each module class together with its source
code, which torch's weights_only reader refuses outright; `load_legacy` reads that format with an unpickler
restricted to the same allow-list (plus the tensor-rebuilding functions torch itself allows).
"""
from __future__ import annotations

import collections
import contextlib
import pickle
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import WavflowError
from .frontend import MelConfig
from .models.waveglow import WaveGlow, WaveGlowConfig


class _Inert:
    """Stand-in for a class named in a checkpoint: creating, calling or unpickling it only records state."""

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[1] is None or isinstance(state[1], dict)):
            state, slots = state
            if slots:
                self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _inert(name: str) -> type[_Inert]:
    return type(f"Inert[{name}]", (_Inert,), {"pickled_name": name, "__module__": __name__})


# Every global NVIDIA's pickled modules refer to besides tensors and containers (which torch allows already).
ALLOWED_GLOBALS: tuple[str, ...] = (
    "glow.WaveGlow", "glow.WN", "glow.Invertible1x1Conv",
    "glow_old.WaveGlow", "glow_old.WN", "glow_old.Invertible1x1Conv",
    "torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.utils.weight_norm.WeightNorm",  # the old weight-norm forward pre-hook object
    "torch.nn.backends.thnn._get_thnn_function_backend",  # torch <= 1.0 modules pickled their backend
)
_STAND_INS = {name: _inert(name) for name in ALLOWED_GLOBALS}


@contextlib.contextmanager
def foreign_globals() -> Iterator[None]:
    """While active, torch.load(weights_only=True) maps the names in ALLOWED_GLOBALS onto inert stand-ins."""
    with torch.serialization.safe_globals([(cls, name) for name, cls in _STAND_INS.items()]):
        yield


class _StorageType:
    """What a legacy file's `torch.FloatStorage` (etc.) global resolves to: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_LEGACY_STORAGES = {"DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
                    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                    "BoolStorage": torch.bool}
_LEGACY_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,  # how torch 0.4 pickled parameters
    "torch.Size": torch.Size,
    "builtins.set": set, "builtins.frozenset": frozenset, "__builtin__.set": set,
    **_STAND_INS,
    **{f"torch.{name}": _StorageType(dtype) for name, dtype in _LEGACY_STORAGES.items()},
}
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class _LegacyUnpickler(pickle.Unpickler):
    """pickle restricted to _LEGACY_GLOBALS: every global a pickle can call or instantiate goes through
    find_class, so nothing outside the list can run. Storages are allocated empty and filled afterwards."""

    def __init__(self, f: Any, storages: dict[str, torch.storage.TypedStorage], max_bytes: int = 0):
        super().__init__(f, encoding="utf-8")
        self.storages = storages
        self.max_bytes = max_bytes  # the file's size: no honest storage is larger

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _LEGACY_GLOBALS:
            return _LEGACY_GLOBALS[full]
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError("malformed persistent id")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":  # (class, source file, source code): the class is already an allow-listed stand-in
            return pid[1]
        if kind != "storage" or len(pid) != 6 or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        storage_type, root_key, _location, numel, view = pid[1:]
        dtype = storage_type.dtype
        size = torch.empty((), dtype=dtype).element_size()
        if root_key not in self.storages:
            if not isinstance(numel, int) or not 0 <= numel * size <= self.max_bytes:
                raise ValueError(f"storage of {numel} elements cannot come from a {self.max_bytes}-byte file")
            self.storages[root_key] = torch.storage.TypedStorage(
                wrap_storage=torch.UntypedStorage(int(numel) * size), dtype=dtype, _internal=True)
        root = self.storages[root_key]
        if view is None:
            return root
        _view_key, offset, view_numel = view
        return torch.storage.TypedStorage(
            wrap_storage=root._untyped_storage[offset * size:(offset + view_numel) * size], dtype=dtype, _internal=True)


def load_legacy(path: str | Path) -> Any:
    """Read a file in torch's pre-1.6 serialization format through `_LegacyUnpickler` (no code runs)."""
    with open(path, "rb") as f:
        def restricted() -> Any:
            return _LegacyUnpickler(f, {}).load()

        try:
            if restricted() != _LEGACY_MAGIC_NUMBER or restricted() != 1001:
                raise ValueError("not a torch legacy-format file")
            sys_info = restricted()
            if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
                raise ValueError("big-endian legacy files are not supported")
            storages: dict[str, torch.storage.TypedStorage] = {}
            result = _LegacyUnpickler(f, storages, Path(path).stat().st_size).load()
            keys = restricted()
            for key in keys:
                storage = storages[key]
                (numel,) = struct.unpack("<q", f.read(8))
                nbytes = numel * storage.element_size()
                if numel < 0 or nbytes != storage._untyped_storage.nbytes():
                    raise ValueError(f"storage {key} has {numel} elements, expected {storage.size()}")
                data = f.read(nbytes)
                if len(data) != nbytes:
                    raise EOFError("file ends inside a tensor")
                target = torch.empty(0, dtype=torch.uint8).set_(storage._untyped_storage)
                target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        except pickle.UnpicklingError as e:
            if str(e).startswith(("Unsupported global", "unsupported persistent id")):
                raise  # a refusal: read_checkpoint names what the file asked for
            raise ValueError(f"malformed legacy torch file ({e})") from None
        except (struct.error, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"malformed legacy torch file ({e})") from None
    return result


def _flatten_module(obj: _Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict of a pickled module tree, read from the stand-ins' recorded _parameters/_buffers/_modules."""
    state = vars(obj)
    out: dict[str, torch.Tensor] = {}
    for table in ("_parameters", "_buffers"):
        for name, value in (state.get(table) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Inert):
            out.update(_flatten_module(child, f"{prefix}{name}."))
    return out


def _hop_length(model: _Inert | None) -> int:
    """The upsampler's stride (= hop length) of a pickled module; 256 (all NVIDIA models) when unknown."""
    up = (vars(model).get("_modules") or {}).get("upsample") if model is not None else None
    stride = vars(up).get("stride") if isinstance(up, _Inert) else None
    if isinstance(stride, (tuple, list)) and len(stride) == 1 and isinstance(stride[0], int) and stride[0] > 0:
        return stride[0]
    return 256


def nvidia_state_dict(obj: dict[str, Any], source: str) -> tuple[dict[str, torch.Tensor], int]:
    """The NVIDIA-named weights of a checkpoint in any of the three layouts, and the hop length."""
    model = obj.get("model")
    if isinstance(model, _Inert):
        if model.pickled_name.split(".")[-1] != "WaveGlow":
            raise WavflowError(f"{source}: 'model' is a pickled {model.pickled_name}, expected glow.WaveGlow")
        return _flatten_module(model), _hop_length(model)
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    else:
        state = obj
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("upsample.") for k in state) or not any(k.startswith("WN.") for k in state):
        raise WavflowError(f"{source}: neither a wavflow checkpoint nor an NVIDIA WaveGlow checkpoint "
                           f"(top-level keys: {', '.join(map(str, list(obj)[:8])) or 'none'})")
    return state, 256


_WN_LAYER = re.compile(r"^WN\.(\d+)\.(start|end|cond_layer|cond_layers\.\d+|in_layers\.\d+|res_skip_layers\.\d+)$")
_CONVINV = re.compile(r"^convinv\.(\d+)\.conv$")
_SUFFIXES = {"weight_g": "g", "weight_v": "v", "parametrizations.weight.original0": "g",
             "parametrizations.weight.original1": "v", "weight": "w", "bias": "b"}


def _group_by_module(state: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix, short in _SUFFIXES.items():
            if key.endswith("." + suffix):
                modules.setdefault(key[: -len(suffix) - 1], {})[short] = value.float()
                break
        else:
            raise WavflowError(f"{source}: unexpected tensor '{key}' for an NVIDIA WaveGlow")
    return modules


def _weight_norm_pair(parts: dict[str, torch.Tensor], name: str, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) of a weight-normed conv; a plain weight w is the pair (|w| per output channel, w)."""
    if "g" in parts and "v" in parts:
        return parts["g"], parts["v"]
    if "w" in parts:
        w = parts["w"]
        return w.flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1)), w
    raise WavflowError(f"{source}: '{name}' has neither a weight nor a weight_g/weight_v pair")


def to_wavflow_state_dict(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename NVIDIA's weights onto wavflow's WaveGlow; per-layer cond_layers are fused into one cond_layer.

    Weight norm normalises each output channel on its own, so stacking the per-layer (g, v) pairs along the
    output channels is exactly the fused layer.
    """
    out: dict[str, torch.Tensor] = {}
    split_cond: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for name, parts in _group_by_module(state, source).items():
        if name == "upsample":
            out["upsample.weight"], out["upsample.bias"] = parts.get("w"), parts.get("b")
        elif m := _CONVINV.match(name):
            w = parts.get("w")
            if w is None or w.dim() != 3 or w.shape[0] != w.shape[1] or w.shape[2] != 1:
                raise WavflowError(f"{source}: '{name}.weight' should be [C, C, 1]")
            out[f"convinv.{m.group(1)}.weight"] = w[:, :, 0]
        elif m := _WN_LAYER.match(name):
            k, layer = int(m.group(1)), m.group(2)
            prefix = f"coupling.{k}.net.{layer}"
            if layer == "end":
                out[prefix + ".weight"], out[prefix + ".bias"] = parts.get("w"), parts.get("b")
            elif layer.startswith("cond_layers."):
                split_cond.setdefault(k, {})[int(layer.split(".")[1])] = parts
            else:
                g, v = _weight_norm_pair(parts, name, source)
                out[prefix + ".parametrizations.weight.original0"] = g
                out[prefix + ".parametrizations.weight.original1"] = v
                out[prefix + ".bias"] = parts.get("b")
        else:
            raise WavflowError(f"{source}: unexpected module '{name}' for an NVIDIA WaveGlow")
    for k, layers in split_cond.items():
        if sorted(layers) != list(range(len(layers))):
            raise WavflowError(f"{source}: WN.{k}.cond_layers are not numbered 0..{len(layers) - 1}")
        pairs = [_weight_norm_pair(layers[i], f"WN.{k}.cond_layers.{i}", source) for i in range(len(layers))]
        prefix = f"coupling.{k}.net.cond_layer"
        out[prefix + ".parametrizations.weight.original0"] = torch.cat([g for g, _ in pairs])
        out[prefix + ".parametrizations.weight.original1"] = torch.cat([v for _, v in pairs])
        out[prefix + ".bias"] = torch.cat([layers[i]["b"] for i in range(len(layers))])
    missing = sorted(k for k, v in out.items() if v is None)
    if missing:
        raise WavflowError(f"{source}: NVIDIA WaveGlow checkpoint lacks {missing[0]}")
    return out


def infer_config(state: dict[str, torch.Tensor], source: str) -> tuple[WaveGlowConfig, int]:
    """WaveGlowConfig and mel band count from the shapes of wavflow-named weights."""
    try:
        n_flows = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("convinv."))
        channels = [state[f"convinv.{k}.weight"].shape[0] for k in range(n_flows)]
        net = "coupling.0.net."
        n_layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith(net + "in_layers."))
        v_in = state[net + "in_layers.0.parametrizations.weight.original1"]
        up = state["upsample.weight"]
    except (KeyError, ValueError) as e:
        raise WavflowError(f"{source}: incomplete NVIDIA WaveGlow checkpoint (no {e})") from None
    changes = [k for k in range(1, n_flows) if channels[k] != channels[k - 1]]
    every = changes[0] if changes else n_flows
    size = channels[0] - channels[every] if changes else 0
    try:
        config = WaveGlowConfig(n_flows=n_flows, n_group=channels[0], n_early_every=every, n_early_size=size,
                                wn_layers=n_layers, wn_channels=v_in.shape[1], wn_kernel_size=v_in.shape[2],
                                upsample_kernel=up.shape[2])
    except WavflowError as e:
        raise WavflowError(f"{source}: NVIDIA checkpoint shapes give an {e}") from None
    if channels != [config.remaining_channels(k) for k in range(n_flows)]:
        raise WavflowError(f"{source}: flow channel counts {channels} do not follow an early-output schedule")
    return config, up.shape[0]


def model_from_checkpoint(obj: dict[str, Any], source: str = "checkpoint") -> WaveGlow:
    """A wavflow WaveGlow with the weights of an NVIDIA checkpoint (layouts a, b, c above), already read by
    checkpoint.read_checkpoint. The mel convention is NVIDIA's Tacotron 2 one, wavflow's default."""
    state, hop = nvidia_state_dict(obj, source)
    state = to_wavflow_state_dict(state, source)
    config, n_mels = infer_config(state, source)
    try:
        model = WaveGlow(config, MelConfig(n_mels=n_mels, hop_length=hop))
    except WavflowError as e:
        raise WavflowError(f"{source}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise WavflowError(f"{source}: weights do not fit the WaveGlow their shapes describe ({detail})") from None
    return model


def checkpoint_step(obj: dict[str, Any]) -> int:
    """Training iterations recorded in an NVIDIA checkpoint ('iteration', or DeepLearningExamples' 'epoch'), else 0."""
    for key in ("iteration", "epoch"):
        if isinstance(obj.get(key), int):
            return obj[key]
    return 0
