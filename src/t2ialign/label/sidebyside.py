"""Side-by-side human evaluation, as in the paper's Sec. 4.2 and Fig. 3.

Two models each make a set of images for the same prompt. A rater sees the two sets under the anonymous
names A and B and says which is better, or that they are alike (tie), on two questions: image-text
**alignment** and image **fidelity** (quality). Each query is answered by nine raters; Fig. 3 shows, for
"<first> vs <second>", the share of queries that got v = 0..9 votes for the first model (the *positive*
votes) and boxes the share with at least 7.

- A *comparison* (:func:`create_comparison`) holds one query per prompt. Which model's set is shown as A
  is drawn per query from the seed, balanced (half the queries each way) so that a rater's preference for
  the top row cancels out, and recorded; the order of the queries is shuffled too. Raters never see the
  models' names, nor the comparison's.
- Votes enter by :func:`submit_vote` / :func:`submit_votes` (the web app's path and the simulated raters'
  alike), answers as the rater saw them (A / B / tie); the store translates them to the model they prefer
  in the transaction that writes them. A vote is final; a resend of it changes nothing. A query takes
  at most its comparison's ``raters_per_query`` votes, from distinct raters.
- :func:`tally` gives Fig. 3's histograms, :func:`plot_fig3` draws them, :func:`simulate_votes` has
  simulated raters vote, from the world judge.

The simulated raters (world only, like ``simulate.py``'s labelers) see, for each image:

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

import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from t2ialign.store import QueryState, Store, VoteConflict, shown_to_choice

QUESTIONS: tuple[str, ...] = ("alignment", "fidelity")
ANSWERS: tuple[str, ...] = ("A", "B", "tie")
DEFAULT_RATERS = 9  # per query, as in the paper
DEFAULT_LEASE_SECONDS = 15 * 60
WRITE_CHUNK = 1000  # votes per transaction when simulating
# Comparison names appear in file names (fig3_NAME.png) and on the admin page: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


# --- comparisons ------------------------------------------------------------------------------------------


def check_comparison_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid comparison name {name!r}: 1 to 64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    return name


def shown_order(n: int, seed: int) -> tuple[list[str], list[int]]:
    """For n queries: whether each shows the first model's set as "A" or "B" (balanced: ceil(n/2) A's,
    shuffled), and a shuffled order in which to hand the queries out. Same (n, seed), same result."""
    rng = random.Random(f"sidebyside:{seed}")  # str seeds hash with SHA-512: stable across runs
    shown = ["A"] * ((n + 1) // 2) + ["B"] * (n // 2)
    rng.shuffle(shown)
    order = list(range(n))
    rng.shuffle(order)
    return shown, order


def create_comparison(
    store: Store,
    name: str,
    first_model: str,
    second_model: str,
    sets: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    raters_per_query: int = DEFAULT_RATERS,
    seed: int = 0,
) -> int:
    """Create the comparison "<first_model> vs <second_model>" and return its id.

    ``sets``: prompt text -> (sha256s of the first model's images, sha256s of the second model's), each
    image recorded in the run as an image of that prompt; the two sets of a prompt have equal sizes (the
    paper shows four images each). Votes for ``first_model`` are the positive votes of Fig. 3, so name
    the model under test first ("fine-tuned" vs "original"). The model names are labels for reports only.
    """
    check_comparison_name(name)
    if not isinstance(sets, Mapping) or not sets:
        raise ValueError("sets must be a non-empty dict: prompt -> (first model's sha256s, second's)")
    for prompt, pair in sets.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"sets[{prompt!r}] must be a pair (first model's sha256s, second's)")
    prompts = sorted(sets)  # the draws depend on the seed, not on the dict's order
    shown, order = shown_order(len(prompts), seed)
    queries = [
        {
            "prompt": prompts[i],
            "first": list(sets[prompts[i]][0]),
            "second": list(sets[prompts[i]][1]),
            "first_shown_as": shown[i],
        }
        for i in order
    ]
    return store.add_comparison(name, first_model, second_model, raters_per_query, seed, queries)


def sets_from_evaluate(path: str | Path, first: str, second: str) -> dict[str, tuple[list[str], list[str]]]:
    """Sets for :func:`create_comparison` from ``t2ialign evaluate``'s ``RUN/evaluate/images.json``
    (``{"prompts": ..., "images": {model name: {prompt: [sha256, ...]}}, "sets": {the same}}``): the sets
    of models ``first`` and ``second`` (names as given to evaluate: base, finetuned, rejection, ...) on
    every evaluation prompt both have images of. Fig. 3 (a) is finetuned vs base, (b) rejection vs base,
    (c) finetuned vs rejection.

    The sets are "sets", the paper's 4 images per prompt (a model's first 4 seeds; rejection sampling's
    best 4 of 16), not the many more images per prompt the world evaluation judges ("images"); a file
    written before evaluate judged more than 4 has only "images", which are then the sets."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no {path}: run `t2ialign evaluate` first, or give the sets in a file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict):
        raise ValueError(f'{path} has no "images" object: not written by `t2ialign evaluate`')
    if "sets" in data:
        images = data["sets"]
        if not isinstance(images, dict):
            raise ValueError(f'{path}: "sets" must be an object, model name -> prompt -> sha256s')
    for model in (first, second):
        if model not in images or not isinstance(images[model], dict):
            raise ValueError(
                f"{path} has no images of model {model!r}; it has: {', '.join(images) or 'none'}"
            )
    if first == second:
        raise ValueError(f"the two models are the same, {first!r}")
    sets = {
        p: (list(images[first][p]), list(images[second][p]))
        for p in sorted(set(images[first]) & set(images[second]))
        if images[first][p] and images[second][p]
    }
    if not sets:
        raise ValueError(f"{path}: no prompt has images of both {first!r} and {second!r}")
    return sets


def get_comparison(store: Store, name: str) -> dict[str, Any]:
    """The comparison of this name; ValueError naming the known ones if there is none."""
    found = store.comparison(check_comparison_name(name))
    if found is None:
        known = ", ".join(c["name"] for c in store.list_comparisons()) or "none"
        raise ValueError(f"no comparison named {name!r} in {store.run_dir} (known: {known})")
    return found


# --- votes --------------------------------------------------------------------------------------------------


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


def pick_query(states: list[QueryState]) -> list[int]:
    """The rater's next query (a list of at most one id): the query they hold a lease on and have not
    answered (a reload shows it again); else, among the queries that need a vote from them (not theirs,
    fewer than ``wanted`` other raters have taken it), the one taken most already, so that queries are
    completed one after another; ties by query id (the comparison's shuffled order)."""
    resume = [s.query_id for s in states if s.mine == "leased"]
    if resume:
        return [min(resume)]
    open_ = [s for s in states if s.mine is None and s.n_votes + s.n_leased < s.wanted]
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


# --- tallies (Fig. 3) ---------------------------------------------------------------------------------------


def two_thirds_threshold(n_raters: int) -> int:
    """The fewest votes that are more than two-thirds of n_raters: Fig. 3's box, 7 of 9."""
    return 2 * n_raters // 3 + 1


def tally_votes(votes_by_query: Mapping[Any, Sequence[str]], n_raters: int) -> dict[str, Any]:
    """Fig. 3 for one question from each query's votes (first / second / tie).

    Only complete queries (exactly ``n_raters`` votes) count; the others are reported as ``incomplete``.
    Keys: ``queries`` (complete ones), ``incomplete``, ``histogram`` (number of queries with v votes for
    the first model, v = 0..n_raters), ``percent`` (the same as % of queries, 0.1 precision, as the
    figure's bars), ``threshold`` (:func:`two_thirds_threshold`), ``share_ge_threshold`` (share of queries
    with at least that many votes for the first model: the figure's box), ``share_second_ge_threshold``
    (the same for the second model, the other number of the paper's "20%-10%"), ``tie_share`` and
    ``vote_share`` (shares of all votes of complete queries). Shares are None without a complete query.
    """
    if not isinstance(n_raters, int) or isinstance(n_raters, bool) or n_raters < 1:
        raise ValueError(f"n_raters must be an integer >= 1, got {n_raters!r}")
    complete = []
    for query, votes in votes_by_query.items():
        unknown = set(votes) - {"first", "second", "tie"}
        if unknown:
            raise ValueError(f"query {query!r}: votes must be first, second or tie, got {sorted(unknown)}")
        if len(votes) > n_raters:
            raise ValueError(f"query {query!r} has {len(votes)} votes, more than {n_raters}")
        if len(votes) == n_raters:
            complete.append(votes)
    threshold = two_thirds_threshold(n_raters)
    histogram = [0] * (n_raters + 1)
    for votes in complete:
        histogram[sum(v == "first" for v in votes)] += 1
    n = len(complete)
    n_votes = n * n_raters
    counts = {c: sum(v == c for votes in complete for v in votes) for c in ("first", "second", "tie")}

    def share(k: int, total: int) -> float | None:
        return round(k / total, 4) if total else None

    return {
        "queries": n,
        "incomplete": len(votes_by_query) - n,
        "histogram": histogram,
        "percent": [round(100.0 * h / n, 1) for h in histogram] if n else None,
        "threshold": threshold,
        "share_ge_threshold": share(sum(histogram[threshold:]), n),
        "share_second_ge_threshold": share(
            sum(sum(v == "second" for v in votes) >= threshold for votes in complete), n
        ),
        "tie_share": share(counts["tie"], n_votes),
        "vote_share": {c: share(k, n_votes) for c, k in counts.items()},
    }


def tally(store: Store, name: str) -> dict[str, Any]:
    """Fig. 3 of one comparison: ``{"comparison": {...}, "alignment": tally_votes, "fidelity": ...,
    "by_split": {prompt split: {"alignment", "fidelity"}}}`` (the paper mixes 60 seen and 60 unseen
    prompts; the split view tells them apart)."""
    comparison = get_comparison(store, name)
    queries = store.comparison_queries(comparison["id"])
    votes: dict[str, dict[int, list[str]]] = {q: {query["id"]: [] for query in queries} for q in QUESTIONS}
    for v in store.comparison_votes(comparison["id"]):
        for question in QUESTIONS:
            votes[question][v["query_id"]].append(v[question])
    n = comparison["raters_per_query"]
    split_of = {query["id"]: query["split"] for query in queries}
    by_split = {
        split: {
            question: tally_votes({i: v for i, v in votes[question].items() if split_of[i] == split}, n)
            for question in QUESTIONS
        }
        for split in sorted(set(split_of.values()))
    }
    info = {k: comparison[k] for k in ("name", "first_model", "second_model", "raters_per_query", "seed")}
    return {
        "comparison": {**info, "queries": len(queries)},
        **{question: tally_votes(votes[question], n) for question in QUESTIONS},
        "by_split": by_split,
    }


def format_tally(result: dict[str, Any]) -> str:
    """A tally as text: per question the histogram in % and the boxed share, as Fig. 3 reads."""
    c = result["comparison"]
    lines = [
        f"{c['first_model']} vs {c['second_model']} ({c['name']}; {c['raters_per_query']} raters per query)"
    ]
    for question in QUESTIONS:
        t = result[question]
        if not t["queries"]:
            lines.append(f"  {question}: no complete query yet ({t['incomplete']} waiting for votes)")
            continue
        bars = " ".join(f"{v}:{p:g}" for v, p in enumerate(t["percent"]))
        lines.append(
            f"  {question}: >= {t['threshold']} votes for {c['first_model']} on "
            f"{100 * t['share_ge_threshold']:.1f}% of {t['queries']} queries, for {c['second_model']} on "
            f"{100 * t['share_second_ge_threshold']:.1f}%; ties {100 * t['tie_share']:.1f}% of votes"
        )
        lines.append(f"    % of queries by votes for {c['first_model']}: {bars}")
        if t["incomplete"]:
            lines.append(f"    ({t['incomplete']} queries still short of votes are left out)")
    return "\n".join(lines)


def plot_fig3(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """The paper's Fig. 3 for one comparison: for alignment and for fidelity, the % of queries by the
    number of votes for the first model (0..n), the bars at or above the threshold in a black box with
    their total share. Written as PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    c = result["comparison"]
    n = c["raters_per_query"]
    percents = {q: result[q]["percent"] or [0.0] * (n + 1) for q in QUESTIONS}
    top = max(max(p) for p in percents.values()) or 1.0  # one y scale for both panels, as in the paper
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, question in zip(axes, QUESTIONS, strict=True):
        t = result[question]
        threshold = t["threshold"]
        colors = ["#2e6fb8" if v >= threshold else "#9dbbe0" for v in range(n + 1)]
        ax.bar(range(n + 1), percents[question], color=colors, width=0.8)
        ax.add_patch(
            Rectangle((threshold - 0.5, 0), n + 1 - threshold, top * 1.08, fill=False, lw=1.5, ec="black")
        )
        box = "n/a" if t["share_ge_threshold"] is None else f"{100 * t['share_ge_threshold']:.0f}%"
        ax.text(threshold - 0.4, top * 1.12, f">= {threshold}: {box}", fontsize=9, va="bottom")
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(range(n + 1))
        ax.set_xlabel(f"votes for {c['first_model']} (of {n})")
        ax.set_title(f"{question} ({t['queries']} queries)")
    axes[0].set_ylabel("% of queries")
    fig.suptitle(title or f"{c['first_model']} vs {c['second_model']} (paper Fig. 3)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- simulated raters -------------------------------------------------------------------------------------


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
    docstring for how they decide), through :func:`submit_votes`, the web app's path.

    ``n_raters`` defaults to the comparison's raters_per_query. Raters vote in order on each query until
    it has the votes it wants, so people's votes are kept and the simulation completes the rest. A rerun
    with the same settings changes nothing; with other settings it conflicts (votes are final): make a new
    comparison. Returns the settings and counts of new and unchanged votes and of queries already full.
    """
    import numpy as np
    from PIL import Image

    from t2ialign.label.simulate import simulated_labelers
    from t2ialign.world.judge import Judge
    from t2ialign.world.prompts import spec_of

    comparison = get_comparison(store, name)
    wanted = comparison["raters_per_query"]
    n_raters = wanted if n_raters is None else n_raters
    if not isinstance(n_raters, int) or isinstance(n_raters, bool) or not 1 <= n_raters <= wanted:
        raise ValueError(f"n_raters must be an integer in [1, {wanted}] (the comparison's raters per query)")
    _check_rates(noise, fidelity_noise, tie_margin)
    queries = store.comparison_queries(comparison["id"])
    shas = [sha for q in queries for sha in (*q["first"], *q["second"])]
    missing = [sha for sha in shas if not store.image_path(sha).is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} image file(s) are missing from {store.images_dir}, e.g. {missing[0]}"
        )
    raters = simulated_labelers(store, n_raters)
    judge = judge if judge is not None else Judge.load()

    specs = {p["text"]: spec_of(p) for p in store.list_prompts()}
    evidence: dict[tuple[int, str], ImageEvidence] = {}
    for i in range(0, len(queries), 64):  # 64 queries of up to 2 x 16 images per judge batch
        chunk = queries[i : i + 64]
        keys = [(q["id"], sha) for q in chunk for sha in (*q["first"], *q["second"])]
        prompts = [specs[q["prompt"]] for q in chunk for _ in (*q["first"], *q["second"])]
        pixels = [np.asarray(Image.open(store.image_path(sha)).convert("RGB")) for _, sha in keys]
        verdicts = judge.judge(pixels, prompts)
        distances = render_distance(judge, pixels)
        for key, v, d in zip(keys, verdicts, distances, strict=True):
            evidence[key] = ImageEvidence(key[1], v.p_match, d)

    by_query: dict[int, dict[str, dict]] = {q["id"]: {} for q in queries}  # query -> rater -> vote
    for v in store.comparison_votes(comparison["id"]):
        by_query[v["query_id"]][v["labeler"]] = v
    votes, full = [], 0
    for q in queries:
        shown = {q["first_shown_as"]: q["first"], "B" if q["first_shown_as"] == "A" else "A": q["second"]}
        a = [evidence[(q["id"], sha)] for sha in shown["A"]]
        b = [evidence[(q["id"], sha)] for sha in shown["B"]]
        room = wanted - len(by_query[q["id"]])
        for rater, rater_id in raters.items():
            old = by_query[q["id"]].get(rater)
            if old is None:
                if room == 0:
                    full += 1
                    continue
                room -= 1
            alignment, fidelity = simulated_vote(a, b, rater, seed, noise, fidelity_noise, tie_margin)
            # checked here too, so that a conflict writes nothing rather than stopping between two chunks
            if old is not None and (old["alignment"], old["fidelity"]) != tuple(
                shown_to_choice(x, q["first_shown_as"]) for x in (alignment, fidelity)
            ):
                raise VoteConflict(
                    f"{rater} already voted on query {q['id']} of {name!r} with other answers (other "
                    "settings or seed?), and a vote is final: simulate into a new comparison"
                )
            votes.append((rater_id, q["id"], alignment, fidelity))
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
