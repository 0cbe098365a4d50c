"""benchmarks/count_reads.py: per asked count, what a model's stored evaluation images show."""

import dataclasses
import io

import pytest
from benchmarks import count_reads

from t2ialign.store import Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render


def _add(store: Store, text: str, spec, model: str, seed: int) -> None:
    buf = io.BytesIO()
    render(spec, seed).pil().save(buf, format="PNG")
    sha = store.put_image_bytes(buf.getvalue())
    store.add_image(sha, text, model, seed, {}, "eval", width=64, height=64, model_revision="r")


def test_a_model_that_draws_the_asked_count_and_one_that_draws_another_are_told_apart(tmp_path):
    prompts = [p for p in build_prompt_set() if p.category == "count"]
    by_count = {}
    for p in prompts:
        by_count.setdefault(p.spec.count, p)
    assert sorted(by_count) == [1, 2, 3, 4, 5]
    with Store.open(tmp_path / "run") as store:
        store.add_prompts(build_prompt_set())
        for k, p in by_count.items():
            for seed in range(4):
                _add(store, p.text, p.spec, "right", seed)  # the asked count
                _add(store, p.text, dataclasses.replace(p.spec, count=6 - k), "mirrored", 100 + seed)
        # a color prompt names no count: it is left out
        color = next(p for p in build_prompt_set() if p.category == "color" and p.spec.count is None)
        _add(store, color.text, color.spec, "right", 0)
    table = count_reads.count_reads(tmp_path / "run", Judge.load())
    assert set(table) == {"right@r", "mirrored@r"}
    right, mirrored = table["right@r"], table["mirrored@r"]
    assert [right[w]["n"] for w in ("one", "two", "three", "four", "five")] == [4] * 5
    for k, w in enumerate(("one", "two", "three", "four", "five"), start=1):
        assert right[w]["exact"] >= 0.75 and abs(right[w]["mean_read"] - k) <= 0.5, (w, right[w])
        if k != 3:  # asked k, drew 6 - k
            assert mirrored[w]["exact"] <= 0.25 and abs(mirrored[w]["mean_read"] - (6 - k)) <= 0.5


def test_a_run_without_count_evaluation_images_is_refused(tmp_path):
    with Store.open(tmp_path / "empty") as store:
        store.add_prompts(build_prompt_set())
    with pytest.raises(SystemExit):
        count_reads.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        count_reads.main([str(tmp_path / "nothing")])
