"""Simulated pairwise raters (issue 17): the world judge decides which image of a pair matches its prompt
better, with ties and flip noise, as ``simulate`` does for binary labels.

Each simulated rater ``sim-i`` reads the judge's P(match) of both images of a pair (``oracle.judge_stored``),
answers "tie" when the two are within ``tie_margin`` of each other, else prefers the image with the higher
P(match), and flips A <-> B with probability ``noise`` (a tie stays a tie). The draw is seeded by (seed,
rater, the pair's two sha256s): the same settings give the same answers, and a rerun changes nothing.
Answers go through ``Store.add_preferences``, the store path of the app's answers (without a lease).
"""

from __future__ import annotations

import random

from tqdm.auto import tqdm

from t2ialign.label.oracle import judge_stored
from t2ialign.label.simulate import simulated_labelers
from t2ialign.label.stats_pairs import preference_summary
from t2ialign.store import APP_SOURCE, Store, check_source
from t2ialign.world.judge import Judge

WRITE_CHUNK = 1000  # answers per transaction
JUDGE_CHUNK = 1024  # images judged per step


def simulated_choice(
    p_a: float, p_b: float, noise: float, tie_margin: float, seed: int, rater: str, pair: tuple[str, str]
) -> str:
    """One simulated rater's answer to a pair (A: image_a better, B, tie), given the judge's P(match) of
    its images ``p_a`` and ``p_b``: tie when ``|p_a - p_b| <= tie_margin``, else the higher one, flipped
    when a uniform draw seeded by (seed, rater, pair sha256s) is below ``noise`` (drawn for ties too, so
    changing the margin never reshuffles the flips)."""
    rng = random.Random(f"pairs:{seed}:{rater}:{pair[0]}:{pair[1]}")  # str seeds: SHA-512, stable
    flip = rng.random() < noise
    if abs(p_a - p_b) <= tie_margin:
        return "tie"
    better = "A" if p_a > p_b else "B"
    return {"A": "B", "B": "A"}[better] if flip else better


def _check_settings(n_raters, noise, tie_margin) -> None:
    if not isinstance(n_raters, int) or isinstance(n_raters, bool) or n_raters < 1:
        raise ValueError(f"n_raters must be an integer >= 1, got {n_raters!r}")
    if not isinstance(noise, int | float) or isinstance(noise, bool) or not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must be a probability in [0, 0.5], got {noise!r}")
    if not isinstance(tie_margin, int | float) or isinstance(tie_margin, bool) or not 0.0 <= tie_margin < 1.0:
        raise ValueError(f"tie_margin must be in [0, 1), got {tie_margin!r}")


def _p_match(store: Store, pairs: list[dict], judge: Judge, progress: bool) -> dict[str, float]:
    """{sha256: the judge's P(match) against its prompt} of every image of these pairs, each judged once."""
    rows = {}
    for p in pairs:
        for side in ("a", "b"):
            sha = p[f"image_{side}"]
            rows[sha] = {"id": p[f"image_{side}_id"], "sha256": sha, "prompt": p["prompt"]}
    images = list(rows.values())
    missing = [r["sha256"] for r in images if not store.image_path(r["sha256"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image file(s) of the pairs are missing, e.g. {missing[0]}")
    by_id = {r["id"]: r["sha256"] for r in images}
    out: dict[str, float] = {}
    for i in tqdm(range(0, len(images), JUDGE_CHUNK), desc="judge", unit="chunk", disable=not progress):
        for j in judge_stored(store, images[i : i + JUDGE_CHUNK], judge):
            out[by_id[j["image_id"]]] = float(j["p_match"])
    return out


def simulate_pairs(
    store: Store,
    n_raters: int = 3,
    noise: float = 0.1,
    tie_margin: float = 0.05,
    seed: int = 0,
    judge: Judge | None = None,
    source: str = APP_SOURCE,
    progress: bool = True,
) -> dict:
    """Answer every pair of ``source`` by ``n_raters`` simulated raters (:func:`simulated_choice`).

    Judges each image once (``Judge.load()`` by default) and writes the answers with
    ``Store.add_preferences``, a thousand per transaction. Returns the settings, the pairs, the raters,
    counts of new / replaced / unchanged answers, and ``stats_pairs.preference_summary``.
    """
    _check_settings(n_raters, noise, tie_margin)
    check_source(source)
    pairs = store.preference_pairs(source=source)
    if not pairs:
        raise ValueError(
            f"no pairs of source {source!r} in {store.run_dir}: run `t2ialign label pairs create`"
        )
    raters = simulated_labelers(store, n_raters)
    p = _p_match(store, pairs, judge if judge is not None else Judge.load(), progress)
    answers = [
        (
            pair["id"],
            rater_id,
            simulated_choice(
                p[pair["image_a"]],
                p[pair["image_b"]],
                noise,
                tie_margin,
                seed,
                name,
                (pair["image_a"], pair["image_b"]),
            ),
        )
        for name, rater_id in raters.items()
        for pair in pairs
    ]
    counts = {"new": 0, "replaced": 0, "unchanged": 0}
    for i in tqdm(range(0, len(answers), WRITE_CHUNK), desc="answer", unit="chunk", disable=not progress):
        for key, n in store.add_preferences(answers[i : i + WRITE_CHUNK]).items():
            counts[key] += n
    settings = {
        "n_raters": n_raters,
        "noise": noise,
        "tie_margin": tie_margin,
        "seed": seed,
        "source": source,
    }
    return {
        "settings": settings,
        "pairs": len(pairs),
        "raters": list(raters),
        "answers": counts,
        "summary": preference_summary(store),
    }
