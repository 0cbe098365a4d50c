"""Statistics of collected feedback: the class balance of the paper's Table 1, agreement between labelers
(Fleiss' kappa, majority votes) and progress. ``label_summary`` is what the admin view and
``t2ialign label stats`` show.

The paper (Sec. 3.1, Table 1) reports, per category, the share of good / bad / skip answers among all the
labels it collected; ``PAPER_TABLE1`` holds those numbers for comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select

from t2ialign.store import LABEL_VALUES, GoldRow, ImageRow, LabelerRow, LabelRow, PromptRow, Store
from t2ialign.world.prompts import CATEGORIES

# Lee et al. 2023, Table 1: % of good / bad / skip labels per category (27k images, 2,700 prompts).
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "count": {"good": 34.4, "bad": 61.0, "skip": 4.6},
    "color": {"good": 70.4, "bad": 20.8, "skip": 8.8},
    "background": {"good": 66.9, "bad": 33.1, "skip": 0.0},
    "combination": {"good": 35.8, "bad": 59.9, "skip": 4.3},
    "total": {"good": 46.5, "bad": 48.5, "skip": 5.0},
}
TABLE1_ROWS: tuple[str, ...] = (*CATEGORIES, "total")
SUMMARY_KEYS: tuple[str, ...] = ("table1", "fleiss_kappa", "majority_share", "per_labeler", "progress")


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of N items, each rated by the same number n >= 2 of raters into k categories.

    ``counts[i][j]`` is how many raters put item i in category j (an N x k table). With
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar = mean_i P_i, p_j = sum_i n_ij / (N n) and
    P_e = sum_j p_j^2: kappa = (P_bar - P_e) / (1 - P_e).

    Degenerate case: P_e = 1 happens only when every rating of every item falls in one category, which is
    perfect agreement (P_bar = 1 too); kappa is then 0/0, and we return 1.0 rather than NaN. Raises
    ValueError for an empty table, rows of different lengths, negative or non-integer counts, or items
    whose numbers of ratings differ or are below 2.
    """
    if not counts:
        raise ValueError("fleiss_kappa needs at least one item")
    k = len(counts[0])
    if k < 1:
        raise ValueError("fleiss_kappa needs at least one category")
    n = None
    for i, row in enumerate(counts):
        if len(row) != k:
            raise ValueError(f"item {i} has {len(row)} categories, item 0 has {k}")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in row):
            raise ValueError(f"item {i}: counts must be non-negative integers, got {list(row)}")
        n = sum(row) if n is None else n
        if sum(row) != n:
            raise ValueError(
                f"item {i} has {sum(row)} ratings, item 0 has {n}: all items need the same number"
            )
    if n < 2:
        raise ValueError(f"fleiss_kappa needs at least 2 ratings per item, got {n}")
    big_n = len(counts)
    p_bar = sum((sum(c * c for c in row) - n) / (n * (n - 1)) for row in counts) / big_n
    p_j = [sum(row[j] for row in counts) / (big_n * n) for j in range(k)]
    p_e = sum(p * p for p in p_j)
    if sum(p > 0 for p in p_j) == 1:  # every rating in one category: P_e = P_bar = 1
        return 1.0
    return (p_bar - p_e) / (1.0 - p_e)


def majority(labels: Iterable[str]) -> str:
    """The majority vote of one image's labels, skips ignored: "good", "bad", or "tie" when equal.

    Raises ValueError when no label is good or bad (nothing to vote on) or a label is not good/bad/skip.
    """
    votes = Counter(labels)
    unknown = set(votes) - set(LABEL_VALUES)
    if unknown:
        raise ValueError(f"labels must be good, bad or skip; got {sorted(unknown)}")
    if votes["good"] + votes["bad"] == 0:
        raise ValueError("no good or bad label: a majority needs at least one non-skip label")
    if votes["good"] == votes["bad"]:
        return "tie"
    return "good" if votes["good"] > votes["bad"] else "bad"


def _percentages(counts: Counter) -> dict:
    n = sum(counts[v] for v in LABEL_VALUES)
    row: dict = {v: (round(100.0 * counts[v] / n, 1) if n else None) for v in LABEL_VALUES}
    row["n"] = n
    return row


def label_summary(store: Store) -> dict:
    """Class balance, agreement, per-labeler counts and progress of a run's labels (paper Table 1).

    Keys (the admin endpoint returns this dict as it is):

    - ``table1``: {category and "total": {"good", "bad", "skip": % of that row's labels, 0-100, rounded
      to 0.1 (None when the row has no label), "n": number of labels}}. Labels of prompts outside the four
      categories count in "total" only.
    - ``fleiss_kappa``: over good/bad/skip, among the images with the most common number (>= 2) of labels
      (ties: the larger number); None when no image has two labels.
    - ``majority_share``: {category and "total": {"good", "bad", "tie": fractions of the images with at
      least one non-skip label, rounded to 4 places, "n": that number of images}}.
    - ``per_labeler``: {labeler name: number of labels}, every labeler, with zero too.
    - ``progress``: {"images": images of role human, "labeled_k_times": {"k": human images with k labels}
      (keys are strings, as in JSON), "labels": all labels}.
    """
    with store.session() as s:
        rows = s.execute(
            select(LabelRow.image_id, LabelRow.value, PromptRow.category)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .join(PromptRow, ImageRow.prompt_id == PromptRow.id)
            .where(LabelRow.image_id.not_in(select(GoldRow.image_id)))  # gold answers are not feedback
        ).all()
        per_labeler = dict(
            s.execute(
                select(LabelerRow.name, func.count(LabelRow.id))
                .outerjoin(LabelRow, LabelRow.labeler_id == LabelerRow.id)
                .group_by(LabelerRow.name)
                .order_by(LabelerRow.name)
            ).all()
        )
        human_ids = set(s.scalars(select(ImageRow.id).where(ImageRow.role == "human")))

    values: dict[str, Counter] = {c: Counter() for c in TABLE1_ROWS}
    by_image: dict[int, list[str]] = {}
    category_of: dict[int, str | None] = {}
    for image_id, value, category in rows:
        values["total"][value] += 1
        if category is not None:
            values[category][value] += 1
        by_image.setdefault(image_id, []).append(value)
        category_of[image_id] = category

    # Fleiss' kappa needs the same number of ratings per item: take the most common one (>= 2).
    sizes = Counter(len(v) for v in by_image.values() if len(v) >= 2)
    kappa = None
    if sizes:
        n_ratings = max(sizes, key=lambda m: (sizes[m], m))
        table = [[v.count(lab) for lab in LABEL_VALUES] for v in by_image.values() if len(v) == n_ratings]
        kappa = round(fleiss_kappa(table), 4)

    votes: dict[str, Counter] = {c: Counter() for c in TABLE1_ROWS}
    for image_id, labels in by_image.items():
        if any(v != "skip" for v in labels):
            vote = majority(labels)
            votes["total"][vote] += 1
            if category_of[image_id] is not None:
                votes[category_of[image_id]][vote] += 1
    majority_share = {}
    for c, counter in votes.items():
        n = sum(counter.values())
        majority_share[c] = {v: (round(counter[v] / n, 4) if n else None) for v in ("good", "bad", "tie")}
        majority_share[c]["n"] = n

    k_times = Counter(len(by_image.get(i, ())) for i in human_ids)
    return {
        "table1": {c: _percentages(values[c]) for c in TABLE1_ROWS},
        "fleiss_kappa": kappa,
        "majority_share": majority_share,
        "per_labeler": per_labeler,
        "progress": {
            "images": len(human_ids),
            "labeled_k_times": {str(k): k_times[k] for k in sorted(k_times)},
            "labels": len(rows),
        },
    }


def format_table1(table1: dict, paper: dict | None = PAPER_TABLE1) -> str:
    """Table 1 as text: good / bad / skip % per category, with the paper's numbers beside them."""
    header = f"{'category':12s} {'n':>7s} {'good':>6s} {'bad':>6s} {'skip':>6s}"
    if paper:
        header += f"   {'paper: good':>11s} {'bad':>6s} {'skip':>6s}"
    lines = [header, "-" * len(header)]
    for c in TABLE1_ROWS:
        row = table1[c]
        cells = [f"{row[v]:6.1f}" if row[v] is not None else f"{'-':>6s}" for v in LABEL_VALUES]
        line = f"{c:12s} {row['n']:7d} {' '.join(cells)}"
        if paper:
            line += f"   {paper[c]['good']:11.1f} {paper[c]['bad']:6.1f} {paper[c]['skip']:6.1f}"
        lines.append(line)
    return "\n".join(lines)


# --- careless raters ----------------------------------------------------------------------------------------

# A rater is flagged for a look when, over at least MIN_COMPARED answers, they agree with the majority of
# the others less often than this; careful people on binary judgements of the paper's kind agree far more.
AGREEMENT_FLOOR = 0.7
MIN_COMPARED = 10
# Faster than this, three images per screen cannot have been looked at (the paper's raters: ~1 per 5 s).
MAX_ANSWERS_PER_MINUTE = 30.0
MAX_SKIP_RATE = 0.3
MIN_GOLD = 5  # gold answers (not skip) needed before gold accuracy flags a rater


def rater_quality(store: Store) -> dict[str, dict]:
    """Per labeler, the signs of careless rating that the admin view shows: {name: {...}}.

    - ``labels``: number of answers; ``skip_rate``: share of them that are skip (None without answers).
    - ``agreement``: share of their good/bad answers that equal the majority of the *other* labelers'
      good/bad answers on the same image (images where the others tie or said nothing are left out);
      ``compared``: how many answers that is. Leaving the rater out of the majority keeps a careless
      rater from agreeing with themself.
    - ``per_minute``: answers per minute, from the median time between consecutive answers (robust to
      breaks); None with fewer than two answers or when they all came at once (bulk or simulated).
    - ``gold_accuracy``: share of their good/bad answers on gold images that equal the known answer;
      ``gold``: how many answers that is (gold images are mixed into the queue, ``--gold-rate``).
    - ``excluded``: excluded from the training labels (``t2ialign label exclude``).
    - ``flags``: "low agreement", "low gold accuracy", "fast", "skips a lot" when the thresholds above are passed.
    """
    labelers, rows, gold = _rater_rows(store)
    gold_right: dict[int, list[bool]] = {}
    for lab, value, answer in gold:
        if value != "skip":
            gold_right.setdefault(lab, []).append(value == answer)
    by_image: dict[int, Counter] = {}
    for image_id, _, value, _ in rows:
        by_image.setdefault(image_id, Counter())[value] += 1
    answers: dict[int, list[tuple[int, str, object]]] = {i: [] for i in labelers}
    for image_id, lab, value, created in rows:
        answers.setdefault(lab, []).append((image_id, value, created))
    return {
        name: _rater_row(answers.get(lab, []), by_image, gold_right.get(lab, []), excluded)
        for lab, (name, excluded) in sorted(labelers.items(), key=lambda x: x[1][0])
    }


def _rater_rows(store: Store) -> tuple[dict[int, tuple[str, bool]], list, list]:
    """What :func:`rater_quality` reads: the labelers but the admin {id: (name, excluded)}; the labels of
    images with role human (image_id, labeler_id, value, created_at) by labeler and time; and every label
    of a gold image with its known answer (labeler_id, value, answer)."""
    with store.session() as s:
        labelers = {
            i: (name, excluded)
            for i, name, excluded in s.execute(
                select(LabelerRow.id, LabelerRow.name, LabelerRow.excluded).where(
                    LabelerRow.is_admin.is_(False)
                )
            )
        }
        rows = s.execute(
            select(LabelRow.image_id, LabelRow.labeler_id, LabelRow.value, LabelRow.created_at)
            .join(ImageRow, LabelRow.image_id == ImageRow.id)
            .where(ImageRow.role == "human")
            .order_by(LabelRow.labeler_id, LabelRow.created_at)
        ).all()
        gold = s.execute(
            select(LabelRow.labeler_id, LabelRow.value, GoldRow.answer).join(
                GoldRow, GoldRow.image_id == LabelRow.image_id
            )
        ).all()
    return labelers, rows, gold


def _agreement(mine: list[tuple[int, str, object]], by_image: dict[int, Counter]) -> tuple[int, int]:
    """(agree, compared): of a rater's good/bad answers, how many equal the majority of the *other*
    labelers' good/bad answers on the same image, and on how many images the others have a majority."""
    agree = compared = 0
    for image_id, value, _ in mine:
        if value == "skip":
            continue
        others = by_image[image_id].copy()
        others[value] -= 1
        if others["good"] != others["bad"]:
            compared += 1
            agree += value == ("good" if others["good"] > others["bad"] else "bad")
    return agree, compared


def _rater_row(
    mine: list[tuple[int, str, object]], by_image: dict[int, Counter], gold_right: list[bool], excluded
) -> dict:
    """One rater's row of :func:`rater_quality` from their answers (image_id, value, created_at) in time
    order, every image's answers, and whether each of their gold answers was right."""
    n = len(mine)
    skips = sum(v == "skip" for _, v, _ in mine)
    agree, compared = _agreement(mine, by_image)
    gaps = sorted((b[2] - a[2]).total_seconds() for a, b in zip(mine, mine[1:], strict=False))
    median_gap = gaps[len(gaps) // 2] if gaps else 0.0
    row = {
        "labels": n,
        "skip_rate": round(skips / n, 4) if n else None,
        "agreement": round(agree / compared, 4) if compared else None,
        "compared": compared,
        "per_minute": round(60.0 / median_gap, 2) if median_gap > 0 else None,
        "gold_accuracy": round(sum(gold_right) / len(gold_right), 4) if gold_right else None,
        "gold": len(gold_right),
        "excluded": bool(excluded),
    }
    flags = []
    if compared >= MIN_COMPARED and row["agreement"] < AGREEMENT_FLOOR:
        flags.append("low agreement")
    if row["gold"] >= MIN_GOLD and row["gold_accuracy"] < AGREEMENT_FLOOR:
        flags.append("low gold accuracy")
    if row["per_minute"] is not None and row["per_minute"] > MAX_ANSWERS_PER_MINUTE:
        flags.append("fast")
    if n >= MIN_COMPARED and skips / n > MAX_SKIP_RATE:
        flags.append("skips a lot")
    row["flags"] = flags
    return row
