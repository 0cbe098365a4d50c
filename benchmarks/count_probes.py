"""How fast can the world's UNet learn counts once pre-trained? Small probes for issue 14.

Each probe trains a copy of a pre-trained world UNet (the shipped one by default) for ``--steps`` steps on
fresh renders whose captions all state the count (the best data there is: every caption right), then
samples 4 images of each of 300 count-bearing evaluation prompts (count and combination prompts of the
seen split, same prompts and seeds for every probe) and compares the judge's count reading with the
base's on the same prompts and seeds: the paired difference with a 95% bootstrap interval over prompts.

A probe varies one thing at a time:

- ``--t-power p``: timesteps drawn as t = T * u^(1/p), u ~ U(0, 1): p = 1 is the usual uniform draw, p > 1
  puts more of the loss on high noise, where the layout (and so the count) is decided;
- ``--attn16``: self- and cross-attention added at the latent's full resolution (16x16), initialised to
  the identity (zero output projection), so the probe starts from the pre-trained model exactly;
- ``--count-map 1:5,2:4,3:3,4:2,5:1``: the captions' count words follow this map (an image of k shapes is
  captioned with the word of map[k]), and the evaluation asks whether "Two circles" draws the count whose
  word is "two" under the map. Teaching a pre-trained model a new mapping measures how fast a count
  *mapping* moves in fine-tuning, apart from how precisely the model draws a count it has settled on:
  world v5's base will lack the mapping (its captions seldom state counts), not the drawing;
- ``--count-map random``: every caption's count word is drawn uniformly, apart from the image: the
  model keeps drawing counts and loses the mapping from words to counts (world design (a), v4r);
- ``--lr``, ``--steps``, ``--ema``.

Run (about 15-20 minutes each on one core; ``--threads 2`` when nothing else runs):

    python -m benchmarks.count_probes --name uniform --steps 1000
    python -m benchmarks.count_probes --name tpow3 --steps 1000 --t-power 3
    python -m benchmarks.count_probes --name attn16 --steps 1000 --attn16

Results go to ``work/probes/NAME.json`` and ``NAME_grid.png`` (base left, probe right, same seeds; the
base's images, generated once, to ``work/probes/base_images_REVISION_PxK.npz``). ``--save DIR`` also
writes the trained pipeline. docs/world.md records what each probe measured.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from t2ialign.config import GenerateConfig
from t2ialign.core.seeds import stable_seed
from t2ialign.evaluate.paired import paired_bootstrap
from t2ialign.generate.images import sample_images
from t2ialign.models.load import load_pipeline, resolve_sd_path
from t2ialign.pretrain.train import embed_captions, noise_scheduler, train_loop
from t2ialign.world import vocab
from t2ialign.world.dataset import caption_for
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import PromptSpec, build_prompt_set
from t2ialign.world.render import render

COUNT_TEMPLATES = ("count", "combination", "count_color", "count_background")
OUT = Path("work/probes")


def eval_prompts(n: int = 300, seed: int = 0) -> list:
    """n count-bearing prompts (count and combination, seen split), the same for every probe."""
    rows = [p for p in build_prompt_set() if p.split == "seen" and p.category in ("count", "combination")]
    counts = [p for p in rows if p.category == "count"]
    combos = [p for p in rows if p.category == "combination"]
    random.Random(f"count-probe:{seed}").shuffle(combos)
    return (counts + combos)[:n]


def full_res_attention_config(config) -> dict:
    """A UNet config (without diffusers' private keys) with attention at its first level too, one head."""
    cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    down = list(cfg["down_block_types"])
    up = list(cfg["up_block_types"])
    down[0], up[-1] = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"
    heads = cfg["attention_head_dim"]
    heads = [heads] * len(down) if isinstance(heads, int) else list(heads)
    heads[0] = 1  # one head at 16x16: 1.6x the cost of the base layout instead of 2.6x with eight
    cfg.update(down_block_types=tuple(down), up_block_types=tuple(up), attention_head_dim=tuple(heads))
    return cfg


def add_full_res_attention(unet):
    """A copy of ``unet`` with (self + cross) attention at its first level too, one head there, whose output
    projections start at zero: the residual makes the new blocks the identity, so the copy computes what
    ``unet`` does until training moves them."""
    from diffusers import UNet2DConditionModel

    new = UNet2DConditionModel(**full_res_attention_config(unet.config))
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise RuntimeError(f"layouts differ beyond the new attention: {unexpected[:3]} {missing[:3]}")
    for block in (new.down_blocks[0], new.up_blocks[-1]):
        for attn in block.attentions:
            torch.nn.init.zeros_(attn.proj_out.weight)
            torch.nn.init.zeros_(attn.proj_out.bias)
    return new


def train(pipe, args) -> None:
    """``args.steps`` steps of the UNet on count-stating renders, on the project's training loop
    (``pretrain.train.train_loop``: AdamW, clipping at 1, optional EMA; constant learning rate)."""
    unet, vae = pipe.unet, pipe.vae
    sched = noise_scheduler("v_prediction", zero_terminal_snr=True)
    T = sched.config.num_train_timesteps
    cache: dict[str, torch.Tensor] = {}

    def embed(captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            cache.update(
                zip(missing, embed_captions(pipe.text_encoder, pipe.tokenizer, missing), strict=True)
            )
        return torch.stack([cache[c] for c in captions])

    def loss_fn(step: int) -> torch.Tensor:
        rng = np.random.default_rng(stable_seed("count-probe", args.seed, step))
        scenes = [
            PromptSpec(
                shape=vocab.values("shape")[rng.integers(len(vocab.SHAPES))],
                count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)),
                color=vocab.values("color")[rng.integers(len(vocab.COLORS))],
                background=vocab.values("background")[rng.integers(len(vocab.BACKGROUNDS))],
            )
            for _ in range(args.batch_size)
        ]
        named = [  # the caption's count word: mapped, or (count map "random") drawn apart from the image
            replace(s, count=int(rng.integers(vocab.MIN_COUNT, vocab.MAX_COUNT + 1)))
            if args.random_words
            else replace(s, count=args.count_map[s.count])
            for s in scenes
        ]
        captions = [caption_for(s, COUNT_TEMPLATES[rng.integers(len(COUNT_TEMPLATES))]) for s in named]
        if args.cfg_dropout:
            captions = [c if rng.random() >= args.cfg_dropout else "" for c in captions]
        images = np.stack([render(s, seed=int(rng.integers(2**62))).image for s in scenes])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            x0 = vae.encode(x).latent_dist.mean * vae.config.scaling_factor  # (B, 4, 16, 16)
        g = torch.Generator().manual_seed(stable_seed("count-probe-noise", args.seed, step))
        noise = torch.randn(x0.shape, generator=g)
        u = torch.rand(args.batch_size, generator=g)
        t = (T * u ** (1.0 / args.t_power)).long().clamp(0, T - 1)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=embed(captions)).sample
        return F.mse_loss(pred, sched.get_velocity(x0, noise, t))

    # a probe is short and not resumed: its one checkpoint goes to a folder that is deleted afterwards
    with tempfile.TemporaryDirectory() as root:
        train_loop(
            args.name,
            unet,
            loss_fn,
            steps=args.steps,
            lr=args.lr,
            warmup=0,
            weight_decay=0.0,
            root=Path(root),
            config={"count_probe": args.name},
            checkpointing_steps=args.steps,
            keep=1,
            ema_decay=0.999 if args.ema else None,
            schedule="constant",
        )


def sample_eval(
    pipe, prompts, per_prompt: int, batch: int = 128, cfg: GenerateConfig | None = None
) -> np.ndarray:
    """The probes' evaluation images: ``per_prompt`` seeded images of each prompt (``cfg``: the sampler's
    settings, default GenerateConfig())."""
    texts = [p.text for p in prompts for _ in range(per_prompt)]
    seeds = [stable_seed("count-probe-eval", p.text, k) % 2**31 for p in prompts for k in range(per_prompt)]
    cfg = cfg or GenerateConfig()
    out = []
    for i in tqdm(range(0, len(texts), batch), desc="sample"):
        out += sample_images(pipe, texts[i : i + batch], seeds[i : i + batch], cfg)
    return np.stack(out)


def count_hits(
    judge, images: np.ndarray, prompts, per_prompt: int, wanted: dict[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list]:
    """(prompts, per_prompt) count read right (the asked count, or ``wanted[asked]`` under a count map),
    aligned (good), and the read counts."""
    specs = [p.spec for p in prompts for _ in range(per_prompt)]
    verdicts = judge.judge(list(images), specs)
    read = [v.reading["count"][0] for v in verdicts]
    wanted = wanted or {k: k for k in vocab.COUNT_WORDS}
    hit = np.array([r == wanted[s.count] for r, s in zip(read, specs, strict=True)], float)
    good = np.array([v.label == "good" for v in verdicts], float)
    return hit.reshape(len(prompts), per_prompt), good.reshape(len(prompts), per_prompt), read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default=None, help="a world pipeline folder; default: the shipped one")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--t-power", type=float, default=1.0)
    ap.add_argument("--attn16", action="store_true")
    ap.add_argument("--ema", action="store_true")
    ap.add_argument("--cfg-dropout", type=float, default=0.1)
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-only", action="store_true", help="judge a finished probe's saved images again")
    ap.add_argument("--judge", default=None, help="a judge folder; default: the shipped judge")
    ap.add_argument(
        "--count-map",
        default=None,
        help="e.g. 1:5,2:4,3:3,4:2,5:1 (default: the identity); 'random': count words drawn apart from the image",
    )
    ap.add_argument("--save", type=Path, default=None, help="write the trained pipeline to this new folder")
    args = ap.parse_args()
    args.random_words = args.count_map == "random"
    args.count_map = _count_map(None if args.random_words else args.count_map, ap)
    if args.save is not None and args.save.exists():
        ap.error(f"--save {args.save} exists; pass a new folder")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    prompts = eval_prompts(args.prompts)
    pipe, model_id, revision = load_pipeline(args.model)
    base_file = OUT / f"base_images_{revision}_{args.prompts}x{args.per_prompt}.npz"
    probe_file = OUT / f"{args.name}_images.npz"
    if args.judge_only:
        meta = json.loads((OUT / f"{args.name}.json").read_text())
        report(args, prompts, model_id, meta["train_seconds"], base_file, probe_file)
        return
    pipe.set_progress_bar_config(disable=True)
    if base_file.is_file():
        base_images = np.load(base_file)["images"]
    else:
        base_images = sample_eval(pipe, prompts, args.per_prompt)
        np.savez_compressed(base_file, images=base_images)
    t0 = time.time()
    if args.attn16:
        pipe.unet = add_full_res_attention(pipe.unet)
    if args.steps:
        train(pipe, args)
    train_s = time.time() - t0
    if args.save is not None:
        save_pipeline(pipe, args, train_s)
    np.savez_compressed(probe_file, images=sample_eval(pipe, prompts, args.per_prompt))
    (OUT / f"{args.name}.json").write_text(
        json.dumps({"args": _args_json(args), "train_seconds": train_s}) + "\n"
    )
    report(args, prompts, model_id, train_s, base_file, probe_file)


def save_pipeline(pipe, args, train_s: float) -> None:
    """The probe's pipeline as a stock-loadable folder: the source pipeline with the trained UNet
    (safetensors), and in t2ialign.json the probe's arguments beside the source's provenance."""
    source, _ = resolve_sd_path(args.model)
    tmp = args.save.with_name(args.save.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("unet"))
    pipe.unet.save_pretrained(tmp / "unet", safe_serialization=True)
    meta_file = tmp / "t2ialign.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta["count_probe"] = {
        "source": str(source),
        "args": _args_json(args),
        "train_seconds": round(train_s, 1),
    }
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.rename(args.save)


def _args_json(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _count_map(text: str | None, ap: argparse.ArgumentParser) -> dict[int, int]:
    counts = sorted(vocab.COUNT_WORDS)
    if text is None:
        return {k: k for k in counts}
    try:
        pairs = dict(tuple(int(x) for x in item.split(":")) for item in text.split(","))
    except ValueError:
        ap.error(f"--count-map {text!r}: write k:word_count pairs, e.g. 1:5,2:4,3:3,4:2,5:1")
    if sorted(pairs) != counts or sorted(pairs.values()) != counts:
        ap.error(f"--count-map {text!r} must map {counts} one to one onto itself")
    return pairs


def report(args, prompts, model_id, train_s, base_file, probe_file) -> None:
    """Judge the base's and the probe's images (same prompts and seeds) and write NAME.json."""
    judge = Judge.load(args.judge)
    base_images, images = np.load(base_file)["images"], np.load(probe_file)["images"]
    # under a count map, the word of map[k] asks for k shapes
    wanted = {v: k for k, v in args.count_map.items()}
    base_hit, base_good, base_read = count_hits(judge, base_images, prompts, args.per_prompt, wanted)
    hit, good, read = count_hits(judge, images, prompts, args.per_prompt, wanted)
    asked = np.array([p.spec.count for p in prompts])
    per_count = {
        vocab.COUNT_WORDS[k]: [
            round(float(base_hit[asked == k].mean()), 3),
            round(float(hit[asked == k].mean()), 3),
        ]
        for k in vocab.COUNT_WORDS
    }
    reads_asked = np.repeat(asked, args.per_prompt)

    def mean_read(reads: list) -> dict:
        """Mean count read per asked count word (6+ counted as 6)."""
        return {
            vocab.COUNT_WORDS[k]: round(
                float(np.mean([r for r, a in zip(reads, reads_asked, strict=True) if a == k])), 2
            )
            for k in vocab.COUNT_WORDS
        }

    result = {
        "args": _args_json(args),
        "model": model_id,
        "n_prompts": len(prompts),
        "n_images": int(hit.size),
        "train_seconds": round(train_s, 1),
        "count_accuracy": {"base": round(float(base_hit.mean()), 4), "probe": round(float(hit.mean()), 4)},
        "count_paired": paired_bootstrap(base_hit, hit),
        "aligned": {"base": round(float(base_good.mean()), 4), "probe": round(float(good.mean()), 4)},
        "aligned_paired": paired_bootstrap(base_good, good),
        "per_count_base_probe": per_count,
        "mean_read_count_base": mean_read(base_read),
        "mean_read_count_probe": mean_read(read),
    }
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_grid(OUT / f"{args.name}_grid.png", prompts, base_images, images, args.per_prompt)
    print(json.dumps(result, indent=1))


def write_grid(path: Path, prompts, base_images, images, per_prompt: int, rows: int = 8) -> None:
    """A look at the images: the first ``rows`` count-only prompts, the base's seeds on the left and the
    probe's same seeds on the right."""
    from PIL import Image, ImageDraw

    picked = [i for i, p in enumerate(prompts) if p.spec.color is None and p.spec.background is None]
    size = images.shape[1]
    canvas = Image.new("RGB", (200 + 2 * per_prompt * size + 8, rows * (size + 12)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, i in enumerate(picked[:rows]):
        y = r * (size + 12)
        draw.text((2, y + size // 2 - 6), prompts[i].text[:32], fill="black")
        for k in range(per_prompt):
            canvas.paste(Image.fromarray(base_images[i * per_prompt + k]), (200 + k * size, y))
            canvas.paste(Image.fromarray(images[i * per_prompt + k]), (208 + (per_prompt + k) * size, y))
    canvas.save(path)


if __name__ == "__main__":
    main()
