"""How many of a model's feedback images of each asked count are labeled good: what a D_model of good
images holds of every count.

    python -m benchmarks.good_by_count work/v7.bound --model work/v7/snapshots/step_018000 [--per-prompt 10]

Counts the model's role-human images of count-bearing prompts (count, combination) among the first
``--per-prompt`` seeds of each prompt (``generate``'s seeds, so a store later grown to more samples a prompt
gives the same answer), and those whose labels' mean is good (>= 0.5, as ``--min-weight 0.5`` keeps them).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from t2ialign.generate.images import image_seed
from t2ialign.reward.data import labeled_images
from t2ialign.store import Store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", required=True, help="the images' model_id ends with this (the base's folder)")
    ap.add_argument("--per-prompt", type=int, default=10, help="the first N seeds of each prompt")
    ap.add_argument("--seed", type=int, default=0, help="generate.seed the images were made with")
    args = ap.parse_args(argv)
    with Store.open(args.run) as store:
        count = {
            p["text"]: p["count"] for p in store.list_prompts() if p["category"] in ("count", "combination")
        }
        good = {r["sha256"] for r in labeled_images(store, "human") if r["y"] >= 0.5}
        images = [
            r
            for r in store.list_images(role="human")
            if r["prompt"] in count and r["model_id"].endswith(args.model.rstrip("/"))
        ]
    first = {(p, image_seed(args.seed, "human", p, k)) for p in count for k in range(args.per_prompt)}
    n, n_good = Counter(), Counter()
    for r in images:
        if (r["prompt"], r["seed"]) in first:
            n[count[r["prompt"]]] += 1
            n_good[count[r["prompt"]]] += r["sha256"] in good
    total = sum(n_good.values())
    for c in sorted(n):
        print(
            f"{c}: {n_good[c]} good of {n[c]} ({n_good[c] / n[c]:.0%}); {n_good[c] / total:.0%} of the good"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
