"""Rejection sampling (paper Sec. 4.3) on a tiny pipeline and a small reward model on a tiny CLIP."""

import argparse
import json
import shutil

import pytest
import torch
from PIL import Image

from t2ialign.config import GenerateConfig
from t2ialign.generate.images import generate, image_seed
from t2ialign.models.embed import clip_fingerprint
from t2ialign.models.load import load_clip
from t2ialign.models.tiny import build_tiny_clip, build_tiny_pipeline
from t2ialign.reward.model import RewardMLP, RewardModel
from t2ialign.sample.rejection import (
    SELECTION_FORMAT,
    SampleConfig,
    add_command,
    load_selection,
    model_slug,
    rejection_sample,
    top_k,
)
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set

FAST = dict(num_inference_steps=2, batch_size=8, mixed_precision="no")
PROMPTS = ["Two circles", "A green colored star", "Three blue squares in the forest"]


def _save_reward(path, clip_path, seed=0):
    """A reward model with random weights on the tiny CLIP: any fixed scorer serves to test selection."""
    clip, _, clip_id = load_clip(clip_path)
    torch.manual_seed(seed)
    meta = {
        "dim": 16,
        "hidden": [8],
        "dropout": 0.0,
        "clip": {"model_id": clip_id, "path": str(clip_path), "fingerprint": clip_fingerprint(clip)},
    }
    RewardModel(RewardMLP(16, hidden=(8,), dropout=0.0), meta).save(path)
    return path


@pytest.fixture
def run(tmp_path, tiny_clip_path):
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
        _save_reward(store.run_dir / "reward", tiny_clip_path)
        yield store


def _cfg(model, best_of=5, keep=2, **kw):
    return SampleConfig(best_of=best_of, keep=keep, generate=GenerateConfig(model=str(model), **FAST), **kw)


def _by_hand(store, prompt, shas):
    """Rewards of stored images computed without the embedding cache: CLIP on the PNGs, then the MLP."""
    rm = RewardModel.load(store.run_dir / "reward")
    images = [Image.open(store.image_path(s)).convert("RGB") for s in shas]
    return rm.score([prompt] * len(shas), images).tolist()


def test_top_k_by_hand():
    assert top_k([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]  # equal rewards: the lower index first
    assert top_k([0.3], 1) == [0]
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        top_k([0.1, 0.2], 3)


def test_keeps_the_top_k_by_reward(run, tiny_pipeline_path):
    summary = rejection_sample(run, PROMPTS, _cfg(tiny_pipeline_path), progress=False)
    assert summary["generated"] == 15 and summary["prompts"] == 3
    sel = load_selection(run.run_dir / summary["file"])
    eval_images = {(r["prompt"], r["seed"]): r["sha256"] for r in run.list_images(role="eval")}
    assert len(eval_images) == 15
    for entry in sel["prompts"]:
        p = entry["prompt"]
        cands = entry["candidates"]
        assert [c["seed"] for c in cands] == [image_seed(0, "eval", p, i) for i in range(5)]
        assert [c["sha256"] for c in cands] == [eval_images[(p, c["seed"])] for c in cands]
        rewards = _by_hand(run, p, [c["sha256"] for c in cands])
        assert [c["reward"] for c in cands] == pytest.approx(rewards, abs=1e-5)
        best = sorted(range(5), key=lambda i: -rewards[i])[:2]
        assert [k["index"] for k in entry["kept"]] == best
        assert entry["kept"] == [cands[i] for i in best]
        assert entry["random"] == cands[:2]  # the baseline: the first `keep` seeds
        assert len({c["reward"] for c in cands}) == 5, "distinct rewards, or the test would not tell"
    kept = [k["reward"] for e in sel["prompts"] for k in e["kept"]]
    rand = [k["reward"] for e in sel["prompts"] for k in e["random"]]
    assert summary["mean_reward_kept"] == pytest.approx(sum(kept) / 6, abs=1e-6)
    assert summary["mean_reward_random"] == pytest.approx(sum(rand) / 6, abs=1e-6)
    assert summary["mean_reward_kept"] >= summary["mean_reward_random"]


def test_rerun_generates_nothing_and_selects_the_same(run, tiny_pipeline_path):
    cfg = _cfg(tiny_pipeline_path)
    first = rejection_sample(run, PROMPTS, cfg, progress=False)
    before = load_selection(run.run_dir / first["file"])
    n_images = len(run.list_images())
    again = rejection_sample(run, PROMPTS, cfg, progress=False)
    after = load_selection(run.run_dir / again["file"])
    assert again["generated"] == 0 and len(run.list_images()) == n_images
    assert after["prompts"] == before["prompts"]
    # more candidates per prompt: only the new ones are made, the first five are the same images
    more = rejection_sample(run, PROMPTS, _cfg(tiny_pipeline_path, best_of=7), progress=False)
    assert more["generated"] == 6
    wider = load_selection(run.run_dir / more["file"])
    assert [e["candidates"][:5] for e in wider["prompts"]] == [e["candidates"] for e in before["prompts"]]


def test_random_baseline_is_what_generate_makes_with_keep_images(run, tiny_pipeline_path):
    summary = rejection_sample(run, PROMPTS, _cfg(tiny_pipeline_path, best_of=4, keep=2), progress=False)
    sel = load_selection(run.run_dir / summary["file"])
    base = GenerateConfig(model=str(tiny_pipeline_path), images_per_prompt=2, role="eval", **FAST)
    assert generate(base, run, PROMPTS, progress=False)["generated"] == 0
    seeds = {(p, image_seed(0, "eval", p, i)) for p in PROMPTS for i in range(2)}
    made = {r["sha256"] for r in run.list_images(role="eval") if (r["prompt"], r["seed"]) in seeds}
    assert {k["sha256"] for e in sel["prompts"] for k in e["random"]} == made and len(made) == 6


def test_bad_keep_is_an_error_and_writes_nothing(run, tiny_pipeline_path):
    with pytest.raises(ValueError, match=r"keep \(5\) must be <= sample.best_of \(4\)"):
        _cfg(tiny_pipeline_path, best_of=4, keep=5)
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        _cfg(tiny_pipeline_path, keep=0)
    cfg = _cfg(tiny_pipeline_path)
    cfg.keep = 9  # changed after construction: checked again before anything runs
    with pytest.raises(ValueError, match="must be <= sample.best_of"):
        rejection_sample(run, PROMPTS, cfg, progress=False)
    assert run.list_images() == [] and not (run.run_dir / "rejection").exists()


def test_bad_prompts_and_missing_reward_are_clear_errors(run, tiny_pipeline_path, tmp_path):
    cfg = _cfg(tiny_pipeline_path)
    with pytest.raises(ValueError, match="not in the run"):
        rejection_sample(run, ["Two dragons"], cfg, progress=False)
    with pytest.raises(ValueError, match="given twice"):
        rejection_sample(run, ["Two circles", "Two circles"], cfg, progress=False)
    with pytest.raises(ValueError, match="no prompts"):
        rejection_sample(run, [], cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="no reward model at .*reward train"):
        rejection_sample(
            run, PROMPTS, _cfg(tiny_pipeline_path, reward=str(tmp_path / "nope")), progress=False
        )
    assert run.list_images() == [] and "rejection_sampling" not in run.read_metrics()


def test_selection_file_and_metrics(run, tiny_pipeline_path):
    summary = rejection_sample(run, PROMPTS, _cfg(tiny_pipeline_path, best_of=3, keep=1), progress=False)
    path = run.run_dir / summary["file"]
    assert path.parent.name == "rejection" and path.name.endswith("-best3-keep1.json")
    assert path.name.startswith(model_slug(str(tiny_pipeline_path.resolve())))
    sel = json.loads(path.read_text())
    assert sel["format"] == SELECTION_FORMAT and sel["summary"] == summary
    assert sel["model_id"] == str(tiny_pipeline_path.resolve()) and sel["model_revision"]
    assert sel["best_of"] == 3 and sel["keep"] == 1
    assert sel["generate"]["images_per_prompt"] == 3 and sel["generate"]["role"] == "eval"
    assert sel["generate"]["num_inference_steps"] == 2 and sel["generate"]["seed"] == 0
    rm_meta = json.loads((run.run_dir / "reward" / "config.json").read_text())
    assert sel["reward"]["path"] == str((run.run_dir / "reward").resolve())
    assert sel["reward"]["clip"]["fingerprint"] == rm_meta["clip"]["fingerprint"]
    assert len(sel["reward"]["weights"]) == 16
    assert [e["prompt"] for e in sel["prompts"]] == PROMPTS
    for e in sel["prompts"]:
        assert len(e["candidates"]) == 3 and len(e["kept"]) == 1
        assert set(e["kept"][0]) == {"index", "seed", "sha256", "reward"}
        assert run.image_path(e["kept"][0]["sha256"]).is_file()
    assert run.read_metrics()["rejection_sampling"] == {path.stem: summary}
    other = rejection_sample(run, PROMPTS, _cfg(tiny_pipeline_path, best_of=3, keep=2), progress=False)
    entries = run.read_metrics()["rejection_sampling"]
    assert entries == {path.stem: summary, (run.run_dir / other["file"]).stem: other}


def test_load_selection_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_selection(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_selection(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a rejection-sampling selection"):
        load_selection(tmp_path / "other.json")


def test_model_slug():
    assert model_slug("t2ialign/world-sd") == "t2ialign-world-sd"
    long_a, long_b = "/x" * 40 + "/a/pipeline", "/x" * 40 + "/b/pipeline"
    assert len(model_slug(long_a)) <= 64 and model_slug(long_a) != model_slug(long_b)


def test_base_and_fine_tuned_models_get_their_own_selections(run, tiny_pipeline_path, tmp_path):
    tuned = build_tiny_pipeline(tmp_path / "tuned", seed=1)  # stands in for a fine-tuned model's folder
    a = rejection_sample(run, PROMPTS[:2], _cfg(tiny_pipeline_path), progress=False)
    b = rejection_sample(run, PROMPTS[:2], _cfg(tuned), progress=False)
    assert a["file"] != b["file"] and b["generated"] == 10
    sa, sb = load_selection(run.run_dir / a["file"]), load_selection(run.run_dir / b["file"])
    assert sb["model_id"] == str(tuned.resolve())
    shas_a = {c["sha256"] for e in sa["prompts"] for c in e["candidates"]}
    shas_b = {c["sha256"] for e in sb["prompts"] for c in e["candidates"]}
    assert not shas_a & shas_b
    assert set(run.read_metrics()["rejection_sampling"]) == {
        (run.run_dir / a["file"]).stem,
        (run.run_dir / b["file"]).stem,
    }


def test_a_changed_model_in_the_same_folder_gets_its_own_candidates(run, tiny_pipeline_path, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path, folder)
    first = rejection_sample(run, PROMPTS[:1], _cfg(folder, best_of=2, keep=1), progress=False)
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    shutil.rmtree(folder / "unet")
    shutil.copytree(other / "unet", folder / "unet")  # retrained in place: same model id, new revision
    second = rejection_sample(run, PROMPTS[:1], _cfg(folder, best_of=2, keep=1), progress=False)
    assert second["generated"] == 2 and second["model_revision"] != first["model_revision"]
    (entry,) = load_selection(run.run_dir / second["file"])["prompts"]
    made_by = {r["sha256"]: r["model_revision"] for r in run.list_images(role="eval")}
    assert {made_by[c["sha256"]] for c in entry["candidates"]} == {second["model_revision"]}


def _parser():
    p = argparse.ArgumentParser(prog="t2ialign")
    add_command(p.add_subparsers(dest="command", required=True))
    return p


def test_sample_command(run, tiny_pipeline_path, tiny_clip_path, tmp_path, capsys):
    common = ["--model", str(tiny_pipeline_path), "--steps", "2", "--mixed-precision", "no"]
    argv = ["sample", str(run.run_dir), "--best-of", "3", "--keep", "2", "--max-prompts", "2", *common]
    args = _parser().parse_args([*argv, "--split", "seen", "unseen_prompt"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert '"prompts": 4' in out and "selection written to" in out
    (path,) = (run.run_dir / "rejection").glob("*.json")
    sel = load_selection(path)
    splits = {p["text"]: p["split"] for p in run.list_prompts()}
    assert sorted(splits[e["prompt"]] for e in sel["prompts"]) == [
        "seen",
        "seen",
        "unseen_prompt",
        "unseen_prompt",
    ]
    assert sel["generate"]["guidance_scale"] == GenerateConfig().guidance_scale

    args = _parser().parse_args(["sample", str(run.run_dir), "--best-of", "2", "--keep", "3", *common])
    with pytest.raises(ValueError, match="must be <= sample.best_of"):
        args.func(args)
    args = _parser().parse_args(["sample", str(tmp_path / "no-run"), *common])
    with pytest.raises(ValueError, match="no run at"):
        args.func(args)
    # a reward model whose recorded CLIP folder now holds another CLIP
    rm = _save_reward(tmp_path / "rm-other", tiny_clip_path)
    meta = json.loads((rm / "config.json").read_text())
    meta["clip"]["path"] = str(build_tiny_clip(tmp_path / "other-clip", seed=1))
    (rm / "config.json").write_text(json.dumps(meta))
    args = _parser().parse_args([*argv, "--reward", str(rm)])
    with pytest.raises(ValueError, match="embeddings of different CLIPs are not comparable"):
        args.func(args)
