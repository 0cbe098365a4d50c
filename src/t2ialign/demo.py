"""``make demo``: the whole loop of the paper on the shapes world, from prompts to report.html.

prompts -> D_pre and the judge -> feedback images (human + unlabeled) -> simulated labelers (Table 1) ->
reward model (Eq. 1-3) and its evaluation against CLIP score (Fig. 4) -> fine-tuning (Eq. 4) with the
Table 2 ablation -> rejection sampling -> evaluation on 60 seen + 60 unseen prompts (9 images each per
model, paired with base on the same seeds) -> side-by-side votes (Fig. 3, 4 images per prompt) ->
report.html. Each step says what it did; stage times go to metrics.json ("timings").

``--scale paper`` runs at the paper's sizes (2,700 feedback prompts, ~27k labeled and ~16k unlabeled
images, 120 evaluation prompts, 20 judged images of each per model) and states its expected time first.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from t2ialign.cli import _tune_allocator


@dataclass(frozen=True)
class Scale:
    """How big a demo run is."""

    feedback_prompts: int | None  # None = every seen prompt but the evaluation ones
    human_per_prompt: int  # images labeled by the simulated labelers (D_human)
    unlabeled_per_prompt: int  # D_unlabel
    finetune_steps: int  # optimizer steps of each fine-tuning run (each Table 2 column)
    pretrain_images: int  # D_pre examples encoded for the pre-training loss
    reward_seeds: int  # seeds of the Fig. 4 evaluation
    unseen_labeled_prompts: int  # per unseen split: labeled prompts for Fig. 4's unseen sets
    n_eval: int  # 60 seen + 60 unseen in the paper
    # Judged images per evaluation prompt of every model (the same seeds: evaluate.paired pairs them). The
    # issue asks for >= 1,000 per model in the demo and >= 2,000 at the paper's scale: 120 x 9 = 1,080 and
    # 120 x 20 = 2,400. Rejection sampling then keeps the best 9 of 36 (best 20 of 80) candidates; the
    # demo's ~7,600 evaluation images (base, 3 fine-tuned models, rejection's extra candidates) are what its
    # 15 minutes allow. Fig. 3 still shows 4 images of each of the 120 prompts.
    eval_images_per_prompt: int


SCALES = {
    "demo": Scale(120, 6, 4, 200, 2_000, 3, 40, 60, 9),
    "paper": Scale(None, 10, 6, 3_000, 20_000, 3, 200, 60, 20),
}
# The guidance scale the fine-tuned models are sampled at. They are trained on the base's own samples at the
# pipeline's guidance (5 for the world), so sampling them at 5 again applies the guidance twice: on world
# v7 the same fine-tuned UNet costs +87% FD_CLIP at guidance 5 and +8% at 3, with its shapes and colors
# back (docs/world.md, "Guidance 3 and 4, paired"). Base and rejection sampling keep the pipeline's own.
FINETUNED_GUIDANCE = 3.0
# Throughputs of the demo's stages as measured by `make demo` on the 2-core machines, to state the expected
# time of a run before it starts: on a CPU that computes bf16 natively (AVX512_BF16 or AMX), where sampling
# runs in bf16, and on one that does not (AVX2 only: fp32; sitting 20, world v7, 2,057 s in all).
RATES = {"generate_img_s": 16.5, "finetune_img_s": 190.0, "judge_img_s": 900.0}
RATES_FP32 = {"generate_img_s": 6.0, "finetune_img_s": 100.0, "judge_img_s": 900.0}


def expected_minutes(scale: Scale, n_feedback: int, bf16: bool = True) -> float:
    gen = n_feedback * (scale.human_per_prompt + scale.unlabeled_per_prompt)
    gen += 2 * scale.unseen_labeled_prompts * scale.human_per_prompt  # Fig. 4's unseen sets
    # base + 3 fine-tuned models x m images per prompt, and rejection sampling's 4m candidates of which the
    # first m are base's images
    gen += 2 * scale.n_eval * (4 + 3) * scale.eval_images_per_prompt
    ft = 3 * scale.finetune_steps * 64  # three Table 2 runs, 32 + 32 images per step
    judge = 3 * gen
    rates = RATES if bf16 else RATES_FP32
    return (
        gen / rates["generate_img_s"] + ft / rates["finetune_img_s"] + judge / rates["judge_img_s"]
    ) / 60 + 2


def get_scale(scale_name: str, finetune_steps: int | None = None) -> Scale:
    """The named scale, with its fine-tuning steps replaced when ``finetune_steps`` is given."""
    scale = SCALES[scale_name]
    if finetune_steps is None:
        return scale
    if finetune_steps < 1:
        raise ValueError(f"--finetune-steps must be >= 1, got {finetune_steps}")
    return replace(scale, finetune_steps=finetune_steps)


def plan(scale_name: str, finetune_steps: int | None = None) -> str:
    """What a run of this scale does and about how long it takes, before anything runs."""
    import torch

    from t2ialign.generate.images import native_bf16
    from t2ialign.world.prompts import build_prompt_set

    scale = get_scale(scale_name, finetune_steps)
    bf16 = native_bf16(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    seen = sum(p.split == "seen" for p in build_prompt_set())
    n_fb = (seen - scale.n_eval) if scale.feedback_prompts is None else scale.feedback_prompts
    return (
        f"scale {scale_name}: {n_fb} feedback prompts x {scale.human_per_prompt} labeled images "
        f"({n_fb * scale.human_per_prompt:,}) + {scale.unlabeled_per_prompt} unlabeled "
        f"({n_fb * scale.unlabeled_per_prompt:,}); {2 * scale.unseen_labeled_prompts} unseen prompts labeled for "
        f"Fig. 4; 3 fine-tuning runs of {scale.finetune_steps} steps; {2 * scale.n_eval} evaluation prompts "
        f"x {scale.eval_images_per_prompt} images = {2 * scale.n_eval * scale.eval_images_per_prompt:,} judged "
        "images per model. "
        f"Expected time on a 2-core CPU: about {expected_minutes(scale, n_fb, bf16):.0f} minutes"
        + (
            "."
            if bf16
            else " (this CPU has no native bf16, so sampling runs in fp32; "
            f"about {expected_minutes(scale, n_fb):.0f} on one that has)."
        )
    )


STAGES = {  # each stage's key in metrics.json "timings", and the title printed as it starts
    "prompts": "1. prompts: the paper's four categories with seen / unseen splits -> {run}",
    "world": "2. the world: D_pre renders, and the judge (the simulated labeler) on fresh renders",
    "generate": "3. generate D_human and D_unlabel with the world's Stable Diffusion",
    "label": "4. label: 3 simulated labelers (judge + 5% flips + 5% skips) -> Table 1",
    "reward": "5. reward: r_phi on world-CLIP embeddings, MSE + lambda * prompt classification",
    "reward_eval": "6. Fig. 4: pairwise accuracy of the reward vs CLIP score, 3 seeds",
    "finetune": "7. fine-tune the UNet on Eq. 4: the three columns of Table 2",
    "evaluate": "8. evaluate: base, fine-tuned (x3) and rejection sampling (best {m} of {four_m}), "
    "{m} images per prompt, paired with base",
    "side_by_side": "9. Fig. 3: side-by-side votes of 9 simulated raters per prompt",
    "report": "10. report",
}


@contextmanager
def _stage(timings: dict[str, float], name: str, **fields):
    """Print a stage's title (``fields`` fill it in), run it, and record and print its time."""
    print(f"\n== {STAGES[name].format(**fields)}", flush=True)
    t0 = time.time()
    yield
    timings[name] = round(time.time() - t0, 1)
    print(f"   ({timings[name]:.0f} s)", flush=True)


def run_demo(run: Path, scale_name: str = "demo", finetune_steps: int | None = None) -> int:
    from t2ialign.models.load import load_clip, resolve_clip_path
    from t2ialign.report.html import write_report
    from t2ialign.store import Store

    scale = get_scale(scale_name, finetune_steps)
    print(plan(scale_name, finetune_steps), flush=True)
    timings: dict[str, float] = {}
    t_start = time.time()
    m = scale.eval_images_per_prompt
    stage = functools.partial(_stage, timings, run=run, m=m, four_m=4 * m)
    run.mkdir(parents=True, exist_ok=True)
    (run / "samples").mkdir(exist_ok=True)
    with Store.open(run) as store:
        with stage("prompts"):
            feedback, held_out = _prompts(store, scale)
        with stage("world"):
            judge = _world(store, run / "samples")
        with stage("generate"):
            _generate(store, scale, feedback, held_out)
        with stage("label"):
            _label(store, judge, run)
        clip = (*load_clip(), str(resolve_clip_path(None)[0]))  # model, processor, id, folder
        with stage("reward"):
            _reward(store, clip, run)
        with stage("reward_eval"):
            _reward_eval(store, clip, scale, run)
        with stage("finetune"):
            _finetune(store, scale, run)
        with stage("evaluate"):
            _evaluate(store, scale, judge, run)
        with stage("side_by_side"):
            _side_by_side(store, judge)
        with stage("report"):
            path = write_report(store)
        store.update_metrics(timings={**timings, "total": round(time.time() - t_start, 1)})
        write_report(store)  # again, now with the report's own timing and the total
    print(f"\nDone in {time.time() - t_start:.0f} s. Report: {path.resolve()}")
    return 0


def _prompts(store, scale: Scale) -> tuple[list[str], list[str]]:
    """Stage 1: the prompt set; returns the feedback prompts and the held-out unseen ones (labeled only to
    test the reward). The evaluation prompts are never given feedback."""
    from t2ialign.evaluate.run import balanced_sample, evaluation_prompts, feedback_prompts
    from t2ialign.world.prompts import build_prompt_set

    if not store.list_prompts():
        store.add_prompts(build_prompt_set())
    counts = store.prompt_counts()
    eval_groups = evaluation_prompts(store, scale.n_eval, scale.n_eval)
    rows = feedback_prompts(store, scale.n_eval, scale.n_eval)
    if scale.feedback_prompts is not None:
        keep = set(balanced_sample(rows, scale.feedback_prompts, "demo-feedback"))
        rows = [r for r in rows if r["text"] in keep]
    feedback = [r["text"] for r in rows]
    # labeled images of unseen prompts and objects: Fig. 4's held-out sets, never trained on
    held_out = [
        t
        for split in ("unseen_prompt", "unseen_object")
        for t in balanced_sample(
            feedback_prompts(store, scale.n_eval, scale.n_eval, split=split),
            scale.unseen_labeled_prompts,
            f"demo-{split}",
        )
    ]
    print(
        f"  {sum(counts.values())} prompts; {len(feedback)} for feedback, {len(held_out)} unseen ones "
        "labeled only to test the reward; evaluation: "
        + ", ".join(f"{len(v)} {k}" for k, v in eval_groups.items())
        + " (never given feedback)"
    )
    return feedback, held_out


def _world(store, samples: Path):
    """Stage 2: a grid of D_pre renders, the judge on a prompt and its perturbations, and its selftest;
    returns the judge (the simulated labeler of every later stage)."""
    from t2ialign.finetune.data import world_layout
    from t2ialign.world.judge import Judge, selftest
    from t2ialign.world.prompts import build_prompt_set, perturb
    from t2ialign.world.render import grid, render

    layout = world_layout(None)  # the shipped world's pre-training layout (v7: dice faces)
    picks = {}
    for p in build_prompt_set():
        if p.split == "seen" and p.category not in picks:
            picks[p.category] = p
    grid(
        [render(p.text, seed=s, layout=layout).image for p in picks.values() for s in range(8)], cols=8
    ).save(samples / "pretrain_grid.png")
    judge = Judge.load()
    combo = picks["combination"]
    texts = [combo.text, *perturb(combo.text, 3, seed=0)]
    for text, v in zip(
        texts, judge.judge([render(combo.text, seed=0, layout=layout).image] * len(texts), texts), strict=True
    ):
        print(f"  {v.label:4s} P(match)={v.p_match:.3f}  {text!r}")
    report = selftest(judge, n=500, seed=1, progress=False)
    store.update_metrics(judge_selftest=report)
    for name, r in report.items():
        print(
            f"  selftest {name:9s}: {r['verdict_accuracy']:.1%} correct verdicts, {r['skip_rate']:.1%} skipped"
        )
    return judge


def _generate(store, scale: Scale, feedback: list[str], held_out: list[str]) -> None:
    """Stage 3: D_human and D_unlabel of the feedback prompts, and labeled images of the held-out ones."""
    from t2ialign.config import GenerateConfig
    from t2ialign.generate.images import generate

    n_h, n_u = scale.human_per_prompt, scale.unlabeled_per_prompt
    gh = generate(GenerateConfig(images_per_prompt=n_h, role="human"), store, feedback)
    gu = generate(GenerateConfig(images_per_prompt=n_u, role="unlabeled"), store, feedback)
    go = generate(GenerateConfig(images_per_prompt=n_h, role="human"), store, held_out)
    made = gh["generated"] + gu["generated"] + go["generated"]
    print(f"  {made} new images ({len(feedback)} prompts x {n_h} + {n_u}, {len(held_out)} x {n_h})")


def _label(store, judge, run: Path) -> None:
    """Stage 4: three simulated labelers label every human image; Table 1 and Fleiss' kappa."""
    from t2ialign.label.simulate import simulate_labels
    from t2ialign.label.stats import PAPER_TABLE1, format_table1

    sim = simulate_labels(store, n_labelers=3, noise=0.05, skip=0.05, judge=judge, progress=False)
    summary = sim.pop("summary")
    store.update_metrics(
        table1={"run": summary["table1"], "paper": PAPER_TABLE1},
        label_simulate={**sim, "fleiss_kappa": summary["fleiss_kappa"]},
    )
    print("  " + format_table1(summary["table1"]).replace("\n", "\n  "))
    print(f"  Fleiss' kappa {summary['fleiss_kappa']}; `t2ialign label serve {run}` opens the web app")


def _reward(store, clip: tuple, run: Path) -> None:
    """Stage 5: the reward model r_phi (Eq. 1-3) at the default RewardConfig, to RUN/reward."""
    from t2ialign.config import RewardConfig
    from t2ialign.reward.train import train_reward

    model, rep = train_reward(store, RewardConfig(), *clip, progress=False)
    model.save(run / "reward")
    store.update_metrics(reward_train={k: v for k, v in rep.items() if k != "loss_history"})
    print(f"  trained on {rep['n_train']} labeled images in {rep['seconds']} s -> {run / 'reward'}")


def _reward_eval(store, clip: tuple, scale: Scale, run: Path) -> None:
    """Stage 6: Fig. 4, the pairwise accuracy of the reward against the labelers, and of CLIP score."""
    from t2ialign.config import RewardConfig
    from t2ialign.reward.accuracy import evaluate_rewards, plot_fig4

    res = evaluate_rewards(
        store, RewardConfig(), *clip, seeds=tuple(range(scale.reward_seeds)), progress=False
    )
    plot_fig4(res, run / "reward_fig4.png")
    store.update_metrics(reward_eval=res)
    for scorer, sets in res["scorers"].items():
        print(
            f"  {scorer:17s} "
            + "  ".join(f"{k} {v['mean']:.1%}" for k, v in sets.items() if v["mean"] is not None)
        )


def _finetune(store, scale: Scale, run: Path) -> None:
    """Stage 7: Eq. 4, one fine-tuning run per column of Table 2 (each resumes from its checkpoints)."""
    from t2ialign.config import FinetuneConfig, from_dict, to_dict
    from t2ialign.finetune import TABLE2
    from t2ialign.finetune.train import finetune

    for name, change in TABLE2.items():
        ft = from_dict(
            FinetuneConfig,
            to_dict(FinetuneConfig())
            | change
            | {"max_train_steps": scale.finetune_steps, "pretrain_images": scale.pretrain_images},
            "finetune",
        )
        resume = "latest" if (run / "finetune" / name / "checkpoints").exists() else None
        r = finetune(ft, store, name=name, resume_from_checkpoint=resume)
        print(f"  {name:16s} {r['steps']} steps on {r['n_model']} images ({r['images_per_second']} img/s)")


def _evaluate(store, scale: Scale, judge, run: Path) -> None:
    """Stage 8: base, the Table 2 models and rejection sampling, judged on the same seeds; a quick grid."""
    from t2ialign.config import EvaluateConfig
    from t2ialign.evaluate.run import evaluate_models, format_report
    from t2ialign.finetune import TABLE2

    m = scale.eval_images_per_prompt
    ecfg = EvaluateConfig(n_seen=scale.n_eval, n_unseen=scale.n_eval, images_per_prompt=m)
    models = {"base": {"kind": "pipeline", "path": None}}
    for name in TABLE2:
        path = str(run / "finetune" / name / "pipeline")
        models[f"finetuned:{name}"] = {"kind": "pipeline", "path": path, "guidance_scale": FINETUNED_GUIDANCE}
    print(
        f"  the fine-tuned models are sampled at guidance {FINETUNED_GUIDANCE:g}, base and rejection sampling "
        "at the pipeline's own (docs/world.md, 'Guidance 3 and 4, paired')"
    )
    models["rejection"] = {"kind": "rejection", "path": None}
    ev = evaluate_models(store, models, ecfg, judge=judge)
    print("  " + format_report(ev).replace("\n", "\n  "))
    _grid(store, ev, run / "evaluate" / "grid.png")


def _grid(store, ev: dict, path: Path) -> None:
    """One row per model for the first seen prompt of each category: a quick look without the report."""
    from t2ialign.world.render import grid

    first = {}
    prompts = {p["text"]: p for p in store.list_prompts()}
    for text in ev["prompts"]["seen"]:
        first.setdefault(prompts[text]["category"], text)
    listing = json.loads((store.run_dir / "evaluate" / "images.json").read_text())
    images = listing.get("sets") or listing["images"]  # the 4 images per prompt that Fig. 3 shows
    tiles = []
    for model in images:
        for text in first.values():
            tiles += [store.image_array(s) for s in images[model][text]]
    grid(tiles, cols=4 * len(first)).save(path)
    print(f"  grid (rows: {', '.join(images)}; 4 images x {', '.join(first)}) -> {path}")


FIG3 = {  # the paper's Fig. 3 (a)-(c): (name, first model, second model); votes "for" the first
    "fig3a_finetuned_vs_base": ("finetuned:full", "base"),
    "fig3b_rejection_vs_base": ("rejection", "base"),
    "fig3c_finetuned_vs_rejection": ("finetuned:full", "rejection"),
}


def _side_by_side(store, judge) -> None:
    """Fig. 3 (a)-(c): the evaluation images of two models per prompt, 9 simulated raters per query."""
    from t2ialign.label.sidebyside import (
        create_comparison,
        plot_fig3,
        sets_from_evaluate,
        simulate_votes,
        tally,
    )

    images = store.run_dir / "evaluate" / "images.json"
    for name, (first, second) in FIG3.items():
        if name not in {c["name"] for c in store.list_comparisons()}:
            create_comparison(store, name, first, second, sets_from_evaluate(images, first, second))
        simulate_votes(store, name, judge=judge)
        result = tally(store, name)
        store.update_metrics(side_by_side={**store.read_metrics().get("side_by_side", {}), name: result})
        plot_fig3(result, store.run_dir / f"{name}.png")
        a, f = result["alignment"], result["fidelity"]
        print(
            f"  {first} vs {second}: queries with >= {a['threshold']} of 9 votes for {first}: "
            f"alignment {a['share_ge_threshold']:.0%} (for {second}: {a['share_second_ge_threshold']:.0%}), "
            f"fidelity {f['share_ge_threshold']:.0%} (for {second}: {f['share_second_ge_threshold']:.0%})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2ialign.demo", description=__doc__)
    parser.add_argument("--run", default="runs/demo", help="run directory (rerun to resume)")
    parser.add_argument(
        "--scale", choices=tuple(SCALES), default="demo", help="demo (minutes) or paper sizes"
    )
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="optimizer steps of each fine-tuning run instead of the scale's (demo 200, paper 3000)",
    )
    parser.add_argument("--plan", action="store_true", help="print the sizes and expected time, then exit")
    args = parser.parse_args(argv)
    try:
        get_scale(args.scale, args.finetune_steps)
    except ValueError as e:
        parser.error(str(e))
    if args.plan:
        print(plan(args.scale, args.finetune_steps))
        return 0
    return run_demo(Path(args.run), args.scale, args.finetune_steps)


if __name__ == "__main__":
    _tune_allocator()
    sys.exit(main())
