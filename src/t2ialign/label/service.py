"""The one code path by which any label enters a run: the web app's handlers call :func:`submit_label`,
the simulated labelers :func:`submit_labels` (the same validation and the same upsert, many at once), so
simulated feedback is stored exactly as people's is."""

from __future__ import annotations

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
