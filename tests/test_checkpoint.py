"""Atomic checkpoints: round trips, crash safety, refusal of mismatched or missing ones."""

import json
import os

import pytest
import torch

from t2ialign.core.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    resolve_resume,
    save_checkpoint,
    with_defaults,
)


def _model_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    return m, opt


def test_round_trip_with_optimizer_state(tmp_path):
    m, opt = _model_and_opt()
    tensors = {f"model.{k}": v for k, v in m.state_dict().items()}
    opt_t, opt_state = optimizer_to_tensors(opt)
    path = save_checkpoint(tmp_path, 7, {**tensors, **opt_t}, {"config": {"lr": 0.1}, "optimizer": opt_state})
    assert path.name == "checkpoint-00000007" and latest_checkpoint(tmp_path) == path
    loaded, state = load_checkpoint(path, expect_config={"lr": 0.1})
    assert state["step"] == 7
    m2 = torch.nn.Linear(4, 3)
    m2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model.")})
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    optimizer_from_tensors(opt2, loaded, state["optimizer"])
    # one more identical step from both gives identical weights
    x = torch.randn(8, 4)
    for model, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        model(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(m.weight, m2.weight) and torch.equal(m.bias, m2.bias)


def test_keeps_the_newest_and_ignores_incomplete(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"w": torch.ones(2) * step}, {"config": {}}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000003", "checkpoint-00000004"]
    # a crash while writing step 5: a folder without a manifest is never "latest"
    half = tmp_path / "checkpoint-00000005"
    half.mkdir()
    (half / "tensors.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000004"
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-00000004"
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_resume(tmp_path, str(half))
    # a truncated file under a manifest is caught too
    last = latest_checkpoint(tmp_path)
    with open(last / "tensors.safetensors", "r+b") as f:
        f.truncate(10)
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000003"


def test_refuses_mismatch_missing_and_corruption(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(3)}, {"config": {"lr": 0.1, "steps": 10}})
    with pytest.raises(CheckpointError, match="another config .*lr"):
        load_checkpoint(path, expect_config={"lr": 0.2, "steps": 10})
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    assert resolve_resume(tmp_path / "empty", "latest") is None
    assert resolve_resume(tmp_path, None) is None
    data = bytearray((path / "tensors.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_non_finite_values_never_reach_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path, 1, {"w": torch.tensor([1.0, float("nan")])}, {})
    assert list_checkpoints(tmp_path) == []
    assert not any(p.name.startswith("checkpoint-") for p in tmp_path.iterdir())


def test_manifest_is_written_last(tmp_path, monkeypatch):
    """A crash between the data files and the manifest leaves only a temporary folder."""
    import t2ialign.core.checkpoint as ck

    real = ck.fsync_file
    calls = []

    def crash_on_manifest(path):
        calls.append(path.name)
        if path.name == "manifest.json":
            raise OSError("simulated crash")
        return real(path)

    save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {})
    monkeypatch.setattr(ck, "fsync_file", crash_on_manifest)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"w": torch.ones(1)}, {})
    assert calls[-1] == "manifest.json"
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000001"
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["step"] == 1
    assert not (tmp_path / "checkpoint-00000002").exists()
    assert os.listdir(tmp_path)  # the previous checkpoint is intact


def test_a_checkpoint_from_before_a_setting_existed_continues_at_its_default(tmp_path):
    old = {"lr": 1e-4, "nested": {"a": 1}}  # made before "bias" and "nested.b" existed
    path = save_checkpoint(tmp_path, 10, {"w": torch.zeros(2)}, {"config": old})
    defaults = {"lr": 1e-5, "bias": "none", "nested": {"a": 0, "b": 2}}
    now = {"lr": 1e-4, "bias": "none", "nested": {"a": 1, "b": 2}}
    assert with_defaults(old, defaults) == now
    _, state = load_checkpoint(path, expect_config=now, defaults=defaults)
    assert state["step"] == 10
    with pytest.raises(CheckpointError, match=r"differs in: bias\)"):  # not its default: another run
        load_checkpoint(path, expect_config=now | {"bias": "later"}, defaults=defaults)
    with pytest.raises(CheckpointError, match="differs in: bias, nested"):  # no defaults: strict, as before
        load_checkpoint(path, expect_config=now)
