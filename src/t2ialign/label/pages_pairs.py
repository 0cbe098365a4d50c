"""The labeling app's page of pairwise feedback (``/pairs``), rendered from ``templates/pairs.html`` through
``core.html``'s Jinja2 environment (autoescaping on), as ``pages`` renders the other pages."""

from __future__ import annotations

from typing import Any

from t2ialign.core.html import render
from t2ialign.label.auth import Account
from t2ialign.label.pages import TEMPLATES


def pairs_page(
    account: Account, pair: dict[str, Any] | None, progress: dict[str, int], k: int, nonce: str
) -> str:
    """One pair: the prompt and its two images as ``pairs.next_pair`` describes them (A, B as shown), with
    A / B / tie; or a thank-you when nothing is left. ``progress``: ``Store.pairs_progress``."""
    line = (
        f"you: {progress['mine']} answers · run: {progress['complete']} of {progress['pairs']} pairs "
        f"have {k} answers"
    )
    title = "Done · t2ialign" if pair is None else "Which is better? · t2ialign"
    if pair is not None:
        pair = {**pair, "id": int(pair["id"])}
    return render(TEMPLATES, "pairs.html", title=title, account=account, nonce=nonce, line=line, pair=pair)
