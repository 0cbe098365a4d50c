"""Which images a labeler sees next: three images of one prompt per screen, as in the paper (Sec. 4.1).

Each image should get ``k`` labels from distinct labelers. An image is *taken* by a labeler who labeled it
or holds an active lease on it; a screen leases its images to the labeler for ``lease_seconds``, so k
labelers working at once are sent to different places, and an image someone walked away from is free again
when the lease expires. The policy is the pure function :func:`pick_screen`; the store reads the states and
writes the leases in one serialized transaction (``Store.assign_images``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from t2ialign.store import ImageState, Store

PER_SCREEN = 3


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
