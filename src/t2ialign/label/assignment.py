"""Which images a labeler sees next: three images of one prompt per screen, as in the paper (Sec. 4.1);
and which side-by-side query a rater sees next (Sec. 4.2), by the same rule.

Each image should get ``k`` labels from distinct labelers (a query: its comparison's raters_per_query
votes). An image is *taken* by a labeler who labeled it
or holds an active lease on it; a screen leases its images to the labeler for ``lease_seconds``, so k
labelers working at once are sent to different places, and an image someone walked away from is free again
when the lease expires. The policy is the pure function :func:`pick_screen`; the store reads the states and
writes the leases in one serialized transaction (``Store.assign_images``; ``store.leases`` holds the
rule both kinds of work share). :func:`pick_query` and :func:`next_query` are the same for queries, one
per screen (``Store.assign_query``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from t2ialign.store import ImageState, QueryState, Store

PER_SCREEN = 3
DEFAULT_LEASE_SECONDS = 15 * 60  # of a side-by-side query


def needs_label_from(state: ImageState, k: int) -> bool:
    """True if this labeler may be given the image: not labeled or leased by them, and fewer than k other
    labelers have taken it."""
    return state.mine is None and state.n_labels + state.n_leased < k


def pick_screen(states: list[ImageState], k: int, per_screen: int = PER_SCREEN) -> list[int]:
    """Image ids for the labeler's next screen: up to ``per_screen`` images of one prompt.

    First the images the labeler holds a lease on and has not answered (a reload or an undo shows the same
    screen again). Otherwise the prompt of the needing image with the most labels and leases already, so
    that images reach k labels one after another rather than all at the end; ties by prompt and image id.
    """
    resume = [s for s in states if s.mine == "leased"]
    if resume:
        prompt_id = min(resume, key=lambda s: s.image_id).prompt_id
        return sorted(s.image_id for s in resume if s.prompt_id == prompt_id)[:per_screen]
    open_ = [s for s in states if needs_label_from(s, k)]
    if not open_:
        return []
    open_.sort(key=lambda s: (-(s.n_labels + s.n_leased), s.prompt_id, s.image_id))
    prompt_id = open_[0].prompt_id
    return [s.image_id for s in open_ if s.prompt_id == prompt_id][:per_screen]


def gold_turn(labeler_id: int, n_answers: int, gold_rate: float) -> bool:
    """Whether the labeler's next screen is a gold one: a draw seeded by (labeler, answers so far), so a
    reload before answering gives the same screen again, and about ``gold_rate`` of screens are gold."""
    if gold_rate <= 0:
        return False
    return random.Random(f"gold:{labeler_id}:{n_answers}").random() < gold_rate


def next_screen(
    store: Store,
    labeler_id: int,
    k: int,
    lease_seconds: float,
    now: datetime | None = None,
    gold_rate: float = 0.0,
) -> dict[str, Any]:
    """Lease the labeler's next screen and describe it: ``{"prompt": {...} or None, "images": [...]}``.

    With ``gold_rate`` > 0, about that share of screens are gold images (known answers, see
    ``store.GoldRow``) that this labeler has not answered yet, looking like any other screen; every
    labeler may answer each gold image (no k). When none is left, the screen is an ordinary one.
    """
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=lease_seconds)
    ids: list[int] = []
    if gold_turn(labeler_id, store.answer_count(labeler_id), gold_rate):
        ids = store.assign_images(labeler_id, now, expires, partial(pick_screen, k=10**9), gold=True)
    if not ids:
        choose: Callable[[list[ImageState]], list[int]] = partial(pick_screen, k=k)
        ids = store.assign_images(labeler_id, now, expires, choose)
    images = store.images_by_id(ids)
    if not images:
        return {"prompt": None, "images": []}
    first = images[0]
    return {
        "prompt": {"id": first["prompt_id"], "text": first["prompt"], "category": first["category"]},
        "images": [
            {"id": im["id"], "sha256": im["sha256"], "url": f"/images/{im['sha256']}.png"} for im in images
        ],
    }


# --- side-by-side queries (paper Sec. 4.2) ---------------------------------------------------------------


def needs_vote_from(state: QueryState) -> bool:
    """True if this rater may be given the query: not voted on or leased by them, and fewer than the
    wanted number of other raters have taken it (:func:`needs_label_from` for queries)."""
    return state.mine is None and state.n_votes + state.n_leased < state.wanted


def pick_query(states: list[QueryState]) -> list[int]:
    """The rater's next query (a list of at most one id): the query they hold a lease on and have not
    answered (a reload shows it again); else, among the queries that need a vote from them (not theirs,
    fewer than ``wanted`` other raters have taken it), the one taken most already, so that queries are
    completed one after another; ties by query id (the comparison's shuffled order)."""
    resume = [s.query_id for s in states if s.mine == "leased"]
    if resume:
        return [min(resume)]
    open_ = [s for s in states if needs_vote_from(s)]
    if not open_:
        return []
    return [min(open_, key=lambda s: (-(s.n_votes + s.n_leased), s.query_id)).query_id]


def next_query(
    store: Store, labeler_id: int, lease_seconds: float = DEFAULT_LEASE_SECONDS, now: datetime | None = None
) -> dict[str, Any] | None:
    """Lease the rater's next query and describe it as they may see it, or None when nothing is left:
    ``{"id", "prompt", "A": [image URL, ...], "B": [...]}``. Nothing says which model made which set."""
    now = now or datetime.now(UTC)
    ids = store.assign_query(labeler_id, now, now + timedelta(seconds=lease_seconds), pick_query)
    if not ids:
        return None
    (q,) = store.comparison_queries(query_ids=ids)
    other = "B" if q["first_shown_as"] == "A" else "A"
    urls = {
        side: [f"/images/{sha}.png" for sha in q[model]]
        for side, model in ((q["first_shown_as"], "first"), (other, "second"))
    }
    return {"id": q["id"], "prompt": q["prompt"], "A": urls["A"], "B": urls["B"]}
