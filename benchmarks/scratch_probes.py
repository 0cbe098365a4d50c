"""Which world draws counts precisely? Short pre-trainings from scratch, for issue 14's item 2.

Every world so far (v4, v5, v6) draws about the asked count, imprecisely: two to four are drawn exactly
a third to a half of the time, and 1,000 fine-tuning steps on perfect data do not sharpen them
(docs/world.md). This probe pre-trains a fresh UNet of the shipped architecture, with the shipped VAE and
text encoder (which knows count words), on renders whose captions all state the count right (the
mapping is given, so what is measured is how precisely the count is drawn), for ``--steps`` steps on a
cosine schedule with EMA, and judges it every ``--eval-every`` steps on the count probe's 300
count-bearing prompts x 4 seeds (``benchmarks.count_probes``): the share of images whose count is read
as asked, per count, and the mean count drawn.

A probe varies one thing:

- ``--layout``: how the renders place their shapes (``world.render.LAYOUTS``): ``random`` (the world's
  own: anywhere, not overlapping, the radius shrinking with the count), ``grid`` (k of the 9 cells of a
  3x3 grid) or ``dice`` (the die face of the count, turned, scaled and shifted at random);
- ``--attn16``: self- and cross-attention at the latent's full resolution too (``count_probes``).

    python -m benchmarks.scratch_probes --name random --layout random --steps 4000 --threads 2
    python -m benchmarks.scratch_probes --name dice --layout dice --steps 4000 --threads 2

Training resumes from its newest checkpoint (``work/probes/scratch_NAME/``); the pool of renders and
their latents are cached in ``work/probes/scratch_pool_LAYOUT_N.npz``. Results: ``work/probes/
scratch_NAME.json`` (the curve), ``scratch_NAME_images.npz`` and ``scratch_NAME_grid.png`` (the newest
evaluation's images and verdicts). Two finished probes, paired on the same prompts and seeds:

    python -m benchmarks.scratch_probes --compare random dice
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.nn import functional as F

from benchmarks.count_probes import (
    COUNT_TEMPLATES,
    OUT,
    count_hits,
    eval_prompts,
    full_res_attention_config,
    sample_eval,
)
from t2ialign.core.seeds import stable_seed
from t2ialign.evaluate.paired import paired_bootstrap
from t2ialign.models.load import load_pipeline
from t2ialign.pretrain.train import embed_captions, noise_scheduler, train_loop
from t2ialign.world import vocab
from t2ialign.world.dataset import caption_for
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import PromptSpec
from t2ialign.world.render import LAYOUTS, grid, render

# what a probe's checkpoint depends on (as first run: the evaluation's size included)
TRAINING_ARGS = ("name", "layout", "attn16", "steps", "lr", "batch_size", "pool", "prompts", "per_prompt")


def random_scene(rng: np.random.Generator) -> PromptSpec:
    """A full scene, every attribute drawn uniformly (in the order the probes' pools were drawn)."""
    return PromptSpec(
        shape=vocab.values("shape")[rng.integers(len(vocab.SHAPES))],
        count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)),
        color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
        background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
    )


def pool(args, vae) -> tuple[torch.Tensor, list[PromptSpec]]:
    """``args.pool`` renders of uniform scenes under the layout, and their VAE latents (cached)."""
    path = OUT / f"scratch_pool_{args.layout}_{args.pool}.npz"
    if path.is_file():
        data = np.load(path)
        specs = [PromptSpec(*row) for row in json.loads(str(data["specs"]))]
        return torch.from_numpy(data["latents"].astype(np.float32)), specs
    specs, latents = [], []
    for start in range(0, args.pool, 256):
        images = []
        for i in range(start, min(start + 256, args.pool)):
            rng = np.random.default_rng(stable_seed("scratch-pool", args.layout, i))
            spec = random_scene(rng)
            specs.append(spec)
            images.append(render(spec, seed=int(rng.integers(2**62)), layout=args.layout).image)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
        print(f"pool {len(specs)}/{args.pool}", flush=True)
    lat = torch.cat(latents)
    rows = [[s.shape, s.count, s.color, s.background] for s in specs]
    np.savez(path, latents=lat.numpy().astype(np.float16), specs=np.array(json.dumps(rows)))
    return lat, specs


def fresh_unet(shipped, attn16: bool):
    from diffusers import UNet2DConditionModel

    if attn16:
        cfg = full_res_attention_config(shipped.config)
    else:
        cfg = {k: v for k, v in dict(shipped.config).items() if not k.startswith("_")}
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg)


def evaluate(pipe, judge, prompts, per_prompt: int, step: int, name: str) -> dict:
    """Judge the model on the count probe's prompts and seeds; the per-image results of the newest
    evaluation go to ``scratch_NAME_images.npz`` (for ``--compare``), its first images to the grid."""
    images = sample_eval(pipe, prompts, per_prompt)
    hit, good, read = count_hits(judge, images, prompts, per_prompt)
    read = np.array(read)
    np.savez_compressed(
        OUT / f"scratch_{name}_images.npz", images=images, hit=hit, good=good, read=read, step=step
    )
    grid(list(images[: 4 * 24]), cols=8).save(OUT / f"scratch_{name}_grid.png")
    asked = np.repeat([p.spec.count for p in prompts], per_prompt)
    row = {
        "count_read_right": round(float(hit.mean()), 4),
        "aligned": round(float(good.mean()), 4),
        "exact_by_count": {
            vocab.COUNT_WORDS[k]: round(float((read[asked == k] == k).mean()), 3) for k in vocab.COUNT_WORDS
        },
        "mean_by_count": {
            vocab.COUNT_WORDS[k]: round(float(read[asked == k].mean()), 2) for k in vocab.COUNT_WORDS
        },
    }
    return row


def compare(a: str, b: str) -> dict:
    """Probe b minus probe a on the same prompts and seeds (their newest evaluations): count read right
    and aligned, paired differences with 95% bootstrap intervals over prompts."""
    da, db = (np.load(OUT / f"scratch_{n}_images.npz") for n in (a, b))
    out = {"a": a, "b": b, "steps": [int(da["step"]), int(db["step"])]}
    for key, label in (("hit", "count_read_right"), ("good", "aligned")):
        out[label] = paired_bootstrap(da[key], db[key])
    return out


def judge_renders(n: int = 500) -> dict:
    """The judge on ``n`` renders of random scenes under each layout: the share whose count it reads
    right, and the share it calls aligned (every attribute right)."""
    judge, out = Judge.load(None), {}
    for layout in LAYOUTS:
        rng = np.random.default_rng(1)
        specs = [random_scene(rng) for _ in range(n)]
        verdicts = judge.judge([render(s, seed=i, layout=layout).image for i, s in enumerate(specs)], specs)
        out[layout] = {
            "count_read_right": float(
                np.mean([v.reading["count"][0] == s.count for v, s in zip(verdicts, specs, strict=True)])
            ),
            "aligned": float(np.mean([v.label == "good" for v in verdicts])),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", help="the probe's name (its files in work/probes/)")
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="random")
    ap.add_argument("--attn16", action="store_true")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="pair two finished probes' evaluations")
    ap.add_argument("--judge-renders", action="store_true", help="the judge on 500 renders of each layout")
    args = ap.parse_args()
    if args.judge_renders:
        print(json.dumps(judge_renders(), indent=1))
        return
    if args.compare:
        result = compare(*args.compare)
        (OUT / f"scratch_compare_{args.compare[1]}_vs_{args.compare[0]}.json").write_text(
            json.dumps(result, indent=1)
        )
        print(json.dumps(result, indent=1))
        return
    if not args.name:
        ap.error("--name is needed (or --compare A B)")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    pipe, _, _ = load_pipeline(None)
    latents, specs = pool(args, pipe.vae)
    unet = fresh_unet(pipe.unet, args.attn16)
    sched = noise_scheduler("v_prediction", zero_terminal_snr=True)
    T = sched.config.num_train_timesteps
    texts = sorted({caption_for(s, t) for s in specs for t in COUNT_TEMPLATES})
    emb = embed_captions(pipe.text_encoder, pipe.tokenizer, ["", *texts])
    index = {c: i + 1 for i, c in enumerate(texts)}

    def loss_fn(step: int) -> torch.Tensor:
        rng = np.random.default_rng(stable_seed("scratch-probe", step))
        idx = rng.integers(len(specs), size=args.batch_size)
        tmpl = rng.integers(len(COUNT_TEMPLATES), size=args.batch_size)
        drop = rng.random(args.batch_size) < 0.1
        rows = [
            0 if d else index[caption_for(specs[i], COUNT_TEMPLATES[k])]
            for i, k, d in zip(idx, tmpl, drop, strict=True)
        ]
        x0 = latents[idx]
        g = torch.Generator().manual_seed(stable_seed("scratch-noise", step))
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (args.batch_size,), generator=g)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=emb[rows]).sample
        return F.mse_loss(pred, sched.get_velocity(x0, noise, t))

    judge, prompts = Judge.load(None), eval_prompts(args.prompts)
    out = OUT / f"scratch_{args.name}.json"
    curve = json.loads(out.read_text())["curve"] if out.is_file() else {}

    def snapshot(step: int) -> None:
        if str(step) in curve:
            return
        pipe.unet = unet
        row = evaluate(pipe, judge, prompts, args.per_prompt, step, args.name)
        curve[str(step)] = row
        print(f"step {step}: {json.dumps(row)}", flush=True)
        out.write_text(json.dumps({"args": vars(args), "curve": curve}, indent=1) + "\n")

    t0 = time.time()
    unet, _ = train_loop(
        f"scratch_{args.name}",
        unet,
        loss_fn,
        steps=args.steps,
        lr=args.lr,
        warmup=200,
        weight_decay=0.0,
        root=OUT / f"scratch_{args.name}",
        config={"scratch_probe": {k: getattr(args, k) for k in TRAINING_ARGS}},
        checkpointing_steps=500,
        keep=1,
        ema_decay=0.999,
        schedule="cosine",
        snapshot=snapshot,
        snapshot_steps=args.eval_every,
    )
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    final = OUT / f"scratch_{args.name}_images.npz"
    if not final.is_file() or int(np.load(final)["step"]) != args.steps:
        # a run evaluated by an older version, or one whose last step is not a multiple of --eval-every
        pipe.unet = unet
        row = evaluate(pipe, judge, prompts, args.per_prompt, args.steps, args.name)
        curve[str(args.steps)] = row
        out.write_text(json.dumps({"args": vars(args), "curve": curve}, indent=1) + "\n")


if __name__ == "__main__":
    main()
