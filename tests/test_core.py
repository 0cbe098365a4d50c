"""The shared core: seeds, the schedule, the checkpointed training state and folder publishing."""

from __future__ import annotations

import hashlib

import pytest
import torch

from t2ialign.core.checkpoint import CheckpointError
from t2ialign.core.fsutil import publish_dir
from t2ialign.core.seeds import stable_seed
from t2ialign.core.training import TrainState, fit, lr_factor


def test_stable_seed_is_pinned():
    # the values every world render and prompt perturbation has been drawn from: they must never move
    assert stable_seed("render", 0, "Two red circles", 64) == 5195960116453192408
    assert stable_seed(0, "Two circles", bits=64) == 6659209985043275067
    assert stable_seed(0, "Two circles") == 6659209985043275067 >> 1
    assert stable_seed("a", 1) != stable_seed("a:1", "")  # parts are joined with ":", so these collide...
    assert stable_seed("a", 1) == stable_seed("a:1")  # ...only when the joined text is the same
    with pytest.raises(ValueError, match="bits"):
        stable_seed(0, bits=65)


def test_lr_factor_refuses_unknown_schedules():
    assert [lr_factor(s, 2, 10, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(5, 2, 10, "linear")


def _state(tmp_path, trainable_only: bool):
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    net[0].requires_grad_(not trainable_only)  # frozen first layer: only the second one is checkpointed
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    return TrainState(
        net, opt, EMAModel(params, decay=0.9), config={"k": 1}, root=tmp_path, trainable_only=trainable_only
    )


@pytest.mark.parametrize("trainable_only", [False, True])
def test_train_state_round_trips_weights_optimizer_and_ema(tmp_path, trainable_only):
    x = torch.randn(8, 3)
    a = _state(tmp_path / "a", trainable_only)
    fit(a, lambda step: a.module(x).pow(2).mean() * (1 + step), name="a", steps=3, lr=1e-2,
        checkpointing_steps=3, progress=False)  # fmt: skip
    b = _state(tmp_path / "a", trainable_only)  # a fresh state from the same init, resumed
    assert b.resume_latest("b", echo=lambda _: None) == 3
    for (name, pa), pb in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert all(torch.equal(p, q) for p, q in zip(a.ema.shadow_params, b.ema.shadow_params, strict=True))
    assert b.ema.optimization_step == a.ema.optimization_step == 3
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    c = _state(tmp_path / "a", trainable_only)
    c.config = {"k": 2}
    with pytest.raises(CheckpointError, match="config"):
        c.resume_latest("c")


def test_fit_guards_non_finite_losses_before_any_step(tmp_path):
    s = _state(tmp_path, False)
    before = [p.clone() for p in s.params]
    with pytest.raises(FloatingPointError, match=r"\[nan\] non-finite loss at step 0"):
        fit(s, lambda step: torch.tensor(float("nan"), requires_grad=True), name="nan", steps=2, lr=1.0,
            checkpointing_steps=1, progress=False)  # fmt: skip
    assert all(torch.equal(p, q) for p, q in zip(before, s.params, strict=True))
    assert not list(tmp_path.glob("checkpoint-*"))


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    final, tmp = tmp_path / "out", tmp_path / "out.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    publish_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert not tmp.exists() and not (tmp_path / "out.old").exists()


def test_fingerprints_see_weights_config_and_files(tmp_path):
    from t2ialign.core.fingerprint import file_sha256, folder_fingerprint, module_fingerprint

    torch.manual_seed(0)
    net = torch.nn.Linear(2000, 2)  # 4,000 float32 weights: 16,000 bytes, more than the 4,096 sampled
    fp = module_fingerprint(net)
    assert fp == module_fingerprint(net) and len(fp) == 16
    with torch.no_grad():
        net.weight[0, 0] += 1.0  # inside the sample: seen by both
    assert module_fingerprint(net) != fp
    full = module_fingerprint(net, sample_bytes=None)
    with torch.no_grad():
        net.weight[1, -1] += 1.0  # past the first 4,096 bytes: only the full hash sees it
    assert module_fingerprint(net, sample_bytes=None) != full
    net.config = {"width": 1}
    assert module_fingerprint(net) != module_fingerprint(net, with_config=False)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.txt").write_text("ignored")
    f1 = folder_fingerprint(tmp_path)
    (tmp_path / "b.txt").write_text("still ignored")
    assert folder_fingerprint(tmp_path) == f1
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert folder_fingerprint(tmp_path) != f1
    assert file_sha256(tmp_path / "a.json") == hashlib.sha256(b'{"x": 1}').hexdigest()
