"""benchmarks/perfect_feedback.py reuses a finished fine-tune only when it was made with the same settings."""

import json

import pytest
from benchmarks.perfect_feedback import _reusable

from t2ialign.config import FinetuneConfig, to_dict


def test_a_finished_fine_tune_is_reused_only_with_its_own_settings(tmp_path):
    pipeline = tmp_path / "finetune" / "perfect" / "pipeline"
    cfg = FinetuneConfig(weights="labels", use_unlabeled=False, max_train_steps=10, learning_rate=1e-4)
    assert not _reusable(pipeline, cfg, "perfect")  # nothing there yet: train it
    pipeline.mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    made = to_dict(cfg)
    (pipeline / "t2ialign_finetune.json").write_text(json.dumps({"config": made}))
    assert _reusable(pipeline, cfg, "perfect")
    # a stamp from before a setting existed is still the same run
    del made["min_weight"]
    (pipeline / "t2ialign_finetune.json").write_text(json.dumps({"config": made}))
    assert _reusable(pipeline, cfg, "perfect")
    other = FinetuneConfig(weights="labels", use_unlabeled=False, max_train_steps=10, learning_rate=3e-4)
    with pytest.raises(SystemExit, match="other settings \\(learning_rate\\)"):
        _reusable(pipeline, other, "perfect")
    # the same settings on other images (another --per-prompt under the same --name) is another run
    stamp = {"config": made, "report": {"d_model_images": "0123456789abcdef"}}
    (pipeline / "t2ialign_finetune.json").write_text(json.dumps(stamp))
    assert _reusable(pipeline, cfg, "perfect", "0123456789abcdef")
    assert _reusable(pipeline, cfg, "perfect")  # no D_model to compare (the control): settings only
    with pytest.raises(SystemExit, match="other settings \\(D_model's images\\)"):
        _reusable(pipeline, cfg, "perfect", "fedcba9876543210")


def test_a_fine_tune_continues_its_own_checkpoint_first_then_the_one_it_continues(tmp_path):
    from benchmarks.perfect_feedback import _resume

    from t2ialign.core.checkpoint import MANIFEST, PREFIX, latest_checkpoint

    def checkpoint(name: str, step: int):
        path = tmp_path / "finetune" / name / "checkpoints" / f"{PREFIX}{step}"
        path.mkdir(parents=True)
        (path / MANIFEST).write_text(json.dumps({"files": {}}))  # complete: it names no file

    assert _resume(tmp_path, "long", None) == "latest"  # nothing anywhere: start at step 0
    with pytest.raises(SystemExit, match="--continue-from short: no checkpoint"):
        _resume(tmp_path, "long", "short")
    checkpoint("short", 1000)
    found = latest_checkpoint(tmp_path / "finetune" / "short" / "checkpoints")
    assert found is not None, "the helper must write what latest_checkpoint calls complete"
    assert _resume(tmp_path, "long", "short") == str(found)
    checkpoint("long", 1500)  # the longer run was interrupted: it goes on from its own
    assert _resume(tmp_path, "long", "short") == "latest"


class _Evaluated(Exception):
    """Raised where the benchmark would evaluate: the rounds are what is tested, not the evaluation."""


def test_round_two_samples_round_one_and_trains_on_its_own_images_only(
    tmp_path, tiny_pipeline_path, monkeypatch
):
    import benchmarks.perfect_feedback as pf

    from t2ialign.finetune.data import images_digest
    from t2ialign.store import Store

    def stop(*args, **kwargs):
        raise _Evaluated

    monkeypatch.setattr(pf, "evaluate_models", stop)
    run = tmp_path / "run"
    argv = [
        str(run),
        "--model",
        str(tiny_pipeline_path),
        "--prompts",
        "8",
        "--per-prompt",
        "2",
        "--steps",
        "2",
    ]
    argv += ["--pretrain-images", "8", "--no-control", "--eval-guidance", "3", "--name", "p"]
    argv += ["--categories", "count", "combination", "--rounds", "2"]
    with pytest.raises(_Evaluated):
        pf.main(argv)
    first = run / "finetune" / "p" / "pipeline"
    with Store.open(run) as store:
        by_model: dict[str, list[dict]] = {}
        for r in store.list_images(role="human"):
            by_model.setdefault(r["model_id"], []).append(r)
        category = {r["text"]: r["category"] for r in store.list_prompts()}
    assert set(by_model) == {str(tiny_pipeline_path), str(first)}, "round 2 samples round 1's model"
    base, second = by_model[str(tiny_pipeline_path)], by_model[str(first)]
    assert len(base) == 8 * 2  # round 1: every feedback prompt
    # round 2: only the prompts it trains on (count-bearing), at the evaluation's guidance, the same seeds
    assert {category[r["prompt"]] for r in second} <= {"count", "combination"}
    assert {(r["prompt"], r["seed"]) for r in second} <= {(r["prompt"], r["seed"]) for r in base}
    assert {r["sampler"]["generate_config"]["guidance_scale"] for r in second} == {3.0}
    report = json.loads((run / "finetune" / "p_r2" / "report.json").read_text())
    assert report["base_model"] == str(first)
    assert report["n_model"] == len(second)  # D_model: round 2's own images, none of the base's
    assert report["d_model_images"] == images_digest(r["sha256"] for r in second)
    # --round-data all: the same round-2 images (reused, none sampled again) beside the base's
    with pytest.raises(_Evaluated):
        pf.main([*argv, "--round-data", "all"])
    with Store.open(run) as store:
        assert len(store.list_images(role="human")) == len(base) + len(second)
    report = json.loads((run / "finetune" / "p_r2_all" / "report.json").read_text())
    assert report["base_model"] == str(first)
    bearing = [r for r in base if category[r["prompt"]] in ("count", "combination")]  # --categories
    assert report["n_model"] == len(bearing) + len(second)
    # the same --name with more samples a prompt trains on other images: refused, not silently reused
    more = argv[: argv.index("--rounds")]  # round 1 alone
    more[more.index("--per-prompt") + 1] = "3"
    with pytest.raises(
        SystemExit, match="'p' in this run was made with other settings \\(D_model's images\\)"
    ):
        pf.main(more)
