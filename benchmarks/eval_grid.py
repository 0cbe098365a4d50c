"""A grid of several models' evaluation images on the same prompts and seeds, to look at side by side.

One row per (prompt, model), prompts in the store's order, models in the order given; each row holds the
prompt's first K evaluation images of that model by seed (``evaluate`` gives every model the same seeds).

    python -m benchmarks.eval_grid RUN OUT.png MODEL_ID [MODEL_ID ...] [--category color] [--prompts 6]
        [--per-prompt 6]

MODEL_ID is an image's ``model_id`` in the store (the pipeline folder it was sampled from, as
``evaluate`` stored it), with ``@G`` for its images at guidance scale G (``evaluate``'s MODEL@G); a
model stored at several scales must be given one. The row order is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from t2ialign.evaluate.run import split_guidance
from t2ialign.store import Store
from t2ialign.world.render import grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--category", default="color")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--per-prompt", type=int, default=6)
    args = ap.parse_args(argv)
    with Store.open(args.run) as store:
        category = {p["text"]: p["category"] for p in store.list_prompts()}
        by_model = {m: _images(store, m, ap) for m in args.models}
        missing = [m for m, rows in by_model.items() if not rows]
        if missing:
            ap.error(f"no evaluation images of {', '.join(missing)} in {args.run}")
        texts = list(dict.fromkeys(r["prompt"] for r in by_model[args.models[0]]))
        texts = [t for t in texts if category[t] == args.category][: args.prompts]
        tiles = []
        for text in texts:
            for m in args.models:
                rows = sorted((r for r in by_model[m] if r["prompt"] == text), key=lambda r: r["seed"])
                tiles += [store.image_array(r["sha256"]) for r in rows[: args.per_prompt]]
                print(f"row {len(tiles) // args.per_prompt:>3}: {text} | {m}")
    grid(tiles, cols=args.per_prompt).save(args.out)
    print(f"-> {args.out}")
    return 0


def _images(store: Store, spec: str, ap: argparse.ArgumentParser) -> list[dict]:
    """MODEL_ID[@G]'s evaluation images (at guidance G; without @G, the model must have only one)."""
    model_id, guidance = split_guidance(spec)
    rows = store.list_images(model_id=model_id, role="eval")

    def scale(row: dict) -> float | None:
        return row["sampler"].get("generate_config", {}).get("guidance_scale")

    scales = {scale(r) for r in rows}
    if guidance is None and len(scales) > 1:
        ap.error(f"{model_id} has evaluation images at guidance {sorted(scales)}: name one as {model_id}@G")
    return [r for r in rows if guidance is None or scale(r) == guidance]


if __name__ == "__main__":
    raise SystemExit(main())
