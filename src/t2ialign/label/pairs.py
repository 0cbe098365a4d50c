"""Pairwise feedback (issue 17): raters see two images of one prompt, A and B, and answer A, B or tie.

The mirror of single-image labeling on the same lease rule (``store.leases``, Work ``PAIRS``): each pair
wants ``k`` answers from distinct raters; a pair is leased to the rater it is handed to, an answer needs
that lease (or changes the rater's own earlier answer), and no pair gets more than k answers.

Which stored image (the pair's image_a, image_b) a rater sees on the left as "A" is drawn per (pair,
rater) by :func:`shown_swapped`, so a preference for the left side cancels out over raters; the answer as
shown is translated back to the stored one (:func:`to_stored`) by the server, never by the page.
:func:`create_pairs` makes the pairs of a run's generated images; ``simulate_pairs`` answers them from
the world judge, ``stats_pairs`` measures agreement and ``export_pairs`` exports them.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from t2ialign.label.simulate import GOLD_MODEL_ID
from t2ialign.store import APP_SOURCE, ROLES, PairState, Store

ANSWERS: tuple[str, ...] = ("A", "B", "tie")  # as shown to the rater
SWAP = {"A": "B", "B": "A", "tie": "tie"}


# --- making pairs ------------------------------------------------------------------------------------------


def pairs_of(shas: list[str], per_prompt: int | None, seed: int, prompt: str) -> list[tuple[str, str]]:
    """Up to ``per_prompt`` (None: all) distinct unordered pairs of these images of one prompt, drawn by
    an rng seeded by (seed, prompt): the same images and seed give the same pairs, in any input order."""
    combos = list(itertools.combinations(sorted(set(shas)), 2))
    random.Random(f"pairs:{seed}:{prompt}").shuffle(combos)  # str seeds hash with SHA-512: stable
    return combos if per_prompt is None else combos[:per_prompt]


def create_pairs(
    store: Store, per_prompt: int | None = None, role: str = "human", seed: int = 0
) -> dict[str, int]:
    """Make preference pairs (source "app") of the run's generated images of ``role``: for each prompt,
    up to ``per_prompt`` pairs of two of its images (:func:`pairs_of`; None: every pair). Gold images are
    left out. Pairs already in the run stay as they are, so a rerun adds nothing. Returns counts:
    prompts (with at least two images), pairs (made or found), new."""
    if role not in ROLES:
        raise ValueError(f"unknown image role {role!r}; known: {', '.join(ROLES)}")
    if per_prompt is not None and (
        not isinstance(per_prompt, int) or isinstance(per_prompt, bool) or per_prompt < 1
    ):
        raise ValueError(f"per_prompt must be an integer >= 1 or None, got {per_prompt!r}")
    by_prompt: dict[str, list[str]] = {}
    for im in store.list_images(role=role):
        if im["model_id"] != GOLD_MODEL_ID:
            by_prompt.setdefault(im["prompt"], []).append(im["sha256"])
    if not by_prompt:
        raise ValueError(f"no images of role {role!r} in {store.run_dir}: run `t2ialign generate` first")
    wanted = [
        (prompt, x, y)
        for prompt in sorted(by_prompt)
        for x, y in pairs_of(by_prompt[prompt], per_prompt, seed, prompt)
    ]
    if not wanted:
        raise ValueError(f"no prompt has two images of role {role!r}: a pair needs two")
    before = len(store.preference_pairs(source=APP_SOURCE))
    ids = store.add_pairs(wanted, source=APP_SOURCE)
    after = len(store.preference_pairs(source=APP_SOURCE))
    return {
        "prompts": sum(len(set(v)) >= 2 for v in by_prompt.values()),
        "pairs": len(set(ids)),
        "new": after - before,
    }


# --- what a rater sees ---------------------------------------------------------------------------------------


def shown_swapped(pair_id: int, labeler_id: int) -> bool:
    """Whether this rater sees the pair's image_b as "A" (on the left): a fair coin seeded by (pair,
    rater), the same on every request, so the page and the answer agree without the page being told."""
    return random.Random(f"pair-side:{pair_id}:{labeler_id}").random() < 0.5


def to_stored(answer: str, swapped: bool) -> str:
    """The stored choice (A: image_a better, B: image_b, tie) of an answer as shown."""
    if answer not in ANSWERS:
        raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}")
    return SWAP[answer] if swapped else answer


def needs_answer_from(state: PairState, k: int) -> bool:
    """True if this rater may be given the pair: not answered or leased by them, and fewer than k other
    raters have taken it (``assignment.needs_label_from`` for pairs)."""
    return state.mine is None and state.n_answers + state.n_leased < k


def pick_pair(states: list[PairState], k: int) -> list[int]:
    """The rater's next pair (a list of at most one id): the pair they hold a lease on and have not
    answered (a reload shows it again); else, among the pairs that need an answer from them, the one
    taken most already, so that pairs reach k answers one after another; ties by pair id."""
    resume = [s.pair_id for s in states if s.mine == "leased"]
    if resume:
        return [min(resume)]
    open_ = [s for s in states if needs_answer_from(s, k)]
    if not open_:
        return []
    return [min(open_, key=lambda s: (-(s.n_answers + s.n_leased), s.pair_id)).pair_id]


def next_pair(
    store: Store, labeler_id: int, k: int, lease_seconds: float, now: datetime | None = None
) -> dict[str, Any] | None:
    """Lease the rater's next pair and describe it as they see it, or None when nothing is left:
    ``{"id", "prompt", "A": image URL, "B": image URL}`` (sides by :func:`shown_swapped`)."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=lease_seconds)
    ids = store.assign_pairs(labeler_id, now, expires, partial(pick_pair, k=k))
    if not ids:
        return None
    (pair,) = store.preference_pairs(pair_ids=ids)
    left, right = pair["image_a"], pair["image_b"]
    if shown_swapped(pair["id"], labeler_id):
        left, right = right, left
    return {
        "id": pair["id"],
        "prompt": pair["prompt"],
        "A": f"/images/{left}.png",
        "B": f"/images/{right}.png",
    }


def submit_pair_answer(
    store: Store, labeler_id: int, pair_id: int, answer: str, k: int, now: datetime
) -> str:
    """Record a rater's answer to a pair as shown (A, B or tie), for the web app: accepted only for a pair
    leased to them (active at ``now``) with fewer than ``k`` answers, or as a change of their own earlier
    answer; else ``store.NotLeased``. Returns "new", "replaced" or "unchanged"; committed when it returns."""
    choice = to_stored(answer, shown_swapped(pair_id, labeler_id))
    counts = store.add_preferences([(pair_id, labeler_id, choice)], leased_at=now, k=k)
    return next(name for name, n in counts.items() if n)
