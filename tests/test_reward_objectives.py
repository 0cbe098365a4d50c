"""benchmarks/reward_objectives.py: what Fig. 4's pairs are about, and the objectives it compares."""

import torch
from benchmarks import reward_objectives as ro

from t2ialign.config import RewardConfig


def test_wrong_attributes_names_what_the_reading_gets_wrong_of_what_the_prompt_asks():
    reading = {
        "count": (3, 0.9),
        "color": ("red", 0.99),
        "shape": ("circle", 0.8),
        "background": ("city", 1.0),
    }
    assert ro.wrong_attributes("Two red circles in the city", reading) == "count"
    assert ro.wrong_attributes("Three red circles in the city", reading) == "none"
    assert ro.wrong_attributes("Two blue stars in the city", reading) == "count+color+shape"
    # an attribute the prompt does not ask for is never wrong
    assert ro.wrong_attributes("A circle in the forest", reading) == "background"


def test_within_prompt_pairs_are_the_pairs_of_one_prompt_whose_targets_differ():
    prompts = ["a", "a", "a", "b", "b"]
    y = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5])
    assert sorted(map(tuple, ro.within_prompt_pairs(prompts, y).tolist())) == [(0, 1), (0, 2)]
    assert ro.within_prompt_pairs(["a"], torch.tensor([1.0])).shape == (0, 2)


def test_the_centered_objective_learns_what_ranks_a_prompts_images():
    # 40 prompts x 10 images: the target rises with feature 0 of the image, and the prompts' mean
    # targets differ as much; the centered reward must rank held-out images of each prompt by feature 0
    g = torch.Generator().manual_seed(0)
    n_prompts, per = 40, 10
    z_of = torch.randn(n_prompts, 8, generator=g)
    x = torch.randn(n_prompts * per, 8, generator=g)
    prompts = [f"p{i // per}" for i in range(len(x))]
    z = z_of[torch.arange(len(x)) // per]
    y = (0.5 + 0.2 * x[:, 0] + 0.2 * z[:, 0]).clamp(0, 1)
    cfg = RewardConfig(epochs=60, hidden=(32,), dropout=0.0)
    mlp = ro.fit_centered(x, z, y, prompts, cfg)
    test = torch.randn(len(x), 8, generator=g)
    with torch.no_grad():
        s = mlp(test, z)
    hits = [
        (s[i] > s[j]) == (test[i, 0] > test[j, 0])
        for p in range(n_prompts)
        for i in range(p * per, (p + 1) * per)
        for j in range(i + 1, (p + 1) * per)
    ]
    assert sum(hits) / len(hits) >= 0.85


def test_the_benchmark_runs_on_a_labeled_run_and_reports_every_objective(labeled_run, monkeypatch, capsys):
    run = str(labeled_run.run_dir)
    objectives = "mse,centered,bt_pairs,tower_bt_pairs"
    argv = [run, "--objectives", objectives, "--tower-layers", "1", "--tower-epochs", "1"]
    monkeypatch.setattr("sys.argv", ["reward_objectives", *argv])
    ro.main()
    out = capsys.readouterr().out
    assert "what the judge reads wrong in the worse image" in out
    for name in (*objectives.split(","), "CLIP score", "judge P(match)"):
        line = next((s for s in out.splitlines() if s.startswith(name + " ")), None)
        assert line and "seen_prompts" in line and "unseen_objects" in line, out
    # the labeled run's bad images show a perturbed prompt, which the judge reads: its ceiling is high
    judge = next(s for s in out.splitlines() if s.startswith("judge P(match)"))
    assert float(judge.split("seen_prompts ")[1].split("%")[0]) >= 90.0, judge
