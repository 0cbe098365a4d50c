"""Probes for the generate stage's fp32 speed (docs/throughput.md): each variant against fp32 at batch 64
on the same 128 images of 32 seen prompts, in one process, best of 2 after a warm-up, with the largest
pixel difference from the reference images.

Run: ``python -m benchmarks.generate_probes [b128] [channels_last] [math] [compile]``
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import numpy as np

VARIANTS = ("b128", "channels_last", "math", "compile")


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from t2ialign.config import GenerateConfig
    from t2ialign.generate.images import image_seed, sample_images
    from t2ialign.models.load import load_pipeline
    from t2ialign.world.prompts import build_prompt_set

    names = sys.argv[1:] if argv is None else argv
    if unknown := [n for n in names if n not in VARIANTS]:
        print(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    pipe, _, _ = load_pipeline(None)
    cfg = GenerateConfig(mixed_precision="no")
    prompts = [p.text for p in build_prompt_set() if p.split == "seen"][::80][:32]
    jobs = [(p, image_seed(0, "bench", p, k)) for p in prompts for k in range(4)]

    def run(c=cfg):
        out = []
        for i in range(0, len(jobs), c.batch_size):
            b = jobs[i : i + c.batch_size]
            out += sample_images(pipe, [p for p, _ in b], [s for _, s in b], c)
        return out

    def best(c=cfg, ctx=contextlib.nullcontext):
        times = []
        with ctx():
            for _ in range(2):
                t = time.perf_counter()
                images = run(c)
                times.append(time.perf_counter() - t)
        return min(times), images

    run()  # warm-up
    t0, ref = best()
    print(f"fp32, batch 64: {len(jobs) / t0:.2f} img/s", flush=True)
    for name in names:
        if name == "b128":
            t, images = best(dataclasses.replace(cfg, batch_size=128))
        elif name == "channels_last":
            for m in (pipe.unet, pipe.vae):
                m.to(memory_format=torch.channels_last)
            t, images = best()
            for m in (pipe.unet, pipe.vae):
                m.to(memory_format=torch.contiguous_format)
        elif name == "math":
            t, images = best(ctx=lambda: sdpa_kernel(SDPBackend.MATH))
        else:
            forward = pipe.unet.forward
            pipe.unet.forward = torch.compile(forward)
            t1 = time.perf_counter()
            run()
            print(f"compile and a first run: {time.perf_counter() - t1:.0f} s", flush=True)
            t, images = best()
            pipe.unet.forward = forward
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ref, images, strict=True))
        print(
            f"{name}: {len(jobs) / t:.2f} img/s, {t0 / t:.2f}x, largest pixel difference {diff}", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
