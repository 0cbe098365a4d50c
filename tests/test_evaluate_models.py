"""Stage 7, ``t2ialign evaluate``: the evaluation prompts, model specs, and an end-to-end run on tiny models."""

import json

import pytest

from t2ialign.config import ConfigError, EvaluateConfig, GenerateConfig, RewardConfig
from t2ialign.evaluate.run import (
    check_disjoint,
    evaluate_models,
    evaluation_prompts,
    feedback_prompts,
    format_report,
    parse_models,
)
from t2ialign.generate.images import generate
from t2ialign.label.service import submit_label
from t2ialign.models.load import load_clip
from t2ialign.reward.train import train_reward
from t2ialign.store import Store
from t2ialign.world.prompts import CATEGORIES, build_prompt_set


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "run") as s:
        s.add_prompts(build_prompt_set())
        yield s


def test_evaluation_prompts_are_balanced_fixed_and_kept_from_feedback(store):
    groups = evaluation_prompts(store)
    assert [len(groups[g]) for g in ("seen", "unseen_prompt", "unseen_object")] == [60, 30, 30]
    split = {p["text"]: p for p in store.list_prompts()}
    for g, texts in groups.items():
        assert {split[t]["split"] for t in texts} == {g}
    seen_cats = [split[t]["category"] for t in groups["seen"]]
    assert all(seen_cats.count(c) == 15 for c in CATEGORIES)
    assert evaluation_prompts(store) == groups and evaluation_prompts(store, seed=1) != groups
    open_ = {r["text"] for r in feedback_prompts(store)}
    assert not open_ & set(groups["seen"])
    assert len(open_) == len(store.list_prompts(split="seen")) - 60
    for split in ("unseen_prompt", "unseen_object"):
        open_ = {r["text"] for r in feedback_prompts(store, split=split)}
        assert open_ and not open_ & set(groups[split])
        assert len(open_) == len(store.list_prompts(split=split)) - 30


def test_feedback_on_an_evaluation_prompt_is_refused(store):
    groups = evaluation_prompts(store, 4, 4)
    check_disjoint(store, groups)
    sha = store.put_image_bytes(open(__file__, "rb").read()[:0] or _png())
    store.add_images(
        [
            dict(
                sha256=sha,
                prompt_text=groups["seen"][0],
                model_id="m",
                seed=0,
                sampler={},
                role="human",
                width=64,
                height=64,
            )
        ]
    )
    with pytest.raises(ValueError, match="used for feedback"):
        check_disjoint(store, groups)


def _png():
    import io

    from t2ialign.world.render import render

    buf = io.BytesIO()
    render("A red circle", 0).pil().save(buf, format="PNG")
    return buf.getvalue()


def test_model_specs(tmp_path, tiny_pipeline_path):
    run = tmp_path / "run"
    (run / "finetune" / "a").mkdir(parents=True)
    (run / "finetune" / "a" / "pipeline").symlink_to(tiny_pipeline_path)
    m = parse_models(f"base,finetuned:a,rejection,rejection:finetuned:a,mine={tiny_pipeline_path}", run)
    assert m["base"] == {"kind": "pipeline", "path": None, "guidance_scale": None}
    assert m["finetuned:a"]["path"].endswith("finetune/a/pipeline")
    assert m["rejection"] == {"kind": "rejection", "path": None, "guidance_scale": None}
    assert m["rejection:finetuned:a"]["kind"] == "rejection" and m["mine"]["path"] == str(tiny_pipeline_path)
    # the stages beyond the paper, by name: DPO, RL and a round of the iterated loop
    for sub in ("dpo/d", "rl/r", "loop/x/round_2/finetune"):
        (run / sub).mkdir(parents=True)
        (run / sub / "pipeline").symlink_to(tiny_pipeline_path)
    m = parse_models("dpo:d,rl:r,loop:x:2,rejection:dpo:d", run)
    assert m["dpo:d"]["path"] == str(run / "dpo" / "d" / "pipeline")
    assert m["rl:r"]["path"] == str(run / "rl" / "r" / "pipeline")
    assert m["loop:x:2"]["path"] == str(run / "loop" / "x" / "round_2" / "finetune" / "pipeline")
    assert m["rejection:dpo:d"] == {"kind": "rejection", "path": m["dpo:d"]["path"], "guidance_scale": None}
    # MODEL@G: the model sampled at its own guidance scale, under its full name
    m = parse_models(f"base,base@3,finetuned:a@2.5,rejection:finetuned:a@4,mine={tiny_pipeline_path}@1", run)
    assert m["base@3"] == {"kind": "pipeline", "path": None, "guidance_scale": 3.0}
    assert m["finetuned:a@2.5"]["guidance_scale"] == 2.5 and m["finetuned:a@2.5"]["path"].endswith(
        "a/pipeline"
    )
    assert m["rejection:finetuned:a@4"] == {
        "kind": "rejection",
        "path": m["finetuned:a@2.5"]["path"],
        "guidance_scale": 4.0,
    }
    assert m["mine@1"] == {"kind": "pipeline", "path": str(tiny_pipeline_path), "guidance_scale": 1.0}
    with pytest.raises(ValueError, match="must be >= 1"):
        parse_models("base@0.5", run)
    with pytest.raises(FileNotFoundError, match="no diffusers pipeline"):
        parse_models("finetuned", run)
    with pytest.raises(ValueError, match="unknown model"):
        parse_models("best", run)
    with pytest.raises(ValueError, match="twice"):
        parse_models("base,base", run)


def test_evaluate_end_to_end_on_tiny_models(store, tiny_pipeline_path, tiny_clip_path):
    gen = dict(model=str(tiny_pipeline_path), mixed_precision="no", num_inference_steps=2)
    feedback = [r["text"] for r in feedback_prompts(store, 8, 8)][::300][:4]
    generate(GenerateConfig(images_per_prompt=4, role="human", **gen), store, feedback, progress=False)
    a = store.add_labeler("a")
    for i, r in enumerate(store.list_images(role="human")):
        submit_label(store, a, r["id"], "good" if i % 2 else "bad")
    clip, proc, cid = load_clip(tiny_clip_path)
    model, _ = train_reward(
        store, RewardConfig(epochs=1, clip=str(tiny_clip_path)), clip, proc, cid, str(tiny_clip_path), False
    )
    model.save(store.run_dir / "reward")

    # rejection sampling: best 2 of 4 candidates judged, the best 1 of the first 2 for Fig. 3
    cfg = EvaluateConfig(
        n_seen=8,
        n_unseen=8,
        images_per_prompt=2,
        best_of=2,
        keep=1,
        bootstrap_resamples=500,
        generate=GenerateConfig(role="eval", **gen),
    )
    assert cfg.rejection_candidates == 4
    tiny = {"kind": "pipeline", "path": str(tiny_pipeline_path)}
    # "same" is base again: the same model, seeds and images, so every paired difference is exactly 0
    models = {
        "base": tiny,
        "same": dict(tiny),
        "best": {"kind": "rejection", "path": str(tiny_pipeline_path)},
        # the same model at guidance 1 (parse_models' base@1): other images on the same seeds
        "unguided": tiny | {"guidance_scale": 1.0},
    }
    with pytest.raises(ValueError, match="not among the models"):
        evaluate_models(store, models, cfg, progress=False, also_against=("control",))
    report = evaluate_models(store, models, cfg, progress=False, also_against=("same",))
    # against "same", whose images are base's, every model differs exactly as it does from base
    assert report["paired_vs"]["same"]["paired"]["best"] == report["paired"]["best"]
    assert set(report["paired_vs"]["same"]["paired"]) == {"base", "best", "unguided"}
    for name in models:
        m = report["models"][name]
        assert m["n_images"] == 16 * 2 and m["images_per_prompt"] == 2
        assert m["alignment"]["all"]["all"]["n"] == 32 and m["alignment"]["seen"]["all"]["n"] == 16
        assert 0 <= m["alignment"]["seen"]["all"]["alignment"] <= 1 and m["fd_clip"] >= 0
    assert (
        report["models"]["unguided"]["guidance_scale"] == 1.0
        and report["models"]["base"]["guidance_scale"] == 5.0
    )
    assert report["models"]["best"]["selection"] == "best 2 of 4 by reward"
    assert report["models"]["best"]["fig3_selection"] == "best 1 of 2 by reward"
    # rejection keeps the best by reward: its mean reward is at least the plain model's (same candidates)
    assert report["models"]["best"]["mean_reward"] >= report["models"]["base"]["mean_reward"] - 1e-6

    # paired differences from base, for every other model, in the format
    assert report["paired_reference"] == "base"
    assert set(report["paired"]) == {"same", "best", "unguided"}
    for name in ("same", "best"):
        assert set(report["paired"][name]) == {"seen", "unseen_prompt", "unseen_object", "all"}
        for g, cells in report["paired"][name].items():
            assert set(cells) == {*CATEGORIES, "all"}, g
            for stat in cells.values():
                assert set(stat) == {"delta", "ci95", "n_prompts", "n_images"}
    for g, cells in report["paired"]["same"].items():
        for c, stat in cells.items():
            if stat["n_prompts"]:
                assert stat["delta"] == 0.0 and stat["ci95"] in ([0.0, 0.0], None), (g, c)
    best, base = report["paired"]["best"]["all"]["all"], report["models"]["base"]["alignment"]["all"]["all"]
    assert (best["n_prompts"], best["n_images"]) == (16, 32)
    aligned = report["models"]["best"]["alignment"]["all"]["all"]["alignment"]
    assert best["delta"] == pytest.approx(aligned - base["alignment"], abs=1e-4)
    assert best["ci95"][0] <= best["delta"] <= best["ci95"][1]
    assert report["paired"]["best"]["seen"]["all"]["n_prompts"] == 8
    # per attribute: every prompt names its shape; the reward of the best 2 of 4 is never below base's
    shape = report["paired_attribute"]["best"]["all"]["shape"]
    assert (shape["n_prompts"], shape["n_images"]) == (16, 32)
    assert set(report["paired_attribute"]["best"]["all"]) <= {"count", "color", "shape", "background"}
    reward = report["paired_reward"]["best"]["all"]
    assert reward["delta"] >= 0 and reward["ci95"][0] >= 0
    assert report["paired_reward"]["same"]["all"]["delta"] == 0.0

    metrics = store.read_metrics()["evaluate"]
    assert metrics["paired"] == report["paired"] and metrics["models"].keys() == models.keys()
    grids = json.loads((store.run_dir / "evaluate" / "images.json").read_text())
    assert set(grids["images"]) == set(models) and grids["keep"] == 1
    for p, shas in grids["images"]["base"].items():
        assert len(shas) == 2 and grids["sets"]["base"][p] == shas[:1] and grids["images"]["same"][p] == shas
        assert len(grids["images"]["best"][p]) == 2 and len(grids["sets"]["best"][p]) == 1
        assert len(grids["images"]["unguided"][p]) == 2 and not set(grids["images"]["unguided"][p]) & set(
            shas
        )
    # Fig. 3's rejection set is the best of the first 2 candidates, which are base's 2 images
    rewards = {}
    for entry in json.loads((store.run_dir / "rejection" / _selection(store, 2, 1)).read_text())["prompts"]:
        assert [c["sha256"] for c in entry["candidates"]] == grids["images"]["base"][entry["prompt"]]
        rewards[entry["prompt"]] = [k["sha256"] for k in entry["kept"]]
    assert rewards == grids["sets"]["best"]
    text = format_report(report)
    assert "base:" in text and "paired - base" in text and "no paired differences" not in text
    # the pairing against "same" is printed too, for every model but "same" itself
    assert "best paired - same" in text and "unguided paired - same" in text
    assert "same paired - same" not in text
    alone = dict(report, paired={}, paired_reference=None)
    assert "no paired differences" in format_report(alone) and "add base to --models" in format_report(alone)


def _selection(store, best_of, keep):
    (path,) = (store.run_dir / "rejection").glob(f"*-best{best_of}-keep{keep}.json")
    return path.name


def test_evaluate_config_sizes_and_rejection_ratio():
    cfg = EvaluateConfig()
    assert (cfg.n_seen + cfg.n_unseen) * cfg.images_per_prompt >= 2_000  # the issue, at the paper's scale
    assert (cfg.best_of, cfg.keep, cfg.rejection_candidates) == (16, 4, 80)  # best 20 of 80: 1 in 4
    assert EvaluateConfig(images_per_prompt=9).rejection_candidates == 36
    assert EvaluateConfig(images_per_prompt=4).rejection_candidates == 16  # the paper's 4 of 16
    with pytest.raises(ConfigError, match="keep .5. must be <= evaluate.images_per_prompt .4."):
        EvaluateConfig(images_per_prompt=4, keep=5, best_of=16)
    with pytest.raises(ConfigError, match="keep .4. must be <= evaluate.best_of .3."):
        EvaluateConfig(best_of=3)
    with pytest.raises(ConfigError, match="no whole number"):
        EvaluateConfig(images_per_prompt=3, best_of=5, keep=2)
    with pytest.raises(ConfigError, match="bootstrap_resamples must be >= 1"):
        EvaluateConfig(bootstrap_resamples=0)
