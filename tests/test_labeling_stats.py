"""Agreement and class-balance statistics of labels (paper Table 1), against hand-computed numbers."""

import io

import pytest

from t2ialign.label.service import submit_label
from t2ialign.label.stats import SUMMARY_KEYS, fleiss_kappa, format_table1, label_summary, majority
from t2ialign.store import Store
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render

# Wikipedia's worked example of Fleiss' kappa: 10 items, 14 raters, 5 categories; kappa = 0.210.
WIKIPEDIA = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_wikipedia_example():
    # P_bar = 0.378, P_e = 0.213 -> kappa = 0.210
    assert round(fleiss_kappa(WIKIPEDIA), 3) == 0.210


def test_fleiss_kappa_small_hand_computed_tables():
    # n = 3: P_i = 1, 1/3, 1 -> P_bar = 7/9; p = 5/9, 1/9, 3/9 -> P_e = 35/81; kappa = 28/46
    assert fleiss_kappa([[3, 0, 0], [2, 1, 0], [0, 0, 3]]) == pytest.approx(14 / 23)
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)  # P_bar = 1, P_e = 0.5
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)  # P_bar = 0, P_e = 0.5
    # every rating in one category: P_e = 1, kappa 0/0 -> 1.0 by our convention (perfect agreement)
    assert fleiss_kappa([[3, 0, 0], [3, 0, 0]]) == 1.0


@pytest.mark.parametrize(
    "counts, match",
    [
        ([], "at least one item"),
        ([[2, 0], [1, 0]], "same number"),
        ([[1, 0], [0, 1]], "at least 2 ratings"),
        ([[2, 0], [2]], "categories"),
        ([[3, -1], [2, 0]], "non-negative integers"),
        ([[1.5, 0.5], [2, 0]], "non-negative integers"),
    ],
)
def test_fleiss_kappa_rejects_bad_tables(counts, match):
    with pytest.raises(ValueError, match=match):
        fleiss_kappa(counts)


def test_majority_ignores_skips():
    assert majority(["good", "good", "bad"]) == "good"
    assert majority(["skip", "bad"]) == "bad"
    assert majority(["good", "bad", "skip"]) == "tie"
    with pytest.raises(ValueError, match="non-skip"):
        majority(["skip", "skip"])
    with pytest.raises(ValueError, match="good, bad or skip"):
        majority(["good", "meh"])


TEXTS = ["Two circles", "A green colored circle", "A circle in the forest", "Two blue circles in the forest"]


def _image(store, text, seed):
    buf = io.BytesIO()
    render(text, seed).pil().save(buf, format="PNG")
    sha = store.put_image_bytes(buf.getvalue())
    record = dict(sha256=sha, prompt_text=text, model_id="test", seed=seed, sampler={}, role="human")
    return store.add_images([{**record, "width": 64, "height": 64}])[0]


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "run") as s:
        s.add_prompts(p for p in build_prompt_set() if p.text in TEXTS)
        yield s


def test_label_summary_hand_computed(store):
    a, b, c, d = (_image(store, t, 0) for t in TEXTS)  # count, color, background, combination
    e = _image(store, "Two circles", 1)  # never labeled
    x, y, z = (store.add_labeler(n) for n in ("x", "y", "z"))
    store.add_labeler("w")  # labels nothing
    labels = {
        a: {x: "good", y: "good", z: "bad"},
        b: {x: "good", y: "bad", z: "skip"},
        c: {x: "bad", y: "bad", z: "bad"},
        d: {x: "skip", y: "skip"},
    }
    for image, by in labels.items():
        for labeler, value in by.items():
            submit_label(store, labeler, image, value)

    summary = label_summary(store)
    assert tuple(summary) == SUMMARY_KEYS
    t1 = summary["table1"]
    assert t1["count"] == {"good": 66.7, "bad": 33.3, "skip": 0.0, "n": 3}
    assert t1["color"] == {"good": 33.3, "bad": 33.3, "skip": 33.3, "n": 3}
    assert t1["background"] == {"good": 0.0, "bad": 100.0, "skip": 0.0, "n": 3}
    assert t1["combination"] == {"good": 0.0, "bad": 0.0, "skip": 100.0, "n": 2}
    assert t1["total"] == {"good": 27.3, "bad": 45.5, "skip": 27.3, "n": 11}  # 3, 5, 3 of 11
    # images with 3 labels (the most common number): a [2,1,0], b [1,1,1], c [0,3,0] over good/bad/skip
    # P_bar = (1/3 + 0 + 1) / 3 = 4/9; p = 3/9, 5/9, 1/9 -> P_e = 35/81; kappa = (36-35)/(81-35) = 1/46
    assert summary["fleiss_kappa"] == round(1 / 46, 4)
    ms = summary["majority_share"]
    assert ms["count"] == {"good": 1.0, "bad": 0.0, "tie": 0.0, "n": 1}
    assert ms["color"] == {"good": 0.0, "bad": 0.0, "tie": 1.0, "n": 1}
    assert ms["background"] == {"good": 0.0, "bad": 1.0, "tie": 0.0, "n": 1}
    assert ms["combination"] == {"good": None, "bad": None, "tie": None, "n": 0}  # d: skips only
    assert ms["total"] == {"good": 0.3333, "bad": 0.3333, "tie": 0.3333, "n": 3}
    assert summary["per_labeler"] == {"w": 0, "x": 4, "y": 4, "z": 3}
    assert summary["progress"] == {"images": 5, "labeled_k_times": {"0": 1, "2": 1, "3": 3}, "labels": 11}
    assert e not in labels
    text = format_table1(t1)
    assert "combination" in text and "34.4" in text  # the paper's count row beside ours


def test_label_summary_of_a_run_without_labels(store):
    summary = label_summary(store)
    assert summary["fleiss_kappa"] is None
    assert summary["table1"]["total"] == {"good": None, "bad": None, "skip": None, "n": 0}
    assert summary["progress"] == {"images": 0, "labeled_k_times": {}, "labels": 0}
    assert "-" in format_table1(summary["table1"])
