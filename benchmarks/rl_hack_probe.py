"""Probe: does a short DDPO run hack a saturation reward, so that the guard fires? (docs/rl.md)

Run: ``python -m benchmarks.rl_hack_probe [tiny|loud|passthrough|world] [--lora-lr 3e-2] [--full-lr 1e-2]
[--steps 16] [--images-per-prompt 4] [--window 1] [--inner-epochs 1]``

``tiny`` is the tests' tiny pipeline, ``loud`` the same with its VAE decoder's output layer scaled by 20,
``passthrough`` the same with a decoder that passes latent channels 0-2 through as colours
(tests/test_rl.py's ``passthrough_pipeline``), ``world`` the shipped world model. The run uses
tests/test_rl.py's ``small()`` settings (2 prompts x ``--images-per-prompt`` images a step, 3 DDIM steps),
the guard every 2 steps with window ``--window``, and prints the probe reward, saturation, alignment
(CLIP score), FD_CLIP and diversity curves and the alerts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch
    from diffusers import StableDiffusionPipeline

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_rl  # its small() config
    from t2ialign.config import RLGuardConfig
    from t2ialign.models.load import resolve_sd_path
    from t2ialign.models.tiny import build_tiny_clip, build_tiny_pipeline
    from t2ialign.rl import train as rl_train
    from t2ialign.store import Store
    from t2ialign.world.prompts import build_prompt_set

    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=("tiny", "loud", "passthrough", "world"))
    ap.add_argument("--lora-lr", type=float, default=3e-2)
    ap.add_argument("--full-lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--inner-epochs", type=int, default=1)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    tiny, clip = build_tiny_pipeline(tmp / "sd"), build_tiny_clip(tmp / "clip")
    model, guard_clip = str(tiny), str(clip)
    if args.model == "loud":
        pipe = StableDiffusionPipeline.from_pretrained(tiny, local_files_only=True)
        with torch.no_grad():
            pipe.vae.decoder.conv_out.weight.mul_(20.0)
        pipe.save_pretrained(tmp / "loud")
        model = str(tmp / "loud")
    elif args.model == "passthrough":
        model = str(test_rl.passthrough_pipeline(tiny, tmp / "passthrough"))
    elif args.model == "world":
        model, guard_clip = str(resolve_sd_path(None)[0]), None
    with Store.open(tmp / "run") as store:
        store.add_prompts(build_prompt_set())
    for name, train in (
        ("lora", dict(learning_rate=args.lora_lr)),
        ("full", dict(learning_rate=args.full_lr, lora_rank=0)),
    ):
        cfg = test_rl.small(
            model, clip, train=dict(max_train_steps=args.steps, checkpointing_steps=10**6, **train)
        )
        cfg.reward = "python:test_rl:saturation_reward"  # tests/ is on sys.path above
        n = args.images_per_prompt
        cfg.sample = replace(cfg.sample, images_per_prompt=n, batch_size=max(cfg.sample.batch_size, 2 * n))
        cfg.train.train_batch_size = n
        cfg.num_inner_epochs = args.inner_epochs
        cfg.guard = RLGuardConfig(
            every=2, window=args.window, n_prompts=2, seeds=2, clip=guard_clip, alignment="clip"
        )
        with Store.open(tmp / "run") as store:
            report = rl_train.rl(cfg, store, name, progress=False)
        g = report["guard"]
        print(f"{args.model} {name}:")
        for m in ("reward", "saturation", "alignment", "fd_clip", "diversity"):
            print(f"  {m}: {' '.join(f'{x:.3f}' for x in g[m])}")
        print(f"  alerts: {len(report['alerts'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
