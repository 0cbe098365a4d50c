"""The one code path by which any label enters a run: the web app's handlers and the simulated labelers
both call :func:`submit_label`, so simulated feedback is stored exactly as people's is."""

from __future__ import annotations

from ..store import LABEL_VALUES, Store


def submit_label(store: Store, labeler_id: int, image_id: int, value: str) -> None:
    """Record (or replace) this labeler's label of this image; committed when this returns.

    One label per (image, labeler): a resend of the same answer changes nothing, a new answer replaces
    the old one. Raises ValueError for an unknown image or labeler or a value outside good/bad/skip.
    """
    if value not in LABEL_VALUES:
        raise ValueError(f"label must be one of {', '.join(LABEL_VALUES)}, got {value!r}")
    store.set_label(image_id, labeler_id, value)
