"""Half-precision inference checkpoints: fp16/bf16 weights in the file, float32 weights after loading equal to the
stored values; every loader takes them; `wavflow convert --dtype fp16|bf16` writes them and refuses by name what
it cannot store."""
from __future__ import annotations

import pytest
import torch

import wavflow
from wavflow.checkpoint import (
    cast_weights,
    inference_payload,
    load_with_step,
    model_payload,
    read_checkpoint,
    save_checkpoint,
)
from wavflow.commands import convert as convert_cmd
from wavflow.convert import convert
from wavflow.errors import WavflowError
from wavflow.evaluate import load_model

from synth_helpers import REPO, run_in_process, save_tiny_waveglow, snapshot, tiny_waveglow

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_round_trip_loads_float32_weights_equal_to_the_stored_values(tmp_path, dtype):
    source = save_tiny_waveglow(tmp_path / "full.pt", seed=3)
    info = convert(source, tmp_path / "half.pt", dtype)
    raw = read_checkpoint(tmp_path / "half.pt")
    assert raw["weights_dtype"] == dtype and info["dtype"] == dtype
    full = read_checkpoint(source)["state_dict"]
    assert all(v.dtype == HALF[dtype] for v in raw["state_dict"].values())  # every weight of this model is float32
    assert all(torch.equal(raw["state_dict"][k], full[k].to(HALF[dtype])) for k in full)  # rounded once, to nearest
    model, step = load_with_step(tmp_path / "half.pt")
    loaded = model.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], raw["state_dict"][k].float())
               for k in loaded)
    assert step == 0
    size, half_size = source.stat().st_size, (tmp_path / "half.pt").stat().st_size
    assert 0.45 < half_size / size < 0.6  # half the bytes, plus the same small header


def test_every_loader_takes_a_half_checkpoint(tmp_path):
    from wavflow.inference import synthesize

    path = tmp_path / "half.pt"
    convert(save_tiny_waveglow(tmp_path / "full.pt", seed=4), path, "fp16")
    expected = wavflow.load(tmp_path / "full.pt").state_dict()
    model = wavflow.load(path)
    assert all(torch.allclose(model.state_dict()[k], expected[k], rtol=1e-3, atol=1e-4) for k in expected)
    checkpoint = load_model(path, torch.device("cpu"))  # wavflow.evaluate's loader (folds weight norm)
    assert checkpoint.parameters == sum(p.numel() for p in model.parameters())
    mel = torch.from_numpy(__import__("numpy").load(REPO / "examples" / "LJ002-0020.npy"))[:, :20]
    audio = synthesize(mel, checkpoint=path, seed=0)
    assert torch.isfinite(torch.as_tensor(audio)).all()
    # Converting a half file back to fp32 gives float32 tensors holding the half values, exactly.
    convert(path, tmp_path / "back.pt", "fp32")
    back = read_checkpoint(tmp_path / "back.pt")
    assert "weights_dtype" not in back
    assert all(back["state_dict"][k].dtype == torch.float32 for k in back["state_dict"])
    assert all(torch.equal(back["state_dict"][k], model.state_dict()[k]) for k in back["state_dict"])


def test_inference_payload_drops_the_training_state(tmp_path):
    model = tiny_waveglow(seed=1)
    optimizer = torch.optim.Adam(model.parameters())
    payload = model_payload(model, 7, optimizer=optimizer.state_dict(), scaler=None, rng=[], world_size=1,
                            sampler={"epoch": 0, "batches": 0}, best_valid_nll=-1.0, train_config={"x": 1},
                            init_from={"path": "a.pt"})
    shipped = inference_payload(payload, "bf16")
    assert not {"optimizer", "scaler", "rng", "sampler", "world_size", "best_valid_nll"} & set(shipped)
    assert shipped["step"] == 7 and shipped["train_config"] == {"x": 1} and shipped["init_from"] == {"path": "a.pt"}


def test_what_cannot_be_stored_or_read_is_refused_by_name(tmp_path, capsys):
    state = {"big": torch.tensor([1.0, 70000.0]), "steps": torch.tensor([3])}
    with pytest.raises(WavflowError, match="weight big holds magnitudes above fp16's 65504"):
        cast_weights(state, "fp16")
    kept = cast_weights(state, "bf16")
    assert kept["big"].dtype == torch.bfloat16 and kept["steps"].dtype == torch.int64  # integers untouched

    source = save_tiny_waveglow(tmp_path / "full.pt")
    bad = read_checkpoint(source)
    bad["weights_dtype"] = "fp8"
    save_checkpoint(tmp_path / "bad.pt", bad)
    with pytest.raises(WavflowError, match="'weights_dtype' is 'fp8', expected one of fp32, fp16, bf16"):
        wavflow.load(tmp_path / "bad.pt")

    before = snapshot(tmp_path)
    run, prog = convert_cmd.run, convert_cmd.PROG
    code, _, err = run_in_process(run, [source, tmp_path / "no" / "small.pt", "--max-mib", "0.01"], capsys, prog)
    assert code == 2 and err.count("\n") == 1 and "more than --max-mib 0.01; nothing written" in err
    code, _, err = run_in_process(run, [tmp_path / "nope.pt", tmp_path / "x.pt"], capsys, prog)
    assert code == 2 and "nope.pt: no such checkpoint file" in err
    code, _, err = run_in_process(run, [source, tmp_path / "full.pt" / "x.pt"], capsys, prog)
    assert code == 2 and "full.pt is not a directory" in err
    code, _, err = run_in_process(run, [source, tmp_path / "x.pt", "--dtype", "fp8"], capsys, prog)
    assert code == 2 and "--dtype: invalid choice: 'fp8'" in err
    assert snapshot(tmp_path) == before  # not even the directory 'no' of the refused --max-mib file

    code, out, _ = run_in_process(run, [source, tmp_path / "new" / "ok.pt", "--dtype", "bf16"], capsys, prog)
    assert code == 0 and out.startswith(f"{tmp_path / 'new' / 'ok.pt'}: waveglow, ") and " as bf16, " in out
    assert ", step 0, from a wavflow checkpoint, sha256 " in out


def test_shipped_checkpoints_fit_16_mib_in_half_precision(tmp_path):
    # What gpu_continue.sh ships: each of the three models in fp16 under the 16 MiB a GPU run can bring back.
    for name in ("waveglow", "wavenet", "student"):
        info = convert(REPO / "checkpoints" / f"{name}-ljspeech-mini.pt", tmp_path / f"{name}.pt", "fp16", max_mib=16)
        assert info["bytes"] < 16 * 2**20 and info["model_type"] == name
