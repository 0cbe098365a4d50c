"""Is a world model's imprecise count the sampler's or the model's? A probe for issue 14.

World v6 draws about the asked count on average but exactly the asked count on only 37% of count-bearing
prompts (docs/world.md, "The perfect-feedback bound on v6"). Before blaming the UNet, this probe samples
the same 300 count-bearing seen prompts x 4 seeds as ``benchmarks.count_probes`` under other sampler
settings (classifier-free guidance scale, number of steps) and compares the judge's count reading with
the default sampler's (guidance 5, 20 DPM-Solver++ steps) on the same prompts and seeds: the paired
difference with a 95% bootstrap interval over prompts, and the spread of the drawn count per asked count.

    python -m benchmarks.sampler_probe --model work/v6/snapshots/step_018000 --threads 2

Writes ``work/probes/sampler_REVISION.json`` (images of each setting are kept beside it, so a rerun
judges them again without sampling).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from benchmarks.count_probes import OUT, count_hits, eval_prompts, sample_eval
from t2ialign.config import GenerateConfig
from t2ialign.evaluate.paired import paired_bootstrap
from t2ialign.models.load import load_pipeline
from t2ialign.world import vocab
from t2ialign.world.judge import Judge

# name -> the GenerateConfig fields it changes; "default" is the comparison for every other row
SETTINGS = {
    "default": {},
    "no_guidance": {"guidance_scale": 1.0},
    "guidance_3": {"guidance_scale": 3.0},
    "guidance_7.5": {"guidance_scale": 7.5},
    "guidance_10": {"guidance_scale": 10.0},
    "steps_50": {"num_inference_steps": 50},
}


def spread(reads: list, asked: np.ndarray) -> dict:
    """Per asked count word: the mean and the standard deviation of the count read (6+ counted as 6)."""
    reads = np.array(reads, float)
    return {
        vocab.COUNT_WORDS[k]: [
            round(float(reads[asked == k].mean()), 2),
            round(float(reads[asked == k].std()), 2),
        ]
        for k in vocab.COUNT_WORDS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a world pipeline folder; default: the shipped one")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}"
    )
    args = ap.parse_args()
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}: choose from {', '.join(SETTINGS)}")
    if "default" not in names:
        names.insert(0, "default")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    prompts = eval_prompts(args.prompts)
    pipe, model_id, revision = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    judge = Judge.load()
    asked = np.repeat(np.array([p.spec.count for p in prompts]), args.per_prompt)
    rows, hits = {}, {}
    for name in names:
        # the default setting's images are the count probes' base images (same prompts, seeds and sampler)
        stem = "base_images" if name == "default" else f"sampler_{name}"
        path = OUT / f"{stem}_{revision}_{args.prompts}x{args.per_prompt}.npz"
        if path.is_file():
            images = np.load(path)["images"]
        else:
            cfg = replace(GenerateConfig(), **SETTINGS[name])
            images = sample_eval(pipe, prompts, args.per_prompt, cfg=cfg)
            np.savez_compressed(path, images=images)
        hit, good, read = count_hits(judge, images, prompts, args.per_prompt)
        hits[name] = hit
        rows[name] = {
            "changes": SETTINGS[name],
            "count_read_right": round(float(hit.mean()), 4),
            "aligned": round(float(good.mean()), 4),
            "paired_vs_default": None if name == "default" else paired_bootstrap(hits["default"], hit),
            "read_count_mean_std": spread(read, asked),
        }
        print(name, json.dumps(rows[name]), flush=True)
    result = {
        "model": model_id,
        "n_prompts": len(prompts),
        "n_images": len(prompts) * args.per_prompt,
        "settings": rows,
    }
    (OUT / f"sampler_{revision}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
