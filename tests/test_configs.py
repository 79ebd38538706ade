"""Model configs refuse, in their own constructor, every value that cannot build a model.

Each config dataclass (WaveGlowConfig, WaveNetConfig, StudentConfig) raises WavflowError from __post_init__,
naming the field and the value, so the trainer's CLI reports one line and exits 2 instead of a ValueError from a
layer deep inside the model's constructor. The default, paper and tiny recipe configs still construct.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from wavflow.errors import WavflowError
from wavflow.models import build_model, config_from_dict
from wavflow.models.student import StudentConfig
from wavflow.models.waveglow import WaveGlowConfig
from wavflow.models.wavenet import WaveNetConfig
from wavflow.train import Trainer, load_config

from synth_helpers import LJSPEECH

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "ljspeech" / "conf"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (config class, field overrides, text the error must contain)
INVALID = [
    # WaveGlow
    (WaveGlowConfig, {"n_flows": 0}, "n_flows=0"),
    (WaveGlowConfig, {"n_flows": -3}, "n_flows=-3"),
    (WaveGlowConfig, {"n_flows": 2.5}, "n_flows=2.5"),
    (WaveGlowConfig, {"n_flows": True}, "n_flows=True"),
    (WaveGlowConfig, {"n_group": 7}, "n_group=7 must be an even integer >= 2"),
    (WaveGlowConfig, {"n_group": 0}, "n_group=0"),
    (WaveGlowConfig, {"n_group": -8}, "n_group=-8"),
    (WaveGlowConfig, {"n_early_every": 0}, "n_early_every=0"),
    (WaveGlowConfig, {"n_early_size": 3}, "n_early_size=3 must be an even integer"),
    (WaveGlowConfig, {"n_early_size": -2}, "n_early_size=-2"),
    (WaveGlowConfig, {"n_flows": 12, "n_group": 8, "n_early_every": 2, "n_early_size": 2}, "fewer than 2 channels"),
    (WaveGlowConfig, {"n_group": 4, "n_early_every": 1, "n_early_size": 2}, "n_early_every=1 and n_early_size=2"),
    (WaveGlowConfig, {"wn_layers": 0}, "wn_layers=0"),
    (WaveGlowConfig, {"wn_channels": 0}, "wn_channels=0"),
    (WaveGlowConfig, {"wn_kernel_size": 4}, "wn_kernel_size=4 must be an odd integer"),
    (WaveGlowConfig, {"wn_kernel_size": 0}, "wn_kernel_size=0"),
    (WaveGlowConfig, {"wn_kernel_size": -1}, "wn_kernel_size=-1"),
    (WaveGlowConfig, {"upsample_kernel": 0}, "upsample_kernel=0"),
    (WaveGlowConfig, {"upsample_frames": 0}, "upsample_frames=0"),
    (WaveGlowConfig, {"n_group": None, "n_early_size": 3}, "n_early_size=3"),
    (WaveGlowConfig, {"sigma": 0.0}, "sigma=0.0"),
    (WaveGlowConfig, {"sigma": math.nan}, "sigma=nan"),
    (WaveGlowConfig, {"sigma": math.inf}, "sigma=inf"),
    (WaveGlowConfig, {"infer_sigma": -0.1}, "infer_sigma=-0.1"),
    (WaveGlowConfig, {"infer_sigma": math.nan}, "infer_sigma=nan"),
    (WaveNetConfig, {"infer_temperature": -0.5}, "infer_temperature=-0.5 must be a number >= 0"),
    (WaveNetConfig, {"infer_temperature": math.nan}, "infer_temperature=nan"),
    (StudentConfig, {"infer_temperature": -1.0}, "infer_temperature=-1.0"),
    # WaveNet teacher
    (WaveNetConfig, {"layers": 0}, "layers=0 must be an integer >= 1"),
    (WaveNetConfig, {"layers": -24}, "layers=-24"),
    (WaveNetConfig, {"layers": 25}, "layers=25 must be a multiple of cycles=4"),
    (WaveNetConfig, {"cycles": 5}, "layers=24 must be a multiple of cycles=5"),
    (WaveNetConfig, {"cycles": 0}, "cycles=0 must be an integer >= 1"),
    (WaveNetConfig, {"cycles": -4}, "cycles=-4"),
    (WaveNetConfig, {"kernel_size": 1}, "kernel_size=1 must be an integer >= 2"),
    (WaveNetConfig, {"kernel_size": 0}, "kernel_size=0"),
    (WaveNetConfig, {"residual_channels": 0}, "residual_channels=0"),
    (WaveNetConfig, {"gate_channels": 33}, "gate_channels=33 must be an even integer"),
    (WaveNetConfig, {"gate_channels": 0}, "gate_channels=0"),
    (WaveNetConfig, {"skip_channels": -1}, "skip_channels=-1"),
    (WaveNetConfig, {"upsample_channels": 0}, "upsample_channels=0"),
    (WaveNetConfig, {"upsample_factors": ()}, "upsample_factors=()"),
    (WaveNetConfig, {"upsample_factors": (4, 0, 16, 4)}, "upsample_factors=(4, 0, 16, 4)"),
    (WaveNetConfig, {"upsample_factors": (-4, -4, 4, 4)}, "upsample_factors=(-4, -4, 4, 4)"),
    (WaveNetConfig, {"upsample_factors": 256}, "upsample_factors=256"),
    (WaveNetConfig, {"context_kernel": 4}, "context_kernel=4 must be an odd integer"),
    (WaveNetConfig, {"context_kernel": 0}, "context_kernel=0"),
    (WaveNetConfig, {"output": "laplace"}, "output='laplace' is not a known WaveNet output"),
    (WaveNetConfig, {"log_scale_min": math.nan}, "log_scale_min=nan"),
    (WaveNetConfig, {"mixture_components": 0}, "mixture_components=0"),
    (WaveNetConfig, {"mixture_bits": 0}, "mixture_bits=0"),
    (WaveNetConfig, {"mixture_bits": 40}, "mixture_bits=40"),
    (WaveNetConfig, {"mulaw_channels": 1}, "mulaw_channels=1"),
    # IAF student
    (StudentConfig, {"flow_layers": (10, 7)}, "a flow of 7 layers is not a whole number of dilation cycles"),
    (StudentConfig, {"flow_layers": ()}, "flow_layers=() must be a non-empty list"),
    (StudentConfig, {"flow_layers": (10, 0)}, "flow_layers=(10, 0)"),
    (StudentConfig, {"flow_layers": (10, -10)}, "flow_layers=(10, -10)"),
    (StudentConfig, {"flow_layers": 10}, "flow_layers=10"),
    (StudentConfig, {"dilation_cycle": 0}, "dilation_cycle=0"),
    (StudentConfig, {"residual_channels": 0}, "residual_channels=0"),
    (StudentConfig, {"gate_channels": 127}, "gate_channels=127 must be an even integer"),
    (StudentConfig, {"gate_channels": 0}, "gate_channels=0"),
    (StudentConfig, {"skip_channels": -64}, "skip_channels=-64"),
    (StudentConfig, {"kernel_size": 1}, "kernel_size=1 must be an integer >= 2"),
    (StudentConfig, {"base": "laplace"}, "base='laplace'"),
    (StudentConfig, {"log_scale_min": math.inf}, "log_scale_min=inf"),
    (StudentConfig, {"upsample_channels": 0}, "upsample_channels=0"),
    (StudentConfig, {"upsample_factors": (4, 0, 4, 4)}, "upsample_factors=(4, 0, 4, 4)"),
    (StudentConfig, {"upsample_factors": ()}, "upsample_factors=()"),
    (StudentConfig, {"kl_weight": -1.0}, "kl_weight=-1.0"),
    (StudentConfig, {"scale_regularizer": math.nan}, "scale_regularizer=nan"),
    (StudentConfig, {"stft_weight": -0.5}, "stft_weight=-0.5"),
    (StudentConfig, {"kl_weight": 0.0, "stft_weight": 0.0}, "leave nothing to train on"),
    (StudentConfig, {"mc_samples": 0}, "mc_samples=0"),
    (StudentConfig, {"stft_resolutions": ()}, "stft_resolutions=()"),
    (StudentConfig, {"stft_resolutions": ((512, 128),)}, "stft_resolutions=((512, 128),)"),
    (StudentConfig, {"stft_resolutions": ((512, 128, 1024),)}, "stft_resolutions [512, 128, 1024]"),
    (StudentConfig, {"stft_resolutions": ((512, 0, 512),)}, "stft_resolutions [512, 0, 512]"),
]


@pytest.mark.parametrize("cls,overrides,match", INVALID,
                         ids=[f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for c, o, _ in INVALID])
def test_invalid_value_is_refused_by_the_config(cls, overrides, match):
    with pytest.raises(WavflowError) as e:
        cls(**overrides)
    message = str(e.value)
    assert message.startswith(f"invalid {cls.__name__}: "), message
    assert match in message, message
    assert "\n" not in message


FROM_DICT = [row for cls in (WaveGlowConfig, WaveNetConfig, StudentConfig)
             for row in [r for r in INVALID if r[0] is cls][:4]]


@pytest.mark.parametrize("cls,overrides,match", FROM_DICT,
                         ids=[f"{c.__name__}-{'-'.join(o)}" for c, o, _ in FROM_DICT])
def test_invalid_value_is_refused_from_a_dict_too(cls, overrides, match):
    """Checkpoints and YAML build configs through config_from_dict (lists for tuples): the same refusal."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}
    with pytest.raises(WavflowError, match=re.escape(match)):
        config_from_dict(cls, d)


def test_every_problem_is_named_on_one_line():
    with pytest.raises(WavflowError) as e:
        WaveNetConfig(layers=0, cycles=0, kernel_size=1, gate_channels=33, output="x")
    message = str(e.value)
    for part in ("layers=0", "cycles=0", "kernel_size=1", "gate_channels=33", "output='x'"):
        assert part in message
    assert "\n" not in message


@pytest.mark.parametrize("config", [
    WaveGlowConfig(), WaveGlowConfig.tiny(), WaveNetConfig(), WaveNetConfig.tiny(), StudentConfig(),
    StudentConfig.tiny(), StudentConfig.tiny("logistic"), StudentConfig.parallel_wavenet(),
    WaveNetConfig(kernel_size=2), WaveNetConfig(output="mixture"), WaveNetConfig(output="mulaw"),
    WaveGlowConfig(n_early_size=0), WaveGlowConfig(wn_kernel_size=1), WaveGlowConfig(infer_sigma=0.0),
    StudentConfig(kl_weight=0.0), StudentConfig(kernel_size=2, flow_layers=(10, 30)),
], ids=repr)
def test_valid_configs_construct(config):
    assert type(config)(**{f: getattr(config, f) for f in config.__dataclass_fields__}) == config


def test_lists_become_tuples():
    """YAML and JSON give lists; the configs keep tuples (hashable, and equal to the dataclass defaults)."""
    assert WaveNetConfig(upsample_factors=[4, 4, 4, 4]).upsample_factors == (4, 4, 4, 4)
    s = StudentConfig(flow_layers=[10, 10], upsample_factors=[4, 4, 4, 4], stft_resolutions=[[512, 128, 512]])
    assert s.flow_layers == (10, 10) and s.upsample_factors == (4, 4, 4, 4) and s.stft_resolutions == ((512, 128, 512),)


@pytest.mark.parametrize("name", ["waveglow", "wavenet", "student"])
@pytest.mark.parametrize("size", ["", ".tiny"])
def test_recipe_configs_construct(name, size):
    """Every shipped recipe's model_config passes the checks (the tiny ones also build, with their mel)."""
    path = CONF / f"{name}{size}.yaml"
    config = load_config(path, [f"data.root={LJSPEECH}"])
    cls = {"waveglow": WaveGlowConfig, "wavenet": WaveNetConfig, "student": StudentConfig}[name]
    built = config_from_dict(cls, config.model_config)
    assert isinstance(built, cls)
    if size:
        from wavflow.frontend import MelConfig

        mel = MelConfig.from_dict(config.mel)
        model = build_model(name, config.model_config, mel)
        # WaveGlow fills in what the hop decides (n_group, the upsampler's kernel); the rest as written
        assert model.config == (built.resolved(mel.hop_length) if name == "waveglow" else built)
    raw = yaml.safe_load(path.read_text())
    assert set(raw.get("model_config") or {}) <= set(cls.__dataclass_fields__)


def test_mel_dependent_checks_stay_in_the_model_and_are_wavflow_errors():
    from wavflow.models.student import IAFStudent
    from wavflow.models.waveglow import WaveGlow
    from wavflow.models.wavenet import WaveNet

    with pytest.raises(WavflowError, match="n_group 6 must divide the hop length 256"):
        WaveGlow(WaveGlowConfig(n_group=6, n_early_size=0))
    with pytest.raises(WavflowError, match="upsample_kernel 300 must be a multiple of the hop length 256"):
        WaveGlow(dataclasses.replace(WaveGlowConfig.tiny(), upsample_kernel=300))
    with pytest.raises(WavflowError, match=re.escape("upsample_factors (4, 4, 4) multiply to 64")):
        WaveNet(WaveNetConfig.tiny(upsample_factors=(4, 4, 4)))
    with pytest.raises(WavflowError, match=re.escape("upsample_factors (4, 4, 4) multiply to 64")):
        IAFStudent(StudentConfig(flow_layers=(3,), dilation_cycle=3, upsample_factors=(4, 4, 4)))


def _trainer_config(segment_length: int):
    return load_config(CONF / "waveglow.tiny.yaml", [
        f"data.root={LJSPEECH}", "data.cache_audio=false", "train.device=cpu", "train.tensorboard=false",
        "train.valid_every=0", "data.n_valid=20",
        f"data.segment_length={segment_length}"])


def test_segment_length_up_to_the_longest_training_clip_is_accepted(tmp_path):
    longest = 213149  # LJ001-0003, the longest of the 13 training clips (the last 20 of 33 are held out)
    Trainer(_trainer_config(longest), tmp_path / "run")
    with pytest.raises(WavflowError, match=f"data.segment_length={longest + 1} is longer than every training clip "
                                           fr"\(the longest has {longest} samples\)"):
        Trainer(_trainer_config(longest + 1), tmp_path / "run")
    assert not (tmp_path / "run").exists()
