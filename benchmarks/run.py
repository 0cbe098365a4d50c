"""``make bench``: throughput of the pieces built so far, each as a ratio against a baseline measured in
the same run (these machines are shared and noisy: compare ratios, not seconds, across runs).

Run: ``python -m benchmarks.run [NAME ...]`` (from the repository root; NAMEs pick benchmarks, e.g.
``finetune``; none runs them all).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np


def _best_of(fn, repeat: int = 5) -> float:
    """Best time of ``repeat`` runs after a warm-up run; with repeat 0, the time of one run (no warm-up)."""
    if repeat == 0:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_render() -> list[dict]:
    """Renderer throughput (D_pre) against the bare cost of its background textures."""
    from t2ialign.world.render import background_texture, render

    n = 200

    def full():
        for i in range(n):
            render("Five red stars in the city", seed=i)

    def textures():
        rng = np.random.default_rng(0)
        for _ in range(n):
            background_texture("city", rng, 64)

    t_full, t_tex = _best_of(full, 3), _best_of(textures, 3)
    return [
        {
            "benchmark": "render 64x64, 5 shapes",
            "value": n / t_full,
            "unit": "img/s",
            "baseline": "background texture only",
            "ratio": t_tex / t_full,
        },
    ]


def bench_judge_batching() -> list[dict]:
    """Judge inference batched (256) against one image per call, same images."""
    import torch

    from t2ialign.world.judge import Judge
    from t2ialign.world.render import render

    torch.set_num_threads(2)
    judge = Judge.load()
    imgs = [render("Three blue hearts on the moon", seed=i).image for i in range(256)]
    t_batch = _best_of(lambda: judge.read(imgs), 3)
    t_single = _best_of(lambda: [judge.read([im]) for im in imgs], 2)
    return [
        {
            "benchmark": "judge read, batch 256",
            "value": len(imgs) / t_batch,
            "unit": "img/s",
            "baseline": "one image per call",
            "ratio": t_single / t_batch,
        },
    ]


_ALLOC_CHILD = """
import sys, time, torch
if sys.argv[1] == "tuned":
    from t2ialign.cli import _tune_allocator
    _tune_allocator()
from t2ialign.world.judge import JudgeNet
torch.set_num_threads(2)
torch.manual_seed(0)
net = JudgeNet()
opt = torch.optim.AdamW(net.parameters())
x = torch.rand(256, 3, 64, 64)
def step():
    loss = sum(v.logsumexp(1).mean() for v in net(x).values())
    opt.zero_grad(); loss.backward(); opt.step()
step()
best = min((lambda t: (step(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(4))
print(best)
"""


def bench_allocator() -> list[dict]:
    """glibc malloc tuning (``cli._tune_allocator``) on a training step, each in a fresh process."""
    times = {}
    for mode in ("default", "tuned"):
        out = subprocess.run(
            [sys.executable, "-c", _ALLOC_CHILD, mode], capture_output=True, text=True, check=True
        )
        times[mode] = float(out.stdout.strip().splitlines()[-1])
    return [
        {
            "benchmark": "judge train step, batch 256, tuned malloc",
            "value": 256 / times["tuned"],
            "unit": "img/s",
            "baseline": "glibc default malloc",
            "ratio": times["default"] / times["tuned"],
        },
    ]


def peak_gflops(dtype_name: str, threads: int = 2) -> float:
    """This machine's matrix-multiply limit: a 2048x2048 matmul in fp32 or bf16 on ``threads`` threads.
    Emulated bf16 (a CPU without AVX512_BF16 or AMX) measures near zero, as it is."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    t = _best_of(lambda: a @ b, 3 if dtype_name == "no" else 1)
    return 2 * 2048**3 / t / 1e9


def generate_flops(pipe, cfg) -> float:
    """FLOPs of one image of ``sample_images`` (text encoder, UNet over the steps with CFG, VAE decoder)."""
    from torch.utils.flop_counter import FlopCounterMode

    from t2ialign.generate.images import sample_images

    counter = FlopCounterMode(display=False)
    with counter:
        sample_images(pipe, ["Two red circles"], [0], dataclasses.replace(cfg, mixed_precision="no"))
    return counter.get_total_flops()


def _compiled_generate(pipe, cfg, ours, t_ours: float, n: int, name: str, share: float) -> dict:
    """The same ``n`` images with ``generate.compile = "inductor"`` against the default in the same run:
    the first run (compiling, once per process) is timed apart, then the best of 2; the UNet is put back
    to eager after. ``share``: the default's share of the matmul limit."""
    compiled = dataclasses.replace(cfg, compile="inductor")
    t_first = _best_of(lambda: ours(compiled), 0)
    t = min(_best_of(lambda: ours(compiled), 0) for _ in range(2))
    pipe.unet._compiled_call_impl = None
    return {
        "benchmark": f"{name}, generate.compile = inductor (first run, compiling: {t_first:.0f} s; "
        f"{share * t_ours / t:.2f} of the matmul limit)",
        "value": n / t,
        "unit": "img/s",
        "baseline": "the default sampler (no compile), same images",
        "ratio": t_ours / t,
    }


def bench_generate(model: str | None = None) -> list[dict]:
    """World-model generation at the default sampler (20 DPM-Solver++ steps, guidance 5): the generate
    stage (batches of 64 across prompts, prompt embeddings once, autocast as ``mixed_precision = auto``
    resolves here) against the stock pipeline called once per prompt in a loop (fp32, 4 images per call),
    same model, steps and images; its FLOPs as a share of this machine's matmul limit in the precision it
    ran in; and, on a CPU that emulates bf16, against the former default (bf16 autocast everywhere)."""
    import torch

    from t2ialign.config import GenerateConfig
    from t2ialign.generate.images import image_seed, resolve_precision, sample_images
    from t2ialign.models.load import load_pipeline
    from t2ialign.world.prompts import build_prompt_set

    torch.set_num_threads(2)
    pipe, _, _ = load_pipeline(model)
    cfg = GenerateConfig()
    precision = resolve_precision(cfg.mixed_precision, pipe.device)
    prompts = [p.text for p in build_prompt_set() if p.split == "seen"][::160][
        :16
    ]  # 16 prompts, 4 categories
    per_prompt = 4
    jobs = [(p, image_seed(0, "bench", p, k)) for p in prompts for k in range(per_prompt)]

    def ours(c=cfg, todo=jobs):
        for i in range(0, len(todo), c.batch_size):
            batch = todo[i : i + c.batch_size]
            sample_images(pipe, [p for p, _ in batch], [s for _, s in batch], c)

    def stock_loop():
        for p in prompts:
            pipe(
                p,
                num_inference_steps=cfg.num_inference_steps,
                num_images_per_prompt=per_prompt,
                guidance_scale=cfg.guidance_scale,
                output_type="np",
            )

    t_ours, t_stock = _best_of(ours, 2), _best_of(stock_loop, 1)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    name = f"generate {size}x{size}, {cfg.num_inference_steps} steps + CFG"
    rate = len(jobs) / t_ours
    flops, peak = generate_flops(pipe, cfg), peak_gflops(precision)
    rows = [
        {
            "benchmark": f"{name} ({'fp32' if precision == 'no' else precision})",
            "value": rate,
            "unit": "img/s",
            "baseline": "stock pipeline, one call per prompt",
            "ratio": t_stock / t_ours,
        },
        {
            "benchmark": f"{name}: {flops / 1e9:.1f} GFLOP per image",
            "value": rate * flops / 1e9,
            "unit": "GFLOP/s",
            "baseline": f"share of this CPU's {precision if precision != 'no' else 'fp32'} matmul limit, "
            f"{peak:.0f} GFLOP/s",
            "ratio": rate * flops / 1e9 / peak,
        },
    ]
    rows.append(_compiled_generate(pipe, cfg, ours, t_ours, len(jobs), name, rate * flops / 1e9 / peak))
    if precision == "no":  # bf16 is emulated here: what the former default cost, on 8 of the images
        few = jobs[:8]
        t_auto = _best_of(lambda: ours(todo=few), 1)
        t_bf16 = _best_of(lambda: ours(dataclasses.replace(cfg, mixed_precision="bf16"), few), 0)
        rows.append(
            {
                "benchmark": f"{name}, 8 images, auto (fp32 here)",
                "value": len(few) / t_auto,
                "unit": "img/s",
                "baseline": "bf16 autocast on a CPU that emulates it (the former default)",
                "ratio": t_bf16 / t_auto,
            }
        )
    return rows


def bench_reward_embed() -> list[dict]:
    """World-CLIP image embedding for the reward's cache: batches of 256 against one image per call."""
    import torch

    from t2ialign.models.embed import embed_images
    from t2ialign.models.load import load_clip
    from t2ialign.world.render import render

    torch.set_num_threads(2)
    clip, proc, _ = load_clip()
    imgs = [render("Three blue hearts on the moon", seed=i).pil() for i in range(512)]
    t_batch = _best_of(lambda: embed_images(clip, proc, imgs, batch_size=256), 3)
    t_single = _best_of(lambda: [embed_images(clip, proc, [im]) for im in imgs[:128]], 1) * 4
    return [
        {
            "benchmark": "reward: embed images (world CLIP), batch 256",
            "value": len(imgs) / t_batch,
            "unit": "img/s",
            "baseline": "one image per call",
            "ratio": t_single / t_batch,
        },
    ]


def bench_reward_train() -> list[dict]:
    """Reward training at the paper's scale on cached embeddings: 23k labeled images, 8 prompts each, the
    default config (30 epochs), with the PC loss against the same training without it (lambda = 0)."""
    import torch

    from t2ialign.config import RewardConfig
    from t2ialign.reward.train import fit_reward

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    m, d, n = 23_000, 128, 8
    x = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1)
    zc = torch.nn.functional.normalize(torch.randn(m, n, d, generator=g), dim=-1)
    y = (torch.rand(m, generator=g) < 0.47).float()  # Table 1: 46.5% good
    cfg = RewardConfig()
    t_pc = _best_of(lambda: fit_reward(x, zc[:, 0], y, y > 0.5, zc, cfg), 0)
    t_mse = _best_of(lambda: fit_reward(x, zc[:, 0], y, y > 0.5, zc, RewardConfig(pc_weight=0.0)), 0)
    return [
        {
            "benchmark": "reward: train, 23k images x 30 epochs, PC loss",
            "value": t_pc,
            "unit": "s",
            "baseline": "same without the PC loss (lambda 0)",
            "ratio": t_pc / t_mse,
        },
    ]


def _labeled_world_images(store, n_prompts: int = 64, per_prompt: int = 4) -> None:
    """Renders of ``n_prompts`` seen prompts, ``per_prompt`` each, labeled good and bad alternately (so each
    prompt has good and bad images: D_human for finetune, pairs for dpo)."""
    import io

    from t2ialign.label.service import submit_labels
    from t2ialign.world.prompts import build_prompt_set
    from t2ialign.world.render import render

    prompts = build_prompt_set()
    store.add_prompts(prompts)
    texts = [p.text for p in prompts if p.split == "seen"][:n_prompts]
    records = []
    for i, t in enumerate(texts * per_prompt):
        buf = io.BytesIO()
        render(t, seed=i).pil().save(buf, format="PNG")
        sha = store.put_image_bytes(buf.getvalue())
        records.append(
            dict(
                sha256=sha,
                prompt_text=t,
                model_id="bench",
                seed=i,
                sampler={},
                role="human",
                width=64,
                height=64,
            )
        )
    ids = store.add_images(records)
    who = store.add_labeler("bench")
    # image k of a prompt is good for odd k: every prompt has both
    submit_labels(store, [(who, i, "good" if (k // n_prompts) % 2 else "bad") for k, i in enumerate(ids)])


def bench_finetune() -> list[dict]:
    """Fine-tuning throughput (Eq. 4, batch 32 of D_model + 32 of D_pre per step, world model): the
    finetune stage (VAE posteriors and text states cached once, one UNet call per step) against a plain
    diffusers-example loop on the same model and batch (VAE encoder and text encoder run every step)."""
    import tempfile
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from t2ialign.config import FinetuneConfig
    from t2ialign.finetune.train import finetune
    from t2ialign.models.load import load_pipeline
    from t2ialign.store import Store
    from t2ialign.world.dataset import PretrainDataset

    torch.set_num_threads(2)
    steps, b = 30, 32
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "run") as store:
        _labeled_world_images(store)
        cfg = FinetuneConfig(
            weights="labels", use_unlabeled=False, max_train_steps=2, pretrain_images=512, use_ema=False
        )  # no EMA: the same work as the example loop below
        finetune(cfg, store, name="warm", progress=False)  # encodes and caches the data once
        rep = finetune(dataclasses.replace(cfg, max_train_steps=steps), store, name="timed", progress=False)
        ours = rep["images_per_second"]

    pipe, _, _ = load_pipeline(None)
    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    unet.train()
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ds = PretrainDataset(2 * b * 4, seed=0)
    batches = [[ds[j] for j in range(i * 2 * b, (i + 1) * 2 * b)] for i in range(4)]

    def plain_step(batch):
        pixels = torch.stack([x["pixel_values"] for x in batch])
        ids = tok(
            [x["caption"] for x in batch],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            cond = te(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(batch),))
        pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad()
        loss.backward()
        opt.step()

    plain_step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        plain_step(batches[i % 4])
    plain = steps * 2 * b / (time.perf_counter() - t0)
    return [
        {
            "benchmark": "finetune: Eq. 4 steps, 32 D_model + 32 D_pre (64x64)",
            "value": ours,
            "unit": "img/s",
            "baseline": "diffusers-example loop (VAE + text encoder every step)",
            "ratio": ours / plain,
        },
    ]


def bench_dpo() -> list[dict]:
    """Diffusion-DPO throughput against finetune on the same world model, steps and images per step (32:
    16 pairs against 32 D_model images, no D_pre, no EMA, full UNet), counting both images of a pair.
    DPO adds the frozen reference's forward (no gradient) to the policy's forward and backward, so the
    ideal ratio is about 3 / 4 = 0.75x; the target is at least 0.65x."""
    import tempfile
    from pathlib import Path

    import torch

    from t2ialign.config import DPOConfig, DPOTrainConfig, FinetuneConfig
    from t2ialign.dpo.train import dpo
    from t2ialign.finetune.train import finetune
    from t2ialign.store import Store

    torch.set_num_threads(2)
    steps = 10
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "run") as store:
        _labeled_world_images(store)
        ft = FinetuneConfig(
            weights="labels", use_unlabeled=False, beta=0.0, train_batch_size=32, use_ema=False
        )
        do = DPOConfig(train=DPOTrainConfig(train_batch_size=16, use_ema=False))
        for n in (2, steps):  # the first run encodes and caches the latents, and warms up
            ft = dataclasses.replace(ft, max_train_steps=n)
            do = dataclasses.replace(do, train=dataclasses.replace(do.train, max_train_steps=n))
            ft_rep = finetune(ft, store, name=f"ft-{n}", progress=False)
            dpo_rep = dpo(do, store, name=f"dpo-{n}", progress=False)
    ours, base = dpo_rep["images_per_second"], ft_rep["images_per_second"]
    return [
        {
            "benchmark": f"dpo: {steps} steps of 16 pairs (both images counted), 64x64; target >= 0.65x",
            "value": ours,
            "unit": "img/s",
            "baseline": "finetune, 32 D_model images per step (ideal 0.75x)",
            "ratio": ours / base,
        },
    ]


def demo_timings(path: str = "runs/demo/metrics.json") -> list[dict]:
    """The last `make demo`'s stage times (seconds), if a demo run exists; the whole demo's budget is 15 min."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        print(f"  (no {path}: run `make demo` for its stage times)", file=sys.stderr)
        return []
    timings = json.loads(p.read_text()).get("timings", {})
    return [
        {
            "benchmark": f"demo stage: {k}",
            "value": v,
            "unit": "s",
            "baseline": "15 min budget (total)",
            "ratio": v / 900,
        }
        for k, v in timings.items()
    ]


BENCHMARKS = [
    bench_render,
    bench_judge_batching,
    bench_allocator,
    bench_generate,
    bench_reward_embed,
    bench_reward_train,
    bench_finetune,
    bench_dpo,
    demo_timings,
]


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv  # e.g. `python -m benchmarks.run finetune generate`
    known = {b.__name__.removeprefix("bench_"): b for b in BENCHMARKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    rows = []
    for short, bench in known.items():
        if names and short not in names:
            continue
        print(f"running {bench.__name__} ...", file=sys.stderr, flush=True)
        rows += bench()
    header = ("benchmark", "value", "unit", "ratio", "baseline")
    table = [
        (r["benchmark"], f"{r['value']:.1f}", r["unit"], f"{r['ratio']:.2f}x", r["baseline"]) for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *table]) for i in range(len(header))]
    for j, line in enumerate([header, *table]):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
