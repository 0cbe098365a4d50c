"""The one code path by which any label enters a run: the web app's handlers call :func:`submit_label`,
the simulated labelers :func:`submit_labels` (the same validation and the same upsert, many at once), so
simulated feedback is stored exactly as people's is. Side-by-side votes likewise: :func:`submit_vote`
for the web app, :func:`submit_votes` for the simulated raters.

Votes enter with answers as the rater saw them (A / B / tie); the store translates them to the model they
prefer in the transaction that writes them. A vote is final; a resend of it changes nothing. A query
takes at most its comparison's ``raters_per_query`` votes, from distinct raters."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from t2ialign.store import LABEL_VALUES, Store


def submit_label(store: Store, labeler_id: int, image_id: int, value: str) -> None:
    """Record (or replace) this labeler's label of this image; committed when this returns.

    One label per (image, labeler): a resend of the same answer changes nothing, a new answer replaces
    the old one. Raises ValueError for an unknown image or labeler or a value outside good/bad/skip.
    """
    submit_labels(store, [(labeler_id, image_id, value)])


def submit_leased_label(
    store: Store, labeler_id: int, image_id: int, value: str, k: int, now: datetime
) -> None:
    """:func:`submit_label` for the web app: accepted only as an answer to an image leased to this labeler
    (active at ``now``) with fewer than ``k`` labels, or as a change of their own earlier answer; else
    ``store.NotLeased`` and nothing is written. Labelers cannot choose what they label."""
    if value not in LABEL_VALUES:
        raise ValueError(f"label must be one of {', '.join(LABEL_VALUES)}, got {value!r}")
    store.set_labels([(image_id, labeler_id, value)], leased_at=now, k=k)


def submit_labels(store: Store, labels: list[tuple[int, int, str]]) -> None:
    """Many (labeler_id, image_id, value) at once, in one transaction: all are written or none."""
    for _, _, value in labels:
        if value not in LABEL_VALUES:
            raise ValueError(f"label must be one of {', '.join(LABEL_VALUES)}, got {value!r}")
    store.set_labels([(image_id, labeler_id, value) for labeler_id, image_id, value in labels])


# --- side-by-side votes (paper Sec. 4.2) -------------------------------------------------------------------


def submit_vote(
    store: Store,
    labeler_id: int,
    query_id: int,
    alignment: str,
    fidelity: str,
    leased_at: datetime | None = None,
) -> str:
    """Record one rater's vote on one query, answers as shown (A, B or tie); committed when this returns.

    Returns "new", or "unchanged" for a resend of the same vote. Raises ``store.VoteConflict`` when the
    rater voted otherwise before (a vote is final) or the query has all its votes, ValueError for an
    unknown query or rater or an answer outside A / B / tie. With ``leased_at`` (the web app), a new vote
    needs the query leased to the rater at that time (``store.NotLeased``, a VoteConflict, otherwise).
    """
    counts = store.add_votes([(query_id, labeler_id, alignment, fidelity)], leased_at=leased_at)
    return "new" if counts["new"] else "unchanged"


def submit_votes(store: Store, votes: Iterable[tuple[int, int, str, str]]) -> dict[str, int]:
    """Many (labeler_id, query_id, alignment, fidelity) at once, in one transaction: all or none."""
    return store.add_votes([(q, lab, a, f) for lab, q, a, f in votes])
