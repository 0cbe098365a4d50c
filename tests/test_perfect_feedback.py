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
