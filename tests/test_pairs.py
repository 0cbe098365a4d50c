"""Pairwise feedback: making pairs, the assignment policy, simulated raters, agreement, export and the CLI."""

import argparse
import io
import json

import pytest

from t2ialign.label.cli_data import add_commands
from t2ialign.label.export_pairs import export_preferences, import_preferences_file, preference_rows
from t2ialign.label.pairs import create_pairs, pairs_of, pick_pair, shown_swapped, to_stored
from t2ialign.label.simulate_pairs import simulate_pairs, simulated_choice
from t2ialign.label.stats_pairs import pair_agreement
from t2ialign.store import PairState, Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

# Each prompt gets a right render (seeds 0, 1) and a wrong one: a render of WRONG shown under it.
TEXTS = ["A green colored circle", "Three red squares on the beach"]
WRONG = {TEXTS[0]: TEXTS[1], TEXTS[1]: TEXTS[0]}


def png(text: str, seed: int) -> bytes:
    buf = io.BytesIO()
    render(text, seed).pil().save(buf, format="PNG")
    return buf.getvalue()


def make_run(path) -> tuple[Store, dict[str, str]]:
    """A run with two prompts and three images each (two right renders, one wrong), role human; and
    {sha256 of each wrong image: its prompt}."""
    store = Store.open(path)
    store.add_prompts(p for p in build_prompt_set() if p.text in TEXTS)
    records, wrong = [], {}
    for text in TEXTS:
        for seed, shown in ((0, text), (1, text), (2, WRONG[text])):
            sha = store.put_image_bytes(png(shown, seed))
            if shown != text:
                wrong[sha] = text
            records.append(
                dict(sha256=sha, prompt_text=text, model_id="test", seed=seed, sampler={}, role="human")
                | dict(width=64, height=64)
            )
    store.add_images(records)
    return store, wrong


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


@pytest.fixture
def run(tmp_path):
    store, wrong = make_run(tmp_path / "run")
    with store:
        yield store, wrong


def test_pairs_are_drawn_by_seed_and_a_rerun_adds_nothing(run):
    store, _ = run
    shas = [f"{i:064x}" for i in range(5)]
    assert pairs_of(shas, 3, 7, "p") == pairs_of(list(reversed(shas)), 3, 7, "p")
    assert len(set(pairs_of(shas, None, 0, "p"))) == 10
    assert pairs_of(shas, 4, 0, "p") != pairs_of(shas, 4, 1, "p")
    assert create_pairs(store, per_prompt=2, seed=3) == {"prompts": 2, "pairs": 4, "new": 4}
    assert create_pairs(store, per_prompt=2, seed=3) == {"prompts": 2, "pairs": 4, "new": 0}
    assert create_pairs(store) == {"prompts": 2, "pairs": 6, "new": 2}  # all 3 pairs of each prompt
    for p in store.preference_pairs():
        images = {im["sha256"]: im["prompt"] for im in store.list_images()}
        assert images[p["image_a"]] == images[p["image_b"]] == p["prompt"]
    with pytest.raises(ValueError, match="no images of role"):
        create_pairs(store, role="eval")


def test_pick_pair_resumes_then_finishes_started_pairs_and_respects_k():
    st = [PairState(1, 1, 0, 0, None), PairState(2, 1, 1, 0, None), PairState(3, 2, 0, 1, None)]
    assert pick_pair(st, k=2) == [2]  # taken most, ties by id
    assert pick_pair([*st, PairState(4, 2, 0, 0, "leased")], k=2) == [4]
    assert pick_pair(st, k=1) == [1]  # pairs 2 and 3 are taken by another rater already
    assert pick_pair([PairState(1, 1, 0, 0, "answered"), PairState(2, 1, 2, 0, None)], k=2) == []


def test_the_shown_sides_translate_back_and_are_balanced():
    swaps = [shown_swapped(p, r) for p in range(1, 41) for r in range(1, 6)]
    assert 70 < sum(swaps) < 130 and swaps == [shown_swapped(p, r) for p in range(1, 41) for r in range(1, 6)]
    assert [to_stored(a, True) for a in ("A", "B", "tie")] == ["B", "A", "tie"]
    assert [to_stored(a, False) for a in ("A", "B", "tie")] == ["A", "B", "tie"]
    with pytest.raises(ValueError, match="answer must be"):
        to_stored("left", False)


def test_simulated_choice_ties_within_the_margin_and_flips_with_noise():
    pair = ("a" * 64, "b" * 64)
    assert simulated_choice(0.9, 0.2, 0.0, 0.05, 0, "sim-1", pair) == "A"
    assert simulated_choice(0.2, 0.9, 0.0, 0.05, 0, "sim-1", pair) == "B"
    assert simulated_choice(0.5, 0.52, 0.5, 0.05, 0, "sim-1", pair) == "tie"
    flips = [simulated_choice(0.9, 0.2, 0.3, 0.0, s, f"sim-{r}", pair) for s in range(20) for r in range(20)]
    assert 0.22 < flips.count("B") / len(flips) < 0.38


def test_simulated_raters_prefer_the_right_image_and_reruns_change_nothing(run, judge):
    store, wrong = run
    create_pairs(store)
    report = simulate_pairs(store, n_raters=3, noise=0.0, tie_margin=0.05, judge=judge, progress=False)
    assert report["answers"] == {"new": 18, "replaced": 0, "unchanged": 0}
    for r in store.preferences():
        if r["image_a"] in wrong or r["image_b"] in wrong:  # a right render against a wrong one
            assert r["preferred"] is not None and r["preferred"] not in wrong, r
    assert report["summary"]["agreement"]["app"]["agreement"] == 1.0  # no noise: all raters agree
    again = simulate_pairs(store, n_raters=3, noise=0.0, tie_margin=0.05, judge=judge, progress=False)
    assert again["answers"]["unchanged"] == 18
    noisy = simulate_pairs(store, n_raters=3, noise=0.5, tie_margin=0.05, seed=1, judge=judge, progress=False)
    assert noisy["answers"]["replaced"] > 0
    with pytest.raises(ValueError, match="noise must be"):
        simulate_pairs(store, noise=0.7, judge=judge, progress=False)


def test_pair_agreement_counts_rater_pairs():
    got = pair_agreement({1: ["A", "A", "B"], 2: ["tie", "tie"], 3: ["A", "tie"], 4: ["B"]})
    # rater pairs: 3 + 1 + 1 = 5, agreeing: 1 (A,A) + 1 (tie,tie) = 2; excluding ties: 3 + 0 + 0, 1 agree
    assert (got["rater_pairs"], got["agreement"]) == (5, 0.4)
    assert (got["rater_pairs_excluding_ties"], got["agreement_excluding_ties"]) == (3, round(1 / 3, 4))
    assert (got["pairs"], got["compared_pairs"], got["answers"]) == (4, 3, 8)
    assert got["choice_share"] == {"A": 0.375, "B": 0.25, "tie": 0.375}
    assert pair_agreement({})["agreement"] is None
    with pytest.raises(ValueError, match="A, B or tie"):
        pair_agreement({1: ["left"]})


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_and_import_round_trip(run, tmp_path, suffix):
    store, _ = run
    create_pairs(store)
    pairs = store.preference_pairs()
    ann = store.add_labeler("ann")
    store.add_preferences([(pairs[0]["id"], ann, "A"), (pairs[1]["id"], ann, "tie")])
    store.import_preferences(
        [(pairs[2]["prompt"], pairs[2]["image_b"], pairs[2]["image_a"], "7@pick", "A")], "import:pick"
    )
    out = tmp_path / f"prefs{suffix}"
    assert export_preferences(store, out) == 3
    first = out.read_bytes()
    assert export_preferences(store, out) == 3 and out.read_bytes() == first  # byte-identical
    other, _ = make_run(tmp_path / "other")  # the same images, no pairs yet
    with other:
        assert import_preferences_file(other, out)["new"] == 3
        assert preference_rows(other) == preference_rows(store)
        assert import_preferences_file(other, out)["unchanged"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**preference_rows(store)[0], "choice": "left"}) + "\n")
    with pytest.raises(ValueError, match="choice must be"):
        import_preferences_file(store, bad)


def cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_create_simulate_stats_export(run, tmp_path, capsys, monkeypatch, judge):
    store, _ = run
    monkeypatch.setattr(Judge, "load", classmethod(lambda cls, *a, **k: judge))
    path = str(store.run_dir)
    assert cli("pairs", "create", path, "--per-prompt", "2", "--seed", "1") == 0
    assert "4 pairs of 2 prompts (4 new)" in capsys.readouterr().out
    assert cli("pairs", "simulate", path, "--raters", "2", "--noise", "0", "--tie-margin", "0.01") == 0
    assert "4 pairs x 2 simulated raters" in capsys.readouterr().out
    assert cli("stats", path, "--json") == 0
    pairs = json.loads(capsys.readouterr().out)["pairs"]
    assert pairs["pairs"] == {"app": 4} and pairs["agreement"]["app"]["rater_pairs"] == 4
    assert cli("stats", path) == 0
    assert "rater pairs agree 100.0% of 4" in capsys.readouterr().out
    assert cli("pairs", "export", path, str(tmp_path / "p.parquet")) == 0
    assert "8 preferences" in capsys.readouterr().out
