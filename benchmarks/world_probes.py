"""Where the shipped world model's misalignment comes from: the VAE's ceiling (the judge on VAE
reconstructions of renders) and shape accuracy against the guidance scale.

Run: ``python -m benchmarks.world_probes`` (about a minute on 2 cores). The README quotes its output.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from t2ialign.config import GenerateConfig
from t2ialign.generate.images import sample_images
from t2ialign.models.load import load_pipeline
from t2ialign.world import vocab
from t2ialign.world.dataset import PretrainDataset
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set
from t2ialign.world.render import render


def vae_ceiling(pipe, judge, n: int = 400) -> None:
    ds = PretrainDataset(n, seed=123)
    specs = [ds.scene(i)[0] for i in range(n)]
    images = [render(s, seed=i).image for i, s in enumerate(specs)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec = torch.cat([pipe.vae.decode(pipe.vae.encode(b).latent_dist.mean).sample for b in x.split(100)])
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for name, ims in (("renders", images), ("VAE reconstructions", list(rec))):
        vs = judge.judge(ims, specs)
        acc = {
            a: np.mean([v.reading[a][0] == getattr(s, a) for v, s in zip(vs, specs, strict=True)])
            for a in vocab.ATTRIBUTES
        }
        good = np.mean([v.label == "good" for v in vs])
        print(f"{name:20s} good {good:.1%}  " + "  ".join(f"{a} {x:.1%}" for a, x in acc.items()))


def guidance_sweep(pipe, judge) -> None:
    prompts = [p for p in build_prompt_set() if p.split == "seen"]
    random.Random(0).shuffle(prompts)
    chosen = [
        p for c in ("count", "color", "background") for p in [q for q in prompts if q.category == c][:24]
    ]
    specs = [p for p in chosen for _ in range(4)]
    texts = [p.text for p in specs]
    for g in (3.0, 5.0, 7.5, 10.0):
        cfg = GenerateConfig(guidance_scale=g)
        ims = []
        for i in range(0, len(texts), 96):
            ims += sample_images(pipe, texts[i : i + 96], list(range(i, i + len(texts[i : i + 96]))), cfg)
        vs = judge.judge(ims, texts)
        shape = np.mean([v.reading["shape"][0] == s.spec.shape for v, s in zip(vs, specs, strict=True)])
        print(f"guidance {g:4.1f}: shape read right on {shape:.1%} of {len(ims)} images")


if __name__ == "__main__":
    torch.set_num_threads(2)
    pipe, model_id, revision = load_pipeline(None)
    judge = Judge.load()
    print(f"{model_id} @ {revision}")
    vae_ceiling(pipe, judge)
    guidance_sweep(pipe, judge)
