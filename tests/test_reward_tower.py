"""The reward that also tunes the CLIP image tower (issue 14, part 4; reward/tower.py)."""

import json

import pytest
import torch

from t2ialign.config import ConfigError, ImageTowerConfig, RewardConfig
from t2ialign.core.fingerprint import module_fingerprint
from t2ialign.models.load import load_clip
from t2ialign.reward.model import RewardModel
from t2ialign.reward.tower import TOWER_FILE, tunable_copy, with_tower
from t2ialign.reward.train import score_items, train_reward


def _cfg(layers: int) -> RewardConfig:
    return RewardConfig(
        hidden=(32,),
        epochs=40,
        batch_size=16,
        lr=3e-3,
        n_prompts=4,
        val_fraction=0.25,
        image_tower=ImageTowerConfig(layers=layers, lr=1e-3),
    )


def test_tunable_copy_trains_only_the_last_layers_and_leaves_the_original(tiny_clip_path):
    clip, _, _ = load_clip(tiny_clip_path)
    before = module_fingerprint(clip)
    grads_before = [p.requires_grad for p in clip.parameters()]
    n = len(clip.vision_model.encoder.layers)
    tuned = tunable_copy(clip, 1)
    trainable = {k for k, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all(
        k.startswith(
            (f"vision_model.encoder.layers.{n - 1}.", "vision_model.post_layernorm.", "visual_projection.")
        )
        for k in trainable
    )
    assert [p.requires_grad for p in clip.parameters()] == grads_before
    whole = {k for k, p in tunable_copy(clip, -1).named_parameters() if p.requires_grad}
    assert any(k.startswith("vision_model.embeddings.") for k in whole)
    assert not any(k.startswith(("text_model.", "text_projection.")) for k in whole)
    assert module_fingerprint(clip) == before
    for bad in (0, -2, n + 1):
        with pytest.raises(ValueError, match="image_tower.layers"):
            tunable_copy(clip, bad)
    with pytest.raises(ConfigError, match="image_tower.layers"):
        ImageTowerConfig(layers=-3)


def test_a_tuned_tower_is_trained_saved_and_scored_by_the_tuned_copy(labeled_run, tiny_clip_path, tmp_path):
    clip, proc, clip_id = load_clip(tiny_clip_path)
    base_fp = module_fingerprint(clip)
    model, report = train_reward(
        labeled_run, _cfg(1), clip, proc, clip_id, str(tiny_clip_path), progress=False
    )
    assert model.tuned_tower and report["loss_history"][-1] < report["loss_history"][0]
    assert module_fingerprint(clip) == base_fp, "the CLIP given (CLIP score, FD_CLIP) is left as it was"
    tuned_vision = dict(model.scorer_clip.vision_model.named_parameters())
    base_vision = dict(clip.vision_model.named_parameters())
    changed = [k for k in base_vision if not torch.equal(base_vision[k], tuned_vision[k])]
    assert changed and all(k.startswith(("encoder.layers.", "post_layernorm.")) for k in changed)
    assert all(
        torch.equal(a, b)
        for a, b in zip(clip.text_model.parameters(), model.scorer_clip.text_model.parameters(), strict=True)
    )

    model.save(tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["tuned_image_tower"] == TOWER_FILE
    again = RewardModel.load(tmp_path / "rm")
    assert again.tuned_tower and module_fingerprint(again.clip) == base_fp
    items = [{"sha256": r["sha256"], "prompt": r["prompt"]} for r in labeled_run.list_images()]
    shas, prompts = [r["sha256"] for r in items], [r["prompt"] for r in items]
    stored = again.score_store(labeled_run, shas, prompts)
    assert torch.allclose(stored, model.score_store(labeled_run, shas, prompts), atol=1e-6)
    direct = again.score(prompts, [labeled_run.image_array(s) for s in shas])
    assert torch.allclose(stored, direct, atol=1e-5), "score() and the cached path read the same tuned tower"
    # the frozen path (CLIP score and the paper's reward) reads the original CLIP, not the tuned copy
    from t2ialign.models.embed import Embeddings

    emb = Embeddings(labeled_run, clip, proc)
    emb.ensure(shas, sorted(set(prompts)))
    frozen_view = again.score_embeddings(emb.images.get(shas), emb.texts.get(prompts))
    assert not torch.allclose(frozen_view, stored), "the tuned reward must score the tuned embeddings"
    assert score_items(items, emb, again) == pytest.approx(
        {s: float(v) for s, v in zip(shas, stored, strict=True)}
    )

    (tmp_path / "rm" / TOWER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="tuned image tower"):
        RewardModel.load(tmp_path / "rm")


def test_with_tower_refuses_tensors_of_another_shape_or_place(tiny_clip_path):
    clip, _, _ = load_clip(tiny_clip_path)
    with pytest.raises(ValueError, match="outside the image tower"):
        with_tower(clip, {"text_projection.weight": clip.text_projection.weight})
    with pytest.raises(ValueError, match="lacks"):
        with_tower(clip, {"visual_projection.weight": clip.visual_projection.weight})


def test_cli_flags_reach_the_nested_table(labeled_run, tiny_clip_path, tmp_path, capsys):
    from t2ialign.cli import main

    cfg = tmp_path / "r.toml"
    cfg.write_text(
        "[reward]\nhidden = [16]\nepochs = 2\nbatch_size = 16\nn_prompts = 3\nval_fraction = 0.25\n"
    )
    common = [str(labeled_run.run_dir), "--clip", str(tiny_clip_path), "--config", str(cfg)]
    out = tmp_path / "rm"
    assert main(["reward", "train", *common, "--image-tower-layers", "1", "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["tuned_image_tower"] == TOWER_FILE and meta["config"]["image_tower"] == {
        "layers": 1,
        "lr": 1e-4,
    }
    assert main(["reward", "train", *common, "--image-tower-layers", "-4"]) == 2
    assert "image_tower.layers" in capsys.readouterr().err
