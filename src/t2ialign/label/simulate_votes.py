"""Simulated side-by-side raters (paper Sec. 4.2, Fig. 3), as ``simulate.py`` has simulated labelers:
world only, from the world judge; votes go through ``service.submit_votes``, the web app's path.

The simulated raters see, for each image:

- *alignment*: whether it shows the prompt. The rater takes the image as aligned with probability the
  judge's P(match) (so an image the judge is unsure of splits raters), then flips that with probability
  ``noise``; the set with more aligned images wins, equal counts are a tie.
- *fidelity*: its :func:`render_distance`, how far the image's low-level statistics are from clean renders
  *of what the image shows* (the judge's own reading of it, not the prompt: a crisp render of the wrong
  prompt has perfect fidelity). The rater perceives log(distance) plus Gaussian noise of sd
  ``fidelity_noise``; the set with the lower mean wins unless the means differ by at most ``tie_margin``
  (a tie). Median distances on renders of 40 prompts: clean 0.9, blurred (sigma 1) 1.5, JPEG q30 2.5,
  noise (sd 5%) 3.3, the judge's validation degradations 5.1, uniform noise 9.4.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from t2ialign.label.comparisons import get_comparison
from t2ialign.label.service import submit_votes
from t2ialign.store import Store, VoteConflict, shown_to_choice

WRITE_CHUNK = 1000  # votes per transaction when simulating
JUDGE_QUERIES = 64  # queries of up to 2 x 16 images per judge batch


@dataclass(frozen=True)
class ImageEvidence:
    """What a simulated rater sees of one image: the judge's P(match) with the prompt and the image's
    :func:`render_distance`."""

    sha256: str
    p_match: float
    render_distance: float


# Fidelity features: channel mean and std after the judge's first three conv blocks (full, 1/2, 1/2 size).
FIDELITY_BLOCKS = 3
FIDELITY_REFERENCES = 8  # clean renders per reading


def render_distance(judge, images, references: int = FIDELITY_REFERENCES) -> list[float]:
    """How far each image is from clean renders of what it shows: an image-quality proxy of the world.

    The judge reads each image's count, colour, shape and background (its most likely values); the
    renderer draws ``references`` clean images of that reading (fixed seeds; ``render_scene``, so an empty
    reading gets empty references and a "6+" reading six shapes). Features are the channel
    means and standard deviations of the judge's first conv blocks, statistics of edges and textures that
    blur, noise, compression and smeared shapes move. The distance is the RMS over features of
    (feature - references' mean) / references' std: about 1 for a clean render, more for worse images. It
    ignores the prompt, so alignment does not leak into fidelity. (The judge's confidence alone is no
    proxy: its mean top probability is 0.97 on clean renders and still 0.89 on uniform noise.)
    """
    import torch

    from t2ialign.world import vocab
    from t2ialign.world.judge import HEAD_VALUES, to_batch
    from t2ialign.world.render import Scene, render_scene

    net = judge.net

    @torch.no_grad()
    def features(batch) -> torch.Tensor:  # -> (N, 2 * sum of the blocks' channels)
        h, out, blocks = (to_batch(batch, judge.config.size) - 0.5) / 0.25, [], 0
        for layer in net.features:
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                out += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
                blocks += 1
                if blocks == FIDELITY_BLOCKS:
                    break
        return torch.cat(out, dim=1).double()

    probs = judge.read(images)
    feats = features(images)
    refs: dict[Scene, tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for i in range(len(feats)):
        # count class 6 ("six or more") is drawn as six shapes
        reading = Scene(
            **{kind: HEAD_VALUES[kind][int(probs[kind][i].argmax())] for kind in vocab.ATTRIBUTES}
        )
        if reading not in refs:
            renders = [
                render_scene(reading, seed=1_000_000 + k, size=judge.config.size).image
                for k in range(references)
            ]
            f = features(renders)
            refs[reading] = (f.mean(dim=0), f.std(dim=0) + 1e-3)
        mu, sd = refs[reading]
        out.append(float((((feats[i] - mu) / sd) ** 2).mean().sqrt()))
    return out


def simulated_vote(
    a: Sequence[ImageEvidence],
    b: Sequence[ImageEvidence],
    rater: str,
    seed: int,
    noise: float,
    fidelity_noise: float,
    tie_margin: float,
) -> tuple[str, str]:
    """One simulated rater's (alignment, fidelity) answer, A / B / tie, on sets a (shown as A) and b.

    Per image three draws from an rng seeded by (seed, rater, sha256), so a rater sees an image the same
    way in every query and comparison: u < P(match) makes it aligned, a second u < noise flips that, and
    a normal draw is the rater's error on log(render distance). See the module docstring.
    """
    perceived = {}
    for side, images in (("A", a), ("B", b)):
        aligned, quality = 0, 0.0
        for im in images:
            rng = random.Random(f"{seed}:{rater}:{im.sha256}")
            u_match, u_flip, z = rng.random(), rng.random(), rng.gauss(0.0, 1.0)
            aligned += (u_match < im.p_match) != (u_flip < noise)
            quality += math.log(max(im.render_distance, 1e-6)) + fidelity_noise * z
        perceived[side] = (aligned, quality / len(images))
    (align_a, dist_a), (align_b, dist_b) = perceived["A"], perceived["B"]
    alignment = "tie" if align_a == align_b else "A" if align_a > align_b else "B"
    fidelity = "tie" if abs(dist_a - dist_b) <= tie_margin else "A" if dist_a < dist_b else "B"
    return alignment, fidelity


def _check_rates(noise, fidelity_noise, tie_margin) -> None:
    if not isinstance(noise, int | float) or isinstance(noise, bool) or not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must be a probability in [0, 0.5], got {noise!r}")
    for name, value in (("fidelity_noise", fidelity_noise), ("tie_margin", tie_margin)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 10.0:
            raise ValueError(f"{name} must be a number in [0, 10], got {value!r}")


def simulate_votes(
    store: Store,
    name: str,
    judge=None,
    n_raters: int | None = None,
    noise: float = 0.1,
    fidelity_noise: float = 0.25,
    tie_margin: float = 0.15,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulated raters ``sim-1`` .. ``sim-n`` vote on every query of a comparison (see the module
    docstring for how they decide), through ``service.submit_votes``, the web app's path.

    ``n_raters`` defaults to the comparison's raters_per_query. Raters vote in order on each query until
    it has the votes it wants, so people's votes are kept and the simulation completes the rest. A rerun
    with the same settings changes nothing; with other settings it conflicts (votes are final): make a new
    comparison. Returns the settings and counts of new and unchanged votes and of queries already full.
    """
    from t2ialign.label.simulate import simulated_labelers
    from t2ialign.world.judge import Judge

    comparison = get_comparison(store, name)
    wanted = comparison["raters_per_query"]
    n_raters = wanted if n_raters is None else n_raters
    if not isinstance(n_raters, int) or isinstance(n_raters, bool) or not 1 <= n_raters <= wanted:
        raise ValueError(f"n_raters must be an integer in [1, {wanted}] (the comparison's raters per query)")
    _check_rates(noise, fidelity_noise, tie_margin)
    queries = store.comparison_queries(comparison["id"])
    missing = [
        sha for q in queries for sha in (*q["first"], *q["second"]) if not store.image_path(sha).is_file()
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} image file(s) are missing from {store.images_dir}, e.g. {missing[0]}"
        )
    raters = simulated_labelers(store, n_raters)
    evidence = query_evidence(store, queries, judge if judge is not None else Judge.load())
    vote = partial(
        simulated_vote, seed=seed, noise=noise, fidelity_noise=fidelity_noise, tie_margin=tie_margin
    )
    votes, full = _planned_votes(store, comparison, queries, evidence, raters, vote)
    counts = {"new": 0, "unchanged": 0}
    for i in range(0, len(votes), WRITE_CHUNK):
        for k, n in submit_votes(store, votes[i : i + WRITE_CHUNK]).items():
            counts[k] += n
    return {
        "comparison": name,
        "settings": {
            "n_raters": n_raters,
            "noise": noise,
            "fidelity_noise": fidelity_noise,
            "tie_margin": tie_margin,
            "seed": seed,
        },
        "queries": len(queries),
        "votes": counts,
        "left_out_full": full,
    }


def query_evidence(store: Store, queries: list[dict], judge) -> dict[tuple[int, str], ImageEvidence]:
    """What the raters see of every image of these queries, (query id, sha256) -> :class:`ImageEvidence`:
    the judge's P(match) with the query's prompt and the image's :func:`render_distance`."""

    from t2ialign.store import IMPORTED_SPLIT
    from t2ialign.world.prompts import spec_of

    # imported captions (no shape) have no spec: the judge reads the world's prompts only
    specs = {p["text"]: spec_of(p) for p in store.list_prompts() if p["split"] != IMPORTED_SPLIT}
    foreign = next((q["prompt"] for q in queries if q["prompt"] not in specs), None)
    if foreign is not None:
        raise ValueError(f"a query is of the imported caption {foreign!r}: the world judge cannot read it")
    evidence: dict[tuple[int, str], ImageEvidence] = {}
    for i in range(0, len(queries), JUDGE_QUERIES):
        chunk = queries[i : i + JUDGE_QUERIES]
        keys = [(q["id"], sha) for q in chunk for sha in (*q["first"], *q["second"])]
        prompts = [specs[q["prompt"]] for q in chunk for _ in (*q["first"], *q["second"])]
        pixels = [store.image_array(sha) for _, sha in keys]
        verdicts = judge.judge(pixels, prompts)
        distances = render_distance(judge, pixels)
        for key, v, d in zip(keys, verdicts, distances, strict=True):
            evidence[key] = ImageEvidence(key[1], v.p_match, d)
    return evidence


def _planned_votes(
    store: Store,
    comparison: dict[str, Any],
    queries: list[dict],
    evidence: dict[tuple[int, str], ImageEvidence],
    raters: dict[str, int],
    vote: Callable[..., tuple[str, str]],
) -> tuple[list[tuple[int, int, str, str]], int]:
    """The votes (labeler_id, query_id, alignment, fidelity) the raters give, in order on each query until
    it has the votes it wants, and how many times a rater was left out of a full query. A vote that a
    rater already gave otherwise is a VoteConflict here, so that a conflict writes nothing rather than
    stopping between two chunks."""
    by_query: dict[int, dict[str, dict]] = {q["id"]: {} for q in queries}  # query -> rater -> vote
    for v in store.comparison_votes(comparison["id"]):
        by_query[v["query_id"]][v["labeler"]] = v
    votes, full = [], 0
    for q in queries:
        shown = {q["first_shown_as"]: q["first"], "B" if q["first_shown_as"] == "A" else "A": q["second"]}
        a, b = ([evidence[(q["id"], sha)] for sha in shown[side]] for side in ("A", "B"))
        room = comparison["raters_per_query"] - len(by_query[q["id"]])
        for rater, rater_id in raters.items():
            old = by_query[q["id"]].get(rater)
            if old is None:
                if room == 0:
                    full += 1
                    continue
                room -= 1
            alignment, fidelity = vote(a, b, rater)
            if old is not None and (old["alignment"], old["fidelity"]) != tuple(
                shown_to_choice(x, q["first_shown_as"]) for x in (alignment, fidelity)
            ):
                raise VoteConflict(
                    f"{rater} already voted on query {q['id']} of {comparison['name']!r} with other answers "
                    "(other settings or seed?), and a vote is final: simulate into a new comparison"
                )
            votes.append((rater_id, q["id"], alignment, fidelity))
    return votes, full
