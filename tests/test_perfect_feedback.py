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
