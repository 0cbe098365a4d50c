"""Probes for the generate stage's speed (docs/throughput.md): each variant against the plain sampler at
batch 64 (fp32, or bf16 autocast with ``--bf16``) on the same images (``--prompts`` seen prompts x
``--per-prompt`` seeds), in one process, best of 2 after a warm-up, with the largest pixel difference from
the reference images. ``--judge`` also judges every variant's images and prints the paired difference of
judged alignment from the reference's (95% bootstrap over prompts), so that a faster variant is shown
to draw images as good, not only similar ones.

Run: ``python -m benchmarks.generate_probes [--bf16] [--judge] [--prompts 32] [--per-prompt 4] VARIANT...``
with variants b128, channels_last, math, compile (``generate.compile = "inductor"``, the shipped path),
bf16_weights (with ``--bf16``: the UNet's and VAE's weights stored in bf16 rather than cast under autocast
at every batch).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time

import numpy as np

VARIANTS = ("b128", "channels_last", "math", "compile", "bf16_weights")
CONFIG_CHANGES = {"b128": {"batch_size": 128}, "compile": {"compile": "inductor"}}  # the others: _variant


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", choices=VARIANTS)
    ap.add_argument("--bf16", action="store_true", help="the reference (and every variant) in bf16 autocast")
    ap.add_argument("--judge", action="store_true", help="paired judged alignment against the reference")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--per-prompt", type=int, default=4)
    args = ap.parse_args(argv)
    if "bf16_weights" in args.variants and not args.bf16:
        ap.error("bf16_weights compares against bf16 autocast: pass --bf16")
    if args.prompts < 1 or args.per_prompt < 1:
        ap.error("--prompts and --per-prompt must be >= 1")
    return args


@contextlib.contextmanager
def _variant(name, pipe):
    """The pipeline changed as ``name`` says for the duration, then put back as it was."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parts = (pipe.unet, pipe.vae)
    if name == "channels_last":
        for m in parts:
            m.to(memory_format=torch.channels_last)
        yield
        for m in parts:
            m.to(memory_format=torch.contiguous_format)
    elif name == "bf16_weights":
        kept = [{k: v.clone() for k, v in m.state_dict().items()} for m in parts]
        for m in parts:
            m.to(torch.bfloat16)
        yield
        for m, state in zip(parts, kept, strict=True):
            m.to(torch.float32).load_state_dict(state)  # the fp32 weights, not bf16's rounding
    elif name == "math":
        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        yield
        if name == "compile":
            pipe.unet._compiled_call_impl = None  # back to the eager module


def main(argv: list[str] | None = None) -> int:
    import torch

    from t2ialign.config import GenerateConfig
    from t2ialign.evaluate.paired import paired_bootstrap
    from t2ialign.generate.images import image_seed, sample_images
    from t2ialign.models.load import load_pipeline
    from t2ialign.world.prompts import build_prompt_set

    args = _parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(2)
    pipe, _, _ = load_pipeline(None)
    cfg = GenerateConfig(mixed_precision="bf16" if args.bf16 else "no")
    seen = [p.text for p in build_prompt_set() if p.split == "seen"]
    # every 80th seen prompt (the earlier tables' 32), closer together when more are asked for
    prompts = seen[:: min(80, max(1, len(seen) // args.prompts))][: args.prompts]
    jobs = [(p, image_seed(0, "bench", p, k)) for p in prompts for k in range(args.per_prompt)]

    def run(c):
        out = []
        for i in range(0, len(jobs), c.batch_size):
            b = jobs[i : i + c.batch_size]
            out += sample_images(pipe, [p for p, _ in b], [s for _, s in b], c)
        return out

    def best(c):
        times = []
        for _ in range(2):
            t = time.perf_counter()
            images = run(c)
            times.append(time.perf_counter() - t)
        return min(times), images

    judge = None
    if args.judge:
        from t2ialign.world.judge import Judge

        judge = Judge.load()

    def aligned(images):  # per prompt, the judge's good (1) / not (0) over its seeds
        good = [v.label == "good" for v in judge.judge(images, [p for p, _ in jobs])]
        return np.array(good, dtype=float).reshape(len(prompts), args.per_prompt)

    run(cfg)  # warm-up
    t0, ref = best(cfg)
    print(f"{'bf16 autocast' if args.bf16 else 'fp32'}, batch 64: {len(jobs) / t0:.2f} img/s", flush=True)
    ref_aligned = aligned(ref) if judge else None
    if judge:
        print(f"judged aligned, reference: {ref_aligned.mean():.1%} of {ref_aligned.size}", flush=True)
    for name in args.variants:
        c = dataclasses.replace(cfg, **CONFIG_CHANGES.get(name, {}))
        with _variant(name, pipe):
            if name == "compile":
                t1 = time.perf_counter()
                run(c)
                print(f"compile and a first run: {time.perf_counter() - t1:.0f} s", flush=True)
            t, images = best(c)
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ref, images, strict=True))
        line = f"{name}: {len(jobs) / t:.2f} img/s, {t0 / t:.2f}x, largest pixel difference {diff}"
        if judge:
            stat = paired_bootstrap(ref_aligned, aligned(images))
            lo, hi = stat["ci95"]
            line += f"; judged aligned {100 * stat['delta']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
