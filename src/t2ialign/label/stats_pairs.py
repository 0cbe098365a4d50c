"""Agreement of pairwise preferences (issue 17), as ``stats`` measures it for binary labels.

On each pair with two or more answers, every two raters of it form a *rater pair*. ``agreement`` is the
share of rater pairs, over all pairs, that gave the same answer (a tie agrees with a tie);
``agreement_excluding_ties`` is the same among rater pairs where both preferred an image (neither said
tie): how often two raters who took a side took the same one. 0.5 is chance for the latter.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from t2ialign.store import PREFERENCE_CHOICES, Store


def _pairs_of(n: int) -> int:
    return n * (n - 1) // 2


def pair_agreement(answers_by_pair: Mapping[Any, Sequence[str]]) -> dict[str, Any]:
    """Agreement of the answers (A / B / tie) given to each pair. Keys: ``pairs`` (with any answer),
    ``answers``, ``compared_pairs`` (with two or more), ``rater_pairs``, ``agreement``,
    ``rater_pairs_excluding_ties``, ``agreement_excluding_ties``, ``choice_share`` (share of all answers
    per choice). Shares are None when there is nothing to compare."""
    rater_pairs = agreeing = sided = sided_agreeing = 0
    totals: Counter = Counter()
    for pair, answers in answers_by_pair.items():
        unknown = set(answers) - set(PREFERENCE_CHOICES)
        if unknown:
            raise ValueError(f"pair {pair!r}: answers must be A, B or tie, got {sorted(unknown)}")
        c = Counter(answers)
        totals.update(c)
        rater_pairs += _pairs_of(len(answers))
        agreeing += sum(_pairs_of(n) for n in c.values())
        sided += _pairs_of(c["A"] + c["B"])
        sided_agreeing += _pairs_of(c["A"]) + _pairs_of(c["B"])
    n_answers = sum(totals.values())

    def share(k: int, n: int) -> float | None:
        return round(k / n, 4) if n else None

    return {
        "pairs": sum(1 for a in answers_by_pair.values() if a),
        "answers": n_answers,
        "compared_pairs": sum(1 for a in answers_by_pair.values() if len(a) >= 2),
        "rater_pairs": rater_pairs,
        "agreement": share(agreeing, rater_pairs),
        "rater_pairs_excluding_ties": sided,
        "agreement_excluding_ties": share(sided_agreeing, sided),
        "choice_share": {c: share(totals[c], n_answers) for c in PREFERENCE_CHOICES},
    }


def preference_summary(store: Store) -> dict[str, Any]:
    """The run's pairwise feedback: ``pairs`` (per source: pairs stored), ``agreement`` (per source:
    :func:`pair_agreement` of its answers) and ``per_rater`` (answers per rater name)."""
    pairs = Counter(p["source"] for p in store.preference_pairs())
    answers: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    per_rater: Counter = Counter()
    for r in store.preferences():
        answers[r["source"]][r["pair_id"]].append(r["choice"])
        per_rater[r["labeler"]] += 1
    return {
        "pairs": dict(sorted(pairs.items())),
        "agreement": {src: pair_agreement(answers[src]) for src in sorted(pairs)},
        "per_rater": dict(sorted(per_rater.items())),
    }


def format_preference_summary(summary: dict[str, Any]) -> str:
    """:func:`preference_summary` as text, one line per source."""
    if not summary["pairs"]:
        return "pairwise: no pairs (t2ialign label pairs create RUN)"
    lines = ["pairwise preferences"]
    for src, n_pairs in summary["pairs"].items():
        a = summary["agreement"][src]
        agree = "n/a" if a["agreement"] is None else f"{a['agreement']:.1%}"
        sided = "n/a" if a["agreement_excluding_ties"] is None else f"{a['agreement_excluding_ties']:.1%}"
        ties = a["choice_share"]["tie"]
        lines.append(
            f"  {src}: {n_pairs} pairs, {a['answers']} answers ({'n/a' if ties is None else f'{ties:.1%}'} ties); "
            f"rater pairs agree {agree} of {a['rater_pairs']}, excluding ties {sided} of "
            f"{a['rater_pairs_excluding_ties']}"
        )
    return "\n".join(lines)
