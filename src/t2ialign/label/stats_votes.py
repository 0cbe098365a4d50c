"""Statistics of side-by-side votes: the paper's Fig. 3 (Sec. 4.2), as ``stats.py`` gives Table 1 for labels.

For "<first> vs <second>", Fig. 3 shows the share of queries that got v = 0..n votes for the first model
(the *positive* votes) among the n raters of each query, and boxes the share with more than two-thirds
(7 of 9). :func:`tally_votes` computes that from votes, :func:`tally` for a comparison of a run (both
questions, and per prompt split), :func:`format_tally` as text; ``sidebyside.plot_fig3`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from t2ialign.label.comparisons import QUESTIONS, get_comparison
from t2ialign.store import Store


def two_thirds_threshold(n_raters: int) -> int:
    """The fewest votes that are more than two-thirds of n_raters: Fig. 3's box, 7 of 9."""
    return 2 * n_raters // 3 + 1


def tally_votes(votes_by_query: Mapping[Any, Sequence[str]], n_raters: int) -> dict[str, Any]:
    """Fig. 3 for one question from each query's votes (first / second / tie).

    Only complete queries (exactly ``n_raters`` votes) count; the others are reported as ``incomplete``.
    Keys: ``queries`` (complete ones), ``incomplete``, ``histogram`` (number of queries with v votes for
    the first model, v = 0..n_raters), ``percent`` (the same as % of queries, 0.1 precision, as the
    figure's bars), ``threshold`` (:func:`two_thirds_threshold`), ``share_ge_threshold`` (share of queries
    with at least that many votes for the first model: the figure's box), ``share_second_ge_threshold``
    (the same for the second model, the other number of the paper's "20%-10%"), ``tie_share`` and
    ``vote_share`` (shares of all votes of complete queries). Shares are None without a complete query.
    """
    if not isinstance(n_raters, int) or isinstance(n_raters, bool) or n_raters < 1:
        raise ValueError(f"n_raters must be an integer >= 1, got {n_raters!r}")
    complete = []
    for query, votes in votes_by_query.items():
        unknown = set(votes) - {"first", "second", "tie"}
        if unknown:
            raise ValueError(f"query {query!r}: votes must be first, second or tie, got {sorted(unknown)}")
        if len(votes) > n_raters:
            raise ValueError(f"query {query!r} has {len(votes)} votes, more than {n_raters}")
        if len(votes) == n_raters:
            complete.append(votes)
    threshold = two_thirds_threshold(n_raters)
    histogram = [0] * (n_raters + 1)
    for votes in complete:
        histogram[sum(v == "first" for v in votes)] += 1
    n = len(complete)
    n_votes = n * n_raters
    counts = {c: sum(v == c for votes in complete for v in votes) for c in ("first", "second", "tie")}

    def share(k: int, total: int) -> float | None:
        return round(k / total, 4) if total else None

    return {
        "queries": n,
        "incomplete": len(votes_by_query) - n,
        "histogram": histogram,
        "percent": [round(100.0 * h / n, 1) for h in histogram] if n else None,
        "threshold": threshold,
        "share_ge_threshold": share(sum(histogram[threshold:]), n),
        "share_second_ge_threshold": share(
            sum(sum(v == "second" for v in votes) >= threshold for votes in complete), n
        ),
        "tie_share": share(counts["tie"], n_votes),
        "vote_share": {c: share(k, n_votes) for c, k in counts.items()},
    }


def tally(store: Store, name: str) -> dict[str, Any]:
    """Fig. 3 of one comparison: ``{"comparison": {...}, "alignment": tally_votes, "fidelity": ...,
    "by_split": {prompt split: {"alignment", "fidelity"}}}`` (the paper mixes 60 seen and 60 unseen
    prompts; the split view tells them apart)."""
    comparison = get_comparison(store, name)
    queries = store.comparison_queries(comparison["id"])
    votes: dict[str, dict[int, list[str]]] = {q: {query["id"]: [] for query in queries} for q in QUESTIONS}
    for v in store.comparison_votes(comparison["id"]):
        for question in QUESTIONS:
            votes[question][v["query_id"]].append(v[question])
    n = comparison["raters_per_query"]
    split_of = {query["id"]: query["split"] for query in queries}
    by_split = {
        split: {
            question: tally_votes({i: v for i, v in votes[question].items() if split_of[i] == split}, n)
            for question in QUESTIONS
        }
        for split in sorted(set(split_of.values()))
    }
    info = {k: comparison[k] for k in ("name", "first_model", "second_model", "raters_per_query", "seed")}
    return {
        "comparison": {**info, "queries": len(queries)},
        **{question: tally_votes(votes[question], n) for question in QUESTIONS},
        "by_split": by_split,
    }


def format_tally(result: dict[str, Any]) -> str:
    """A tally as text: per question the histogram in % and the boxed share, as Fig. 3 reads."""
    c = result["comparison"]
    lines = [
        f"{c['first_model']} vs {c['second_model']} ({c['name']}; {c['raters_per_query']} raters per query)"
    ]
    for question in QUESTIONS:
        t = result[question]
        if not t["queries"]:
            lines.append(f"  {question}: no complete query yet ({t['incomplete']} waiting for votes)")
            continue
        bars = " ".join(f"{v}:{p:g}" for v, p in enumerate(t["percent"]))
        lines.append(
            f"  {question}: >= {t['threshold']} votes for {c['first_model']} on "
            f"{100 * t['share_ge_threshold']:.1f}% of {t['queries']} queries, for {c['second_model']} on "
            f"{100 * t['share_second_ge_threshold']:.1f}%; ties {100 * t['tie_share']:.1f}% of votes"
        )
        lines.append(f"    % of queries by votes for {c['first_model']}: {bars}")
        if t["incomplete"]:
            lines.append(f"    ({t['incomplete']} queries still short of votes are left out)")
    return "\n".join(lines)
