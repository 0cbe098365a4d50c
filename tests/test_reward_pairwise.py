"""The Bradley-Terry reward from pairwise feedback (issue 17, part 3; reward/pairwise.py)."""

import math

import pytest
import torch

from t2ialign.config import RewardConfig
from t2ialign.models.load import load_clip
from t2ialign.reward.losses import bradley_terry_loss
from t2ialign.reward.pairwise import (
    decided_pairs,
    fit_bradley_terry,
    preference_items,
    split_pairs,
    train_pairwise_reward,
)


def test_bradley_terry_loss_by_hand():
    r_a, r_b = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    p_a = torch.tensor([1.0, 0.5, 0.0])
    # -log sigmoid(2); a tie at equal rewards: log 2; b preferred by 2: -log sigmoid(2)
    want = (-math.log(1 / (1 + math.exp(-2))) + math.log(2) - math.log(1 / (1 + math.exp(-2)))) / 3
    assert float(bradley_terry_loss(r_a, r_b, p_a)) == pytest.approx(want, rel=1e-6)
    # swapping the images and the target leaves the loss unchanged
    assert float(bradley_terry_loss(r_b, r_a, 1 - p_a)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="p_a must lie"):
        bradley_terry_loss(r_a, r_b, torch.tensor([1.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="alike"):
        bradley_terry_loss(r_a, r_b[:2], p_a)


def _answer_pairs(store, tie_every: int = 0):
    """Every (good, bad) image pair of each prompt of the labeled_run fixture, answered by two raters who
    prefer the good image (the first says tie on every tie_every-th pair)."""
    good = {}
    for r in store.list_images():
        good.setdefault(r["prompt"], []).append((r["seed"] % 2 == 0, r["sha256"]))
    rows, n = [], 0
    for prompt, imgs in sorted(good.items()):
        for is_good_a, a in imgs:
            for is_good_b, b in imgs:
                if is_good_a and not is_good_b:
                    n += 1
                    first = "tie" if tie_every and n % tie_every == 0 else "A"
                    rows += [(prompt, a, b, "r1@test", first), (prompt, b, a, "r2@test", "B")]
    store.import_preferences(rows, "import:test")
    return n


def test_preference_items_aggregate_the_raters(labeled_run):
    n = _answer_pairs(labeled_run, tie_every=3)
    items = preference_items(labeled_run)
    assert len(items) == n == 8 * 3 * 3
    good = {r["sha256"] for r in labeled_run.list_images() if r["seed"] % 2 == 0}
    for it in items:
        p_good = it["p_a"] if it["image_a"] in good else 1 - it["p_a"]
        assert it["n"] == 2 and p_good in (1.0, 0.75)
    assert sum(1 for it in items if it["p_a"] in (0.25, 0.75)) == n // 3
    pairs = decided_pairs(items)
    assert len(pairs) == n and all(a["sha256"] in good and b["sha256"] not in good for a, b in pairs)
    train, val = split_pairs(items, 0.25, seed=0)
    assert len(val) == round(0.25 * n) and len(train) == n - len(val)
    held = frozenset({items[0]["image_a"]})
    train_h, val_h = split_pairs(items, 0.25, seed=0, held_images=held)
    assert not any(held & {r["image_a"], r["image_b"]} for r in train_h + val_h)


def test_bradley_terry_fits_a_hidden_ranking():
    """On distinct embeddings ranked by a hidden linear score, the pairs' winners are learnt."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=-1)  # 60 images
    true = x @ torch.randn(16, generator=g)
    ab = torch.randint(0, 60, (300, 2), generator=g)
    ab = ab[ab[:, 0] != ab[:, 1]]
    p_a = (true[ab[:, 0]] > true[ab[:, 1]]).float()
    z = torch.nn.functional.normalize(torch.randn(1, 16, generator=g), dim=-1).expand(len(ab), 16).clone()
    cfg = RewardConfig(hidden=(32,), epochs=60, batch_size=32, lr=3e-3, n_prompts=2, pc_weight=0.0)
    no_pc = torch.zeros(len(ab), dtype=torch.bool)
    mlp, history = fit_bradley_terry(x.__getitem__, z, ab, p_a, torch.zeros(len(ab), 2, 16), no_pc, cfg)
    with torch.no_grad():
        r = mlp(x, z[:60])
    assert ((r[ab[:, 0]] > r[ab[:, 1]]).float() == p_a).float().mean() > 0.95
    assert history[-1] < 0.2 < math.log(2) < history[0] + 0.1


def test_a_pairwise_reward_trains_on_the_runs_answers(labeled_run, tiny_clip_path, tmp_path):
    _answer_pairs(labeled_run)
    clip, proc, clip_id = load_clip(tiny_clip_path)
    cfg = RewardConfig(hidden=(32,), epochs=40, batch_size=16, lr=3e-3, n_prompts=4, val_fraction=0.25)
    cfg.objective = "bradley_terry"
    model, report = train_pairwise_reward(labeled_run, cfg, clip, proc, clip_id, str(tiny_clip_path), False)
    # 54 of the 72 pairs train (a quarter is held out); the tiny random CLIP barely tells the images apart,
    # so the loss only has to fall (test_bradley_terry_fits_a_hidden_ranking shows the fit itself)
    assert report["n_train"] == 54 and report["loss_history"][-1] < report["loss_history"][0]
    model.save(tmp_path / "bt")
    from t2ialign.reward.model import RewardModel

    again = RewardModel.load(tmp_path / "bt")
    assert again.meta["config"]["objective"] == "bradley_terry" and again.meta["n_train_pairs"] == 54
    x = torch.randn(3, 16)
    assert torch.equal(again.score_embeddings(x, x), model.score_embeddings(x, x))


def test_no_pairs_is_a_clear_error(labeled_run, tiny_clip_path):
    clip, proc, clip_id = load_clip(tiny_clip_path)
    with pytest.raises(ValueError, match="collect pairwise feedback"):
        train_pairwise_reward(labeled_run, RewardConfig(), clip, proc, clip_id, str(tiny_clip_path), False)


def test_fig4_scores_the_pairwise_reward_on_the_same_pairs(labeled_run, tiny_clip_path):
    from t2ialign.reward.accuracy import evaluate_rewards

    _answer_pairs(labeled_run)
    clip, proc, clip_id = load_clip(tiny_clip_path)
    cfg = RewardConfig(hidden=(16,), epochs=3, batch_size=16, n_prompts=3, val_fraction=0.25)
    res = evaluate_rewards(
        labeled_run, cfg, clip, proc, clip_id, str(tiny_clip_path), seeds=(0,), progress=False
    )
    assert set(res["scorers"]) == {
        "reward",
        "reward_no_pc",
        "reward_half_data",
        "reward_bradley_terry",
        "clip_score",
    }
    assert res["scorers"]["reward_bradley_terry"]["seen_prompts"]["mean"] is not None
    assert set(res["preference_pairs"]) == set(res["scorers"])
    # held-out preference pairs hold no image that either reward trained on
    assert res["n_preference_pairs"]["seen_prompts"] >= 0 and res["n_preference_pairs"]["unseen_prompts"] == 0


def test_finetune_refuses_a_bradley_terry_reward_as_weights(labeled_run, tiny_clip_path, tmp_path):
    from t2ialign.config import FinetuneConfig
    from t2ialign.finetune.data import model_examples

    _answer_pairs(labeled_run)
    clip, proc, clip_id = load_clip(tiny_clip_path)
    cfg = RewardConfig(hidden=(16,), epochs=1, batch_size=16, n_prompts=3, val_fraction=0.25)
    cfg.objective = "bradley_terry"
    model, _ = train_pairwise_reward(labeled_run, cfg, clip, proc, clip_id, str(tiny_clip_path), False)
    with pytest.raises(ValueError, match="only ranks images"):
        model_examples(labeled_run, FinetuneConfig(weights="reward"), model)
