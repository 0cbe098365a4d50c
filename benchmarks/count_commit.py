"""At which sampling step does a world model commit to a count? A probe for issue 14.

Each image is sampled with prompt A ("One star") for its first k of the sampler's steps and with prompt B
("Five stars": the same shape, another count) for the rest, on the same seed for every k. The judge then
reads the count: where the image still shows A's count, the count was settled in the first k steps, at
timesteps above the k-th. k = 0 is B throughout and k = all steps is A throughout. The switch point where
the share drawn as A rises tells which timesteps decide the count, so where in t a fine-tuning loss can
teach it (`[finetune] timestep_bias_*`).

    python -m benchmarks.count_commit PIPELINE [--seeds 16] [--guidance 5] [--out FILE.json]

Pairs: one <-> five and two <-> four, both ways, for every shape with count prompts. Prints, per k, the
timestep at which B takes over and the share of images read as A's count and as B's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set

PAIRS = ((1, 5), (5, 1), (2, 4), (4, 2))


def switch_prompts(pipe, a: list[str], b: list[str], seeds: list[int], k: int, steps: int, guidance: float):
    """Images sampled with prompts ``a`` for the first k steps and ``b`` after, one per seed."""
    emb_a, neg = pipe.encode_prompt(a, pipe.device, 1, True, negative_prompt=[""] * len(a))
    emb_b, _ = pipe.encode_prompt(b, pipe.device, 1, True, negative_prompt=[""] * len(b))

    def swap(pipeline, i, t, kwargs):  # called after step i; the pipeline holds [negative, positive]
        if i + 1 == k:
            kwargs["prompt_embeds"] = torch.cat([neg, emb_b])
        return kwargs

    out = pipe(
        prompt_embeds=emb_a if k > 0 else emb_b,
        negative_prompt_embeds=neg,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
        callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    return [np.round(np.clip(im, 0, 1) * 255).astype(np.uint8) for im in out.images]


def main(argv: list[str] | None = None) -> int:
    from t2ialign.models.load import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline")
    ap.add_argument("--seeds", type=int, default=16, help="seeds per shape and pair")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--switches", default="0,1,2,3,4,6,8,12,20", help="k values (steps sampled with A)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    switches = [int(x) for x in args.switches.split(",")]
    if any(not 0 <= k <= args.steps for k in switches):
        ap.error(f"--switches must lie in [0, {args.steps}]")
    pipe, _, _ = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(args.steps)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    judge = Judge.load()
    text = {(p.spec.shape, p.spec.count): p.text for p in build_prompt_set() if p.category == "count"}
    shapes = sorted({s for s, _ in text})
    a, b, want_a, want_b, seeds = [], [], [], [], []
    for shape in shapes:
        for ca, cb in PAIRS:
            for s in range(args.seeds):
                a.append(text[shape, ca])
                b.append(text[shape, cb])
                want_a.append(ca)
                want_b.append(cb)
                seeds.append(1_000 + s)
    rows = []
    for k in tqdm(switches, desc="switch points"):
        images = []
        for i in range(0, len(a), 64):
            images += switch_prompts(
                pipe, a[i : i + 64], b[i : i + 64], seeds[i : i + 64], k, args.steps, args.guidance
            )
        read = np.array([v.reading["count"][0] for v in judge.judge(images, a)])  # 6 or more: class 6
        row = {
            "k": k,
            "b_from_timestep": timesteps[k] if k < args.steps else None,
            "read_as_a": float(np.mean(read == np.array(want_a))),
            "read_as_b": float(np.mean(read == np.array(want_b))),
            "n": len(read),
        }
        rows.append(row)
        print(
            f"k={k:2d}  B from t={row['b_from_timestep']}: read as A {100 * row['read_as_a']:.1f}%, "
            f"as B {100 * row['read_as_b']:.1f}% ({row['n']} images)",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
