"""Stage 7, ``t2ialign evaluate``: the evaluation prompts, model specs, and an end-to-end run on tiny models."""

import json

import pytest

from t2ialign.config import EvaluateConfig, GenerateConfig, RewardConfig
from t2ialign.evaluate.models import (
    check_disjoint,
    evaluate_models,
    evaluation_prompts,
    feedback_prompts,
    format_report,
    parse_models,
)
from t2ialign.generate import generate
from t2ialign.labeling.service import submit_label
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
    assert m["base"] == {"kind": "pipeline", "path": None}
    assert m["finetuned:a"]["path"].endswith("finetune/a/pipeline")
    assert m["rejection"] == {"kind": "rejection", "path": None}
    assert m["rejection:finetuned:a"]["kind"] == "rejection" and m["mine"]["path"] == str(tiny_pipeline_path)
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

    cfg = EvaluateConfig(
        n_seen=8, n_unseen=8, images_per_prompt=2, best_of=3, generate=GenerateConfig(role="eval", **gen)
    )
    models = parse_models(f"tiny={tiny_pipeline_path},rejection:tiny={tiny_pipeline_path}", store.run_dir)
    models = {"tiny": models["tiny"], "best": {"kind": "rejection", "path": str(tiny_pipeline_path)}}
    report = evaluate_models(store, models, cfg, progress=False)
    for name in ("tiny", "best"):
        m = report["models"][name]
        assert m["n_images"] == 16 * 2
        assert m["alignment"]["all"]["all"]["n"] == 32 and m["alignment"]["seen"]["all"]["n"] == 16
        assert 0 <= m["alignment"]["seen"]["all"]["alignment"] <= 1 and m["fd_clip"] >= 0
    # rejection keeps the best by reward: its mean reward is at least the plain model's (same candidates)
    assert report["models"]["best"]["mean_reward"] >= report["models"]["tiny"]["mean_reward"] - 1e-6
    grids = json.loads((store.run_dir / "evaluate" / "images.json").read_text())
    assert set(grids["images"]) == {"tiny", "best"} and store.read_metrics()["evaluate"]["models"].keys() == {
        "tiny",
        "best",
    }
    assert "tiny:" in format_report(report)
