"""The world judge as an oracle on stored images: its verdict and readings for each image against its
prompt. Simulated labelers (``simulate``) and voters (``sidebyside``) add their noise to it; the evaluation
counts its verdicts."""

from __future__ import annotations

from t2ialign.store import Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import spec_of


def judge_stored(store: Store, images: list[dict], judge: Judge, batch: int = 512) -> list[dict]:
    """Judge stored images (rows of ``Store.list_images``) against their prompts."""
    prompts = {p["text"]: p for p in store.list_prompts()}
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
