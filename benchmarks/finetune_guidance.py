"""Is a fine-tuned model's fidelity loss compounded classifier-free guidance? Alignment and FD_CLIP per
guidance scale.

D_model is the base model's own samples at guidance scale g (5 by default), so reward-weighted
fine-tuning teaches the conditional branch an already guided distribution, and sampling the fine-tuned
model at g again guides twice. If that is where its FD goes, the fine-tuned model at a lower scale gets
its FD back. This probe samples RUN's 120 evaluation prompts x K images (seeds of its own, not
``evaluate``'s) with each MODEL at each scale and reports the world judge's alignment (all, count on seen
and on unseen prompts, color, background) and FD_CLIP against renders of the same prompts.

Run: ``python -m benchmarks.finetune_guidance RUN base@5 base@3 full@5 full@3 [--base PIPELINE]`` (MODEL:
``base``, the shipped world model or ``--base``, or a fine-tuned NAME under RUN/finetune; about a minute
per MODEL@SCALE on 2 cores with K = 8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from t2ialign.config import GenerateConfig
from t2ialign.evaluate.fidelity import fd_clip, render_reference
from t2ialign.evaluate.run import evaluation_prompts
from t2ialign.generate.images import sample_images
from t2ialign.models.load import load_clip, load_pipeline
from t2ialign.store import Store
from t2ialign.world.judge import Judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run with evaluation prompts and fine-tuned models")
    parser.add_argument("models", nargs="+", help="MODEL@SCALE, MODEL = base or a name under RUN/finetune")
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--base", default=None, help="the base pipeline folder (default: the shipped one)")
    args = parser.parse_args()
    with Store.open(args.run) as store:
        groups = evaluation_prompts(store)
        category = {r["text"]: r["category"] for r in store.list_prompts()}
    items = [(g, p) for g, ps in groups.items() for p in ps for _ in range(args.images_per_prompt)]
    prompts = [p for _, p in items]
    cat = np.array([category[p] for p in prompts])
    seen = np.array([g == "seen" for g, _ in items])
    reference = render_reference(prompts, reference_seed=500)[0]
    clip, processor, _ = load_clip()
    judge = Judge.load()
    for spec in args.models:
        name, _, scale = spec.partition("@")
        path = args.base if name == "base" else str(Path(args.run) / "finetune" / name / "pipeline")
        pipe = load_pipeline(path)[0]
        cfg = GenerateConfig(guidance_scale=float(scale or 5.0))
        images = []
        for i in range(0, len(items), 128):
            chunk = range(i, min(i + 128, len(items)))
            images += sample_images(pipe, prompts[i : chunk.stop], [7000 + 97 * j for j in chunk], cfg)
        good = np.array([v.label == "good" for v in judge.judge(images, prompts)])
        cells = {
            "all": good,
            "count seen": good[(cat == "count") & seen],
            "count unseen": good[(cat == "count") & ~seen],
            "color": good[cat == "color"],
            "background": good[cat == "background"],
        }
        print(
            f"{name:28s} g={cfg.guidance_scale:<4g} "
            + "  ".join(f"{k} {v.mean():.1%} (n={len(v)})" for k, v in cells.items())
            + f"  FD_CLIP {fd_clip(images, reference, clip, processor):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
