"""The world judge as an oracle on stored images: its verdict and readings for each image against its
prompt. Simulated labelers (``simulate``) and voters (``sidebyside``) add their noise to it; the evaluation
counts its verdicts."""

from __future__ import annotations

from t2ialign.store import IMPORTED_SPLIT, Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import spec_of


def judge_stored(store: Store, images: list[dict], judge: Judge, batch: int = 512) -> list[dict]:
    """Judge stored images (rows of ``Store.list_images``) against their prompts, which must be the
    world's: the judge reads shapes and attributes, which an imported caption (split "imported") has not."""
    prompts = {p["text"]: p for p in store.list_prompts()}
    foreign = next((r for r in images if prompts[r["prompt"]]["split"] == IMPORTED_SPLIT), None)
    if foreign is not None:
        raise ValueError(
            f"image {foreign['sha256']} is of the imported caption {foreign['prompt']!r}: the world judge "
            "reads the world's prompts only (its answers come from the set it was imported from)"
        )
    out = []
    for i in range(0, len(images), batch):
        rows = images[i : i + batch]
        pixels = [store.image_array(r["sha256"]) for r in rows]
        specs = [spec_of(prompts[r["prompt"]]) for r in rows]
        for r, spec, v in zip(rows, specs, judge.judge(pixels, specs), strict=True):
            p = prompts[r["prompt"]]
            out.append(
                {
                    "image_id": r["id"],
                    "prompt": r["prompt"],
                    "category": p["category"],
                    "split": p["split"],
                    "verdict": v.label,
                    "p_match": v.p_match,
                    "attribute_hits": {k: v.reading[k][0] == val for k, val in spec.constrained().items()},
                }
            )
    return out
