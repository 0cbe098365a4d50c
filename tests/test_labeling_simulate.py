"""Simulated labelers: the world judge's verdicts with flip noise and skips, through submit_label."""

import argparse
import io
import json

import numpy as np
import pytest
from PIL import Image

from t2ialign.label.cli_data import add_commands
from t2ialign.label.export import export_labels, label_rows
from t2ialign.label.simulate import simulate_labels, simulated_answer
from t2ialign.label.stats import SUMMARY_KEYS
from t2ialign.store import Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

TEXTS = [
    "Two circles",
    "A green colored circle",
    "A circle in the forest",
    "Two blue circles in the forest",
    "Three red squares on the beach",
    "A yellow colored star",
]
SEEDS = (0, 1)


def make_run(path) -> Store:
    """A run with the prompts of TEXTS and two renders of each, role human: 12 images."""
    store = Store.open(path)
    store.add_prompts(p for p in build_prompt_set() if p.text in TEXTS)
    records = []
    for text in TEXTS:
        for seed in SEEDS:
            buf = io.BytesIO()
            render(text, seed).pil().save(buf, format="PNG")
            sha = store.put_image_bytes(buf.getvalue())
            records.append(
                dict(sha256=sha, prompt_text=text, model_id="test", seed=seed, sampler={}, role="human")
            )
    store.add_images([{**r, "width": 64, "height": 64} for r in records])
    return store


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


@pytest.fixture
def store(tmp_path):
    with make_run(tmp_path / "run") as s:
        yield s


def labels_of(store) -> dict[tuple[str, str], str]:
    return {(r["image_sha256"], r["labeler"]): r["label"] for r in label_rows(store)}


def test_noise_free_labels_are_the_judges_verdicts(store, judge):
    report = simulate_labels(store, n_labelers=3, noise=0.0, skip=0.0, judge=judge, progress=False)
    images = store.list_images()
    pixels = [np.asarray(Image.open(store.image_path(r["sha256"])).convert("RGB")) for r in images]
    verdicts = {
        r["sha256"]: v.label
        for r, v in zip(images, judge.judge(pixels, [r["prompt"] for r in images]), strict=True)
    }
    assert set(verdicts.values()) == {"good"}  # renders of their own prompts
    labels = labels_of(store)
    assert len(labels) == 36
    assert labels == {(sha, f"sim-{i}"): v for sha, v in verdicts.items() for i in (1, 2, 3)}
    assert report["labels"] == {"new": 36, "replaced": 0, "unchanged": 0}
    assert report["judge_verdicts"] == {"good": 12, "bad": 0, "skip": 0}
    assert report["labelers"] == ["sim-1", "sim-2", "sim-3"]
    assert tuple(report["summary"]) == SUMMARY_KEYS
    assert report["summary"]["table1"]["total"] == {"good": 100.0, "bad": 0.0, "skip": 0.0, "n": 36}
    assert report["summary"]["fleiss_kappa"] == 1.0
    assert report["summary"]["per_labeler"] == {"sim-1": 12, "sim-2": 12, "sim-3": 12}


def test_half_noise_flips_about_half(store, judge):
    simulate_labels(store, n_labelers=10, noise=0.5, skip=0.0, judge=judge, progress=False)
    values = list(labels_of(store).values())
    assert len(values) == 120 and "skip" not in values
    assert 0.35 < values.count("bad") / len(values) < 0.65


def test_simulated_answer_rates_and_determinism():
    shas = [f"{i:064x}" for i in range(4000)]
    flipped = [simulated_answer("good", 0.2, 0.0, 0, "sim-1", s) for s in shas]
    assert 0.17 < flipped.count("bad") / len(shas) < 0.23
    skipped = [simulated_answer("bad", 0.0, 0.1, 0, "sim-1", s) for s in shas]
    assert set(skipped) == {"bad", "skip"} and 0.08 < skipped.count("skip") / len(shas) < 0.12
    assert all(simulated_answer("skip", 0.5, 0.0, 0, "sim-1", s) == "skip" for s in shas[:200])
    assert flipped == [simulated_answer("good", 0.2, 0.0, 0, "sim-1", s) for s in shas]
    other = [simulated_answer("good", 0.2, 0.0, 0, "sim-2", s) for s in shas]
    assert other != flipped  # each labeler draws its own noise


def test_same_seed_same_labels_in_another_run(tmp_path, judge):
    settings = dict(n_labelers=3, noise=0.3, skip=0.2, judge=judge, progress=False)
    with make_run(tmp_path / "a") as a, make_run(tmp_path / "b") as b, make_run(tmp_path / "c") as c:
        simulate_labels(a, seed=7, **settings)
        simulate_labels(b, seed=7, **settings)
        simulate_labels(c, seed=8, **settings)
        assert labels_of(a) == labels_of(b)
        assert labels_of(a) != labels_of(c)
        assert set(labels_of(a).values()) == {"good", "bad", "skip"}


def test_rerun_changes_nothing_then_new_settings_replace(store, judge, tmp_path):
    settings = dict(n_labelers=2, noise=0.2, skip=0.1, judge=judge, progress=False)
    simulate_labels(store, **settings)
    export_labels(store, tmp_path / "first.jsonl")
    again = simulate_labels(store, **settings)
    assert again["labels"] == {"new": 0, "replaced": 0, "unchanged": 24}
    export_labels(store, tmp_path / "second.jsonl")
    assert (tmp_path / "first.jsonl").read_bytes() == (tmp_path / "second.jsonl").read_bytes()  # times too
    other = simulate_labels(store, **{**settings, "seed": 1})
    assert other["labels"]["new"] == 0 and other["labels"]["replaced"] > 0
    assert sum(other["labels"].values()) == 24


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise=0.6), "noise must be a probability"),
        (dict(skip=-0.1), "skip must be a probability"),
        (dict(n_labelers=0), "n_labelers"),
        (dict(role="people"), "unknown image role"),
        (dict(role="eval"), "no images of role 'eval'"),
    ],
)
def test_bad_settings_are_clear_errors(store, judge, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_labels(store, judge=judge, progress=False, **kwargs)
    assert label_rows(store) == []


def test_never_answers_for_a_person(store, judge):
    store.add_labeler("sim-2")  # a person who chose this name
    with pytest.raises(ValueError, match="sim-2 exist and are not simulated"):
        simulate_labels(store, judge=judge, progress=False)
    assert label_rows(store) == []


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="t2ialign label")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_simulate_prints_table1_and_writes_metrics(tmp_path, capsys):
    make_run(tmp_path / "run").close()
    assert _cli(["simulate", str(tmp_path / "run"), "--labelers", "2", "--noise", "0", "--skip", "0"]) == 0
    out = capsys.readouterr().out
    assert "24 new" in out and "Table 1" in out and "34.4" in out  # ours beside the paper's
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["table1"]["run"]["total"]["good"] == 100.0
    assert metrics["table1"]["paper"]["total"] == {"good": 46.5, "bad": 48.5, "skip": 5.0}
    assert metrics["label_simulate"]["settings"]["n_labelers"] == 2
    assert _cli(["stats", str(tmp_path / "run"), "--json"]) == 0
    # the binary labels' summary, and the pairwise feedback's agreement (issue 17) beside it
    assert tuple(json.loads(capsys.readouterr().out)) == tuple(sorted((*SUMMARY_KEYS, "pairs")))
    assert _cli(["stats", str(tmp_path / "run")]) == 0
    assert "sim-1: 12" in capsys.readouterr().out
    with pytest.raises(ValueError, match="noise"):
        _cli(["simulate", str(tmp_path / "run"), "--noise", "0.9"])
    with pytest.raises(ValueError, match="no run at"):
        _cli(["stats", str(tmp_path / "missing")])
    assert not (tmp_path / "missing").exists()
