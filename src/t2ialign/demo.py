"""``make demo``: the loop on the shapes world, as far as it is built, saying what each step did.

Built so far: the prompt set (stage 1), the world's renderer (D_pre) and judge (the simulated labeler),
the world's base models and the generate stage (stage 2), labeling (3) and the reward model (4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from .cli import _tune_allocator
from .cli import main as cli_main

NOT_YET = ("finetune", "sample", "evaluate")


def run_demo(run: Path) -> int:
    t0 = time.time()
    print(f"== 1. prompts: the paper's four categories with seen / unseen splits -> {run}")
    rc = cli_main(["prompts", "--run", str(run)])
    if rc:
        return rc

    from .store import Store
    from .world.judge import Judge, selftest
    from .world.prompts import build_prompt_set, perturb
    from .world.render import grid, render

    print("\n== 2. the pre-training distribution D_pre: renders of one prompt per category")
    prompts = build_prompt_set()
    samples = run / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    picks = {}
    for p in prompts:
        if p.split == "seen" and p.category not in picks:
            picks[p.category] = p
    rows = []
    for p in picks.values():
        rows += [render(p.text, seed=s).image for s in range(8)]
        print(f"  {p.category:12s} {p.text!r}")
    grid(rows, cols=8).save(samples / "pretrain_grid.png")
    print(f"  8 seeds each -> {samples / 'pretrain_grid.png'}")

    print("\n== 3. the judge (simulated labeler): true prompts vs perturbations (Appendix E)")
    judge = Judge.load()
    combo = picks["combination"]
    image = render(combo.text, seed=0).image
    texts = [combo.text, *perturb(combo.text, 4, seed=0)]
    for text, v in zip(texts, judge.judge([image] * len(texts), texts), strict=True):
        print(f"  {v.label:4s} P(match)={v.p_match:.3f}  {text!r}")

    print("\n== 4. judge self-test on 500 fresh renders, clean and degraded")
    report = selftest(judge, n=500, seed=1, progress=False)
    for name, r in report.items():
        print(
            f"  {name:9s} verdicts {r['verdict_accuracy']:.1%} correct, {r['skip_rate']:.1%} skipped; "
            + ", ".join(f"{k} {v:.1%}" for k, v in r["per_attribute"].items())
        )
    print("\n== 5. generate: the world's Stable Diffusion, 4 images for each of 2 prompts per category")
    from .config import GenerateConfig
    from .evaluate.alignment import alignment_report, format_table, judge_stored
    from .generate import generate

    with Store.open(run) as store:
        store.update_metrics(judge_selftest=report)
        counts = store.prompt_counts()
        chosen = []
        for category in picks:
            rows = store.list_prompts(split="seen", category=category)
            chosen += [rows[0]["text"], rows[len(rows) // 2]["text"]]
        cfg = GenerateConfig(images_per_prompt=4, role="eval")
        gen = generate(cfg, store, chosen)
        print(
            f"  {gen['generated']} new images ({gen['already_stored']} already stored) in {gen['seconds']} s"
        )
        images = [
            r for r in store.list_images(model_id=gen["model_id"], role="eval") if r["prompt"] in chosen
        ]
        tiles = [np.asarray(PILImage.open(store.image_path(r["sha256"])).convert("RGB")) for r in images]
        grid(tiles, cols=8).save(samples / "generated_grid.png")
        print(f"  -> {samples / 'generated_grid.png'} (two prompts per row, in category order)")
        print(
            "\n== 6. the judge grades them (a small sample; `t2ialign evaluate-base` measures >= 100 prompts)"
        )
        print("  " + format_table(alignment_report(judge_stored(store, images, judge))).replace("\n", "\n  "))

        print(
            "\n== 7. label: 3 simulated labelers (judge + 5% flips + 5% skips) on fresh images of the same prompts"
        )
        from .labeling.simulate import simulate_labels
        from .labeling.stats import format_table1

        generate(GenerateConfig(images_per_prompt=6, role="human"), store, chosen)
        sim = simulate_labels(store, n_labelers=3, noise=0.05, skip=0.05, judge=judge, progress=False)
        print("  " + format_table1(sim["summary"]["table1"]).replace("\n", "\n  "))
        print(
            f"  Fleiss' kappa {sim['summary']['fleiss_kappa']}; `t2ialign label serve {run}` opens the web app"
        )

        print("\n== 8. reward: r_phi on world-CLIP embeddings, MSE + lambda * prompt classification (Eq. 3)")
        from .config import RewardConfig
        from .models.load import load_clip, resolve_clip_path
        from .reward.train import train_reward

        clip, processor, clip_id = load_clip()
        model, rep = train_reward(
            store, RewardConfig(), clip, processor, clip_id, str(resolve_clip_path(None)[0]), progress=False
        )
        model.save(run / "reward")
        print(f"  trained on {rep['n_train']} labeled images in {rep['seconds']} s -> {run / 'reward'}")
        print("  (a demo-sized dataset; `t2ialign reward eval RUN` measures Fig. 4 on a real one)")

    print(
        f"\nDone in {time.time() - t0:.0f} s: {sum(counts.values())} prompts in {run / 't2ialign.db'}, "
        f"samples in {samples}, metrics in {run / 'metrics.json'}."
    )
    print(f"Not in the demo yet (see the issues): {'; '.join(NOT_YET)}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2ialign.demo", description=__doc__)
    parser.add_argument("--run", default="runs/demo", help="run directory")
    args = parser.parse_args(argv)
    return run_demo(Path(args.run))


if __name__ == "__main__":
    _tune_allocator()
    sys.exit(main())
