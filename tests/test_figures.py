"""core.figures: the paper's Fig. 3 and Fig. 4 and the report's charts, drawn once, without pyplot."""

import io
import subprocess
import sys

from PIL import Image

from t2ialign.core import figures


def _tally():
    """A tally as sidebyside.tally writes it: 30 queries, 3 with each number of votes; no fidelity yet."""
    alignment = {"queries": 30, "histogram": [3] * 10, "percent": [10.0] * 10, "threshold": 7}
    fidelity = {"queries": 0, "histogram": [0] * 10, "percent": None, "threshold": 7}
    return {
        "comparison": {"name": "c", "first_model": "ft", "second_model": "orig", "raters_per_query": 9},
        "alignment": alignment | {"share_ge_threshold": 0.3},
        "fidelity": fidelity | {"share_ge_threshold": None},
    }


def _bars(ax):
    return [p for p in ax.patches if type(p).__name__ == "Rectangle" and p.get_fill()]


def test_fig3_draws_both_questions_with_the_box_and_one_y_scale():
    fig = figures.fig3(_tally())
    axes = fig.axes
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    assert [round(b.get_height(), 1) for b in _bars(axes[0])] == [10.0] * 10
    assert all(b.get_height() == 0 for b in _bars(axes[1]))  # no complete query: empty bars
    texts = [t.get_text() for ax in axes for t in ax.texts]
    assert texts == [">= 7: 30%", ">= 7: n/a"]
    assert fig._suptitle.get_text() == "ft vs orig (paper Fig. 3)"
    assert figures.fig3(_tally(), "mine")._suptitle.get_text() == "mine"


def test_fig3_from_a_bare_histogram_and_without_data():
    fig = figures.fig3({"comparison": {"first_model": "x"}, "alignment": {"histogram": [1, 2, 1]}})
    assert len(fig.axes) == 1
    assert [b.get_height() for b in _bars(fig.axes[0])] == [25.0, 50.0, 25.0]
    assert fig.axes[0].texts[0].get_text() == ">= 2: 25%"  # two thirds of 2 raters, from the percentages
    assert figures.fig3({"comparison": {}}) is None


def test_fig4_leaves_out_sets_without_pairs_and_labels_the_pair_counts():
    results = {
        "n_pairs": {"seen": 10, "unseen": 0},
        "scorers": {
            "reward": {"seen": {"mean": 0.8, "std": 0.02}, "unseen": {"mean": None, "std": None}},
            "clip_score": {"seen": {"mean": 0.6, "std": 0.0}, "unseen": {"mean": None, "std": 0.0}},
        },
    }
    ax = figures.fig4(results).axes[0]
    assert sorted(round(b.get_height(), 2) for b in _bars(ax)) == [0.6, 0.8]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["seen\n(10 pairs)", "unseen\n(0 pairs)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["reward", "clip_score"]
    ordered = figures.fig4(results, scorers=["clip_score"], sets=["seen"]).axes[0]
    assert [round(b.get_height(), 2) for b in _bars(ordered)] == [0.6]


def test_report_charts_are_none_without_data():
    assert figures.alignment_chart({"m": {}}, "seen", ["count", "all"]) is None
    assert figures.forest({"m": {}}, ["count"], ["seen"]) is None
    models = {"m": {"alignment": {"seen": {"count": {"alignment": 0.5, "ci95": [0.4, 0.6], "n": 9}}}}}
    assert len(_bars(figures.alignment_chart(models, "seen", ["count", "all"]).axes[0])) == 1
    paired = {"m": {"seen": {"count": {"delta": 0.1, "ci95": [0.0, 0.2]}}}}
    assert len(figures.forest(paired, ["count"], ["seen", "all"]).axes) == 2


def test_png_bytes_and_write_png(tmp_path):
    fig = figures.fig4({"scorers": {"r": {"s": {"mean": 0.7, "std": 0.1}}}})
    with Image.open(io.BytesIO(figures.png_bytes(fig))) as im:
        assert im.format == "PNG" and im.size[0] > 500
    path = figures.write_png(fig, tmp_path / "f.png")
    with Image.open(path) as im:
        assert im.format == "PNG"


def test_no_pyplot_global_state():
    code = (
        "import sys; from t2ialign.core import figures as f; "
        "f.png_bytes(f.fig4({'scorers': {'r': {'s': {'mean': 0.7, 'std': 0.1}}}})); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
