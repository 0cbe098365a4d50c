"""Side-by-side human evaluation, as in the paper's Sec. 4.2 and Fig. 3.

Two models each make a set of images for the same prompt. A rater sees the two sets under the anonymous
names A and B and says which is better, or that they are alike (tie), on two questions: image-text
**alignment** and image **fidelity** (quality). Each query is answered by nine raters; Fig. 3 shows, for
"<first> vs <second>", the share of queries that got v = 0..9 votes for the first model (the *positive*
votes) and boxes the share with at least 7.

Voting is built as the mirror of single-image labeling, in the modules beside the labels':

- ``comparisons``: a *comparison* (:func:`create_comparison`) holds one query per prompt. Which model's
  set is shown as A is drawn per query from the seed, balanced (half the queries each way) so that a
  rater's preference for the top row cancels out, and recorded; the order of the queries is shuffled too.
  Raters never see the models' names, nor the comparison's.
- ``assignment``: :func:`next_query` leases a rater their next query (:func:`pick_query`), as
  ``next_screen`` leases images; the store's one lease/quota query (``store.leases``) serves both.
- ``service``: votes enter by :func:`submit_vote` / :func:`submit_votes` (the web app's path and the
  simulated raters' alike), answers as the rater saw them (A / B / tie); the store translates them to the
  model they prefer in the transaction that writes them. A vote is final; a resend of it changes nothing.
  A query takes at most its comparison's ``raters_per_query`` votes, from distinct raters.
- ``stats_votes``: :func:`tally` gives Fig. 3's histograms (``stats`` gives Table 1); :func:`plot_fig3`
  here draws them.
- ``simulate_votes``: :func:`simulate_votes` has simulated raters vote, from the world judge (``simulate``
  has simulated labelers); its docstring says how they decide.

This module gathers them: import any of the above from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2ialign.label.assignment import DEFAULT_LEASE_SECONDS, needs_vote_from, next_query, pick_query
from t2ialign.label.comparisons import (
    ANSWERS,
    DEFAULT_RATERS,
    QUESTIONS,
    check_comparison_name,
    create_comparison,
    get_comparison,
    sets_from_evaluate,
    shown_order,
)
from t2ialign.label.service import submit_vote, submit_votes
from t2ialign.label.simulate_votes import (
    FIDELITY_BLOCKS,
    FIDELITY_REFERENCES,
    WRITE_CHUNK,
    ImageEvidence,
    query_evidence,
    render_distance,
    simulate_votes,
    simulated_vote,
)
from t2ialign.label.stats_votes import format_tally, tally, tally_votes, two_thirds_threshold

__all__ = [
    "ANSWERS",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_RATERS",
    "FIDELITY_BLOCKS",
    "FIDELITY_REFERENCES",
    "QUESTIONS",
    "WRITE_CHUNK",
    "ImageEvidence",
    "check_comparison_name",
    "create_comparison",
    "format_tally",
    "get_comparison",
    "needs_vote_from",
    "next_query",
    "pick_query",
    "plot_fig3",
    "query_evidence",
    "render_distance",
    "sets_from_evaluate",
    "shown_order",
    "simulate_votes",
    "simulated_vote",
    "submit_vote",
    "submit_votes",
    "tally",
    "tally_votes",
    "two_thirds_threshold",
]


def plot_fig3(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The paper's Fig. 3 for one comparison: for alignment and for fidelity, the % of queries by the
    number of votes for the first model (0..n), the bars at or above the threshold in a black box with
    their total share. Written as PNG to ``path``."""
    from t2ialign.core import figures  # here: matplotlib loads only when drawing

    return figures.write_png(figures.fig3(result, title), path)
