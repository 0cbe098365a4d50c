"""Reward training (Eq. 3) end to end on a small labeled run, and the pairwise evaluation by hand."""

import pytest
import torch

from t2ialign.config import RewardConfig
from t2ialign.models.load import load_clip
from t2ialign.reward.data import halve_per_prompt, labeled_images, preference_pairs, split_train_val
from t2ialign.reward.train import candidate_prompts, pairwise_accuracy, train_reward
from t2ialign.store import Store
from t2ialign.world.render import render


def test_dataset_targets_splits_and_pairs(labeled_run):
    items = labeled_images(labeled_run)
    assert len(items) == 48 and {r["y"] for r in items} == {0.0, 1.0}
    train, val = split_train_val(items, 0.25, seed=0)
    assert len(val) == 12 and not {r["sha256"] for r in train} & {r["sha256"] for r in val}
    assert len(halve_per_prompt(train, 0)) < len(train)
    pairs = preference_pairs(items)
    assert pairs and all(a["y"] > b["y"] and a["prompt"] == b["prompt"] for a, b in pairs)
    assert len(pairs) == 8 * 3 * 3  # per prompt: 3 good x 3 bad


def test_excluded_labelers_leave_the_training_labels(labeled_run):
    """`t2ialign label exclude`: ann's labels stop counting, bob's stay; nothing is deleted."""
    before = {r["sha256"]: r["labels"] for r in labeled_images(labeled_run)}
    labeled_run.set_excluded("ann", True)
    after = {r["sha256"]: r["labels"] for r in labeled_images(labeled_run)}
    # bob skipped every fifth image: with ann excluded those have no good/bad label left
    assert 0 < len(after) < len(before)
    assert all(len(after[s]) == 1 and len(before[s]) == 2 for s in after)
    labeled_run.set_excluded("ann", False)
    assert {r["sha256"]: r["labels"] for r in labeled_images(labeled_run)} == before


def test_pairwise_accuracy_by_hand():
    a, b, c = ({"sha256": s} for s in "abc")
    scores = {"a": 0.9, "b": 0.1, "c": 0.9}
    assert pairwise_accuracy(scores, [(a, b), (b, a), (a, c)]) == pytest.approx((1 + 0 + 0.5) / 3)


def test_candidates_put_the_original_first():
    c = candidate_prompts("Two red circles in the forest", 5, 0, ["circle", "square"])
    assert c[0] == "Two red circles in the forest" and len(set(c)) == 5


def test_training_fits_the_labels_and_round_trips(labeled_run, tiny_clip_path, tmp_path):
    clip, proc, clip_id = load_clip(tiny_clip_path)
    cfg = RewardConfig(hidden=(32,), epochs=60, batch_size=16, lr=3e-3, n_prompts=4, val_fraction=0.25)
    model, report = train_reward(labeled_run, cfg, clip, proc, clip_id, str(tiny_clip_path), progress=False)
    assert report["n_train"] == 36 and report["loss_history"][-1] < report["loss_history"][0]
    assert (labeled_run.run_dir / "embeddings").is_dir(), "embeddings are cached in the run"
    model.save(tmp_path / "rm")
    from t2ialign.reward.model import RewardModel

    again = RewardModel.load(tmp_path / "rm")
    x = torch.randn(3, 16)
    assert torch.equal(again.score_embeddings(x, x), model.score_embeddings(x, x))
    half = RewardConfig(**{**cfg.__dict__, "half_data": True})
    _, r2 = train_reward(labeled_run, half, clip, proc, clip_id, str(tiny_clip_path), progress=False)
    assert r2["n_train"] < report["n_train"]


def test_too_few_labels_is_a_clear_error(tmp_path, tiny_clip_path):
    clip, proc, clip_id = load_clip(tiny_clip_path)
    with Store.open(tmp_path / "empty") as store:
        with pytest.raises(ValueError, match="label more"):
            train_reward(store, RewardConfig(), clip, proc, clip_id, str(tiny_clip_path), progress=False)


def test_fig4_evaluation_structure_and_plot(labeled_run, tiny_clip_path, tmp_path, monkeypatch):
    import t2ialign.reward.train as train_module
    from t2ialign.reward.accuracy import EVAL_SETS, evaluate_rewards, plot_fig4

    split_seeds = []

    def spy(items, fraction, seed):
        split_seeds.append(seed)
        return split_train_val(items, fraction, seed)

    monkeypatch.setattr(train_module, "split_train_val", spy)
    clip, proc, clip_id = load_clip(tiny_clip_path)
    cfg = RewardConfig(hidden=(16,), epochs=3, batch_size=16, n_prompts=3, val_fraction=0.25)
    res = evaluate_rewards(
        labeled_run, cfg, clip, proc, clip_id, str(tiny_clip_path), seeds=(0, 1), progress=False
    )
    assert set(res["scorers"]) == {"reward", "reward_no_pc", "reward_half_data", "clip_score"}
    assert res["n_pairs"]["seen_prompts"] > 0 and res["n_pairs"]["unseen_prompts"] == 0
    for name, by_set in res["scorers"].items():
        assert set(by_set) == set(EVAL_SETS)
        acc = by_set["seen_prompts"]["mean"]
        assert acc is not None and 0.0 <= acc <= 1.0, name
    assert len(res["scorers"]["reward"]["seen_prompts"]["per_seed"]) == 2
    assert res["scorers"]["reward"]["unseen_prompts"] == {"mean": None, "std": None, "per_seed": [None, None]}
    assert split_seeds and set(split_seeds) == {0}, (
        "every variant and seed trains off the same held-out images"
    )
    png = plot_fig4(res, tmp_path / "fig4.png")
    assert png.stat().st_size > 1000


def test_reward_cli_train_score_eval(labeled_run, tiny_clip_path, tmp_path, capsys):
    from t2ialign.cli import main

    run = str(labeled_run.run_dir)
    cfg = tmp_path / "r.toml"
    cfg.write_text(
        "[reward]\nhidden = [16]\nepochs = 2\nbatch_size = 16\nn_prompts = 3\nval_fraction = 0.25\n"
    )
    common = ["--clip", str(tiny_clip_path), "--config", str(cfg)]
    assert main(["reward", "embed", run, *common]) == 0
    assert main(["reward", "train", run, *common, "--out", str(tmp_path / "rm")]) == 0
    img = tmp_path / "x.png"
    render("Two red circles", 0).pil().save(img)
    capsys.readouterr()
    assert main(["reward", "score", str(tmp_path / "rm"), str(img), "--prompt", "Two red circles"]) == 0
    assert capsys.readouterr().out.strip().endswith("x.png")
    assert main(["reward", "eval", run, *common, "--seeds", "1"]) == 0
    assert (labeled_run.run_dir / "reward_fig4.png").is_file()
    assert main(["reward", "train", str(tmp_path / "nowhere"), *common]) == 2
