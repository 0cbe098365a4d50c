"""What raters compare side by side (paper Sec. 4.2, Fig. 3): a *comparison* of two models, one query
per prompt, each showing the two models' sets of images under the anonymous names A and B.

Which model's set is shown as A is drawn per query from the seed, balanced (half the queries each way) so
that a rater's preference for the top row cancels out, and recorded; the order of the queries is shuffled
too. Raters never see the models' names, nor the comparison's. The votes' assignment, submission, tally
and simulated raters mirror the labels': ``assignment``, ``service``, ``stats_votes``, ``simulate_votes``
(``sidebyside`` gathers them).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from t2ialign.store import Store

QUESTIONS: tuple[str, ...] = ("alignment", "fidelity")
ANSWERS: tuple[str, ...] = ("A", "B", "tie")
DEFAULT_RATERS = 9  # per query, as in the paper
# Comparison names appear in file names (fig3_NAME.png) and on the admin page: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


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
