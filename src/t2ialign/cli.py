"""The ``t2ialign`` command: one subcommand per stage. Thin: parse, load config, call the stage.

Library code never parses argv; each subcommand calls a function that takes a config and returns results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from t2ialign import __version__
from t2ialign.config import ConfigError
from t2ialign.core.cliutil import (
    add_config,
    add_run,
    add_sampler_args,
    add_seed,
    config_from_args,
    subcommand,
)


def _tune_allocator() -> None:
    """Keep glibc from unmapping and re-mapping large activation buffers every step (measured 1.8x faster
    UNet inference at batch 128 on these machines): raise M_MMAP_THRESHOLD and M_TRIM_THRESHOLD."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: its maximum on 64-bit glibc
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


def _print_table(rows: list[list], header: list[str]) -> None:
    cols = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    for j, r in enumerate(cols):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            print("  ".join("-" * w for w in widths))


# --- stage commands ---------------------------------------------------------------------------------------


def cmd_prompts(args) -> int:
    from t2ialign.config import load_config
    from t2ialign.store import IMPORTED_SPLIT, Store
    from t2ialign.world.prompts import CATEGORIES, SPLITS, build_prompt_set

    cfg = load_config(args.config).prompts
    prompts = build_prompt_set(cfg.unseen_objects, cfg.unseen_prompt_fraction, cfg.seed)
    with Store.open(args.run, db_url=args.db_url) as store:
        added = store.add_prompts(prompts)
        counts = store.prompt_counts()
        # captions of imported preference sets (category None) are no part of the world's prompt set
        imported = counts.pop((None, IMPORTED_SPLIT), 0)
        store.update_metrics(
            prompts={
                "config": {
                    "unseen_objects": list(cfg.unseen_objects),
                    "unseen_prompt_fraction": cfg.unseen_prompt_fraction,
                    "seed": cfg.seed,
                },
                "counts": {f"{c}/{s}": n for (c, s), n in sorted(counts.items(), key=str)},
                "imported": imported,
            }
        )
    rows = [
        [c, *[counts.get((c, s), 0) for s in SPLITS], sum(counts.get((c, s), 0) for s in SPLITS)]
        for c in CATEGORIES
    ]
    rows.append(
        ["total", *[sum(counts.get((c, s), 0) for c in CATEGORIES) for s in SPLITS], sum(counts.values())]
    )
    _print_table(rows, ["category", *SPLITS, "total"])
    print(f"\n{added} new prompts written to {args.run} ({len(prompts) - added} already there)")
    if imported:
        print(f"{imported} imported captions (split {IMPORTED_SPLIT}, from public preference sets) besides")
    return 0


def cmd_render(args) -> int:
    from t2ialign.world.render import grid, render

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    results = [render(args.prompt, seed=args.seed + i, size=args.size) for i in range(args.n)]
    image = results[0].pil() if args.n == 1 else grid([r.image for r in results], cols=min(args.n, 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    for i, r in enumerate(results):
        print(f"seed {args.seed + i}: {r.spec.text()}")
    print(f"wrote {out}")
    return 0


def cmd_judge(args) -> int:
    from PIL import Image

    from t2ialign.world.judge import Judge

    judge = Judge.load(args.weights)
    if args.selftest:
        _print_selftest(judge, args)
        return 0
    if not args.images or not args.prompt:
        raise ValueError("give IMAGE paths and --prompt, or --selftest")
    images = []
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no image at {p}")
        images.append(Image.open(p).convert("RGB"))
    verdicts = judge.judge(images, [args.prompt] * len(images))
    for path, v in zip(args.images, verdicts, strict=True):
        _print_verdict(path, args.prompt, v, args.json)
    return 0


def _print_selftest(judge, args) -> None:
    from t2ialign.world.judge import selftest

    report = selftest(judge, n=args.n, seed=args.seed, progress=not args.json)
    if args.json:
        print(json.dumps(report))
        return
    for name, r in report.items():
        print(
            f"{name:9s} verdict accuracy {r['verdict_accuracy']:.2%}  skip rate {r['skip_rate']:.2%}  "
            + "  ".join(f"{k} {v:.2%}" for k, v in r["per_attribute"].items() if v is not None)
        )
        print(
            f"{'':9s} count read right per class: "
            + "  ".join(f"{k}: {v:.2%}" for k, v in r["per_count_class"].items())
        )


def _print_verdict(path: str, prompt: str, v, as_json: bool) -> None:
    from t2ialign.world import vocab

    if as_json:
        record = {
            "image": path,
            "prompt": prompt,
            "verdict": v.label,
            "p_match": round(v.p_match, 4),
            "reading": v.reading,  # count 6 = six or more
            "count_label": vocab.count_label(v.reading["count"][0]),
        }
        print(json.dumps(record))
        return
    seen = ", ".join(
        f"{k}={vocab.count_label(val) if k == 'count' else val} ({p:.0%})"
        for k, (val, p) in v.reading.items()
    )
    print(f"{path}: {v.label} (P(match)={v.p_match:.3f}; read {seen})")


def cmd_train_judge(args) -> int:
    from t2ialign.config import load_config
    from t2ialign.world.judge import train_judge

    cfg = load_config(args.config).judge
    report = train_judge(cfg, args.out)
    print(json.dumps(report, indent=2))
    print(f"judge written to {args.out}")
    return 0


def _generate_config(args):
    from t2ialign.config import load_config

    return config_from_args(load_config(args.config).generate, args, "generate")


def cmd_generate(args) -> int:
    from t2ialign.core import dist
    from t2ialign.generate.images import generate, select_prompts
    from t2ialign.store import Store

    cfg = _generate_config(args)
    with Store.open(args.run, db_url=args.db_url) as store:
        rows = store.list_prompts(split=args.split, category=args.category)
        if cfg.role in ("human", "unlabeled"):
            # feedback never touches the evaluation prompts (`t2ialign evaluate` checks it)
            from t2ialign.config import load_config
            from t2ialign.evaluate.run import feedback_prompts

            ev = load_config(args.config).evaluate
            open_to_feedback = {
                r["text"] for r in feedback_prompts(store, ev.n_seen, ev.n_unseen, ev.seed, args.split)
            }
            rows = [r for r in rows if r["text"] in open_to_feedback]
        if not rows:
            raise ValueError(
                f"no prompts in {args.run} (split={args.split}, category={args.category}); run `t2ialign prompts`"
            )
        prompts = [r["text"] for r in select_prompts(rows, args.max_prompts, cfg.seed)]
        lead = dist.is_main()  # under torchrun every process generates its share; rank 0 reports
        if lead:
            print(f"{len(prompts)} prompts x {cfg.images_per_prompt} images, role {cfg.role}")
        report = generate(cfg, store, prompts)
        if lead:
            store.update_metrics(**{f"generate_{cfg.role}": report})
    if lead:
        print(json.dumps(report, indent=2))
    return 0


def cmd_evaluate_base(args) -> int:
    from t2ialign.evaluate.alignment import format_table
    from t2ialign.evaluate.base_model import evaluate_base
    from t2ialign.store import Store

    cfg = _generate_config(args)
    with Store.open(args.run, db_url=args.db_url) as store:
        report = evaluate_base(store, cfg, prompts_per_category=args.prompts_per_category)
    print(format_table(report))
    print(
        f"\nmodel {report['model_id']} @ {report['model_revision']}; written to {Path(args.run) / 'metrics.json'}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from t2ialign.config import load_config
    from t2ialign.core import dist
    from t2ialign.evaluate.run import evaluate_models, format_report, parse_models
    from t2ialign.store import open_existing

    cfg = config_from_args(load_config(args.config).evaluate, args, "evaluate")
    with open_existing(args.run, args.db_url) as store:
        # under torchrun every process generates its share; rank 0 judges, writes and reports
        report = evaluate_models(
            store,
            parse_models(args.models, store.run_dir),
            cfg,
            progress=dist.is_main(),
            also_against=tuple(args.against or ()),
        )
    if dist.is_main():
        print(format_report(report))
        print(
            f"\nwritten to {Path(args.run) / 'metrics.json'} (section evaluate); `t2ialign report {args.run}` renders it"
        )
    return 0


def cmd_report(args) -> int:
    from t2ialign.report.html import write_report
    from t2ialign.store import open_existing

    with open_existing(args.run, args.db_url) as store:
        print(f"report: {write_report(store, args.out)}")
    return 0


def cmd_pretrain(args) -> int:
    from t2ialign.config import load_config
    from t2ialign.pretrain.train import pretrain

    cfg = load_config(args.config).pretrain
    report = pretrain(
        cfg, args.out, until=args.until, vae_from=args.vae_from, text_encoder_from=args.text_encoder_from
    )
    print(json.dumps(report, indent=2))
    if args.until is None:
        print(f"pipeline: {Path(args.out) / 'pipeline'}  clip: {Path(args.out) / 'clip'}")
    return 0


def cmd_perturb(args) -> int:
    from t2ialign.world.prompts import perturb

    for text in perturb(args.prompt, args.n, seed=args.seed):
        print(text)
    return 0


# --- parser --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="t2ialign", description="Align text-to-image models with human feedback."
    )
    p.add_argument("--version", action="version", version=f"t2ialign {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_evaluate_commands(sub)
    _add_stage_commands(sub)
    _add_world_commands(sub)
    _add_pretrain_command(sub)
    return p


def _add_generate_args(sp, role_default: str | None = None) -> None:
    add_run(sp, flag=True)
    add_config(sp, "[generate]")
    sp.add_argument("--images-per-prompt", dest="images_per_prompt", type=int)
    add_sampler_args(
        sp, model_help="local diffusers Stable Diffusion folder (default: the shipped world model)"
    )
    sp.add_argument("--role", default=role_default, help="human, unlabeled or eval")


def _add_data_commands(sub) -> None:
    """Stages 1 and 2: the prompt set, and images generated into the run."""
    help = "stage 1: write the prompt set (four categories, seen/unseen) to a run"
    sp = subcommand(sub, "prompts", cmd_prompts, help, run=None)
    add_run(sp, "run directory (created if missing)", flag=True)
    add_config(sp, "[prompts]")

    sp = subcommand(
        sub, "generate", cmd_generate, "stage 2: sample K images per prompt into the run", run=None
    )
    _add_generate_args(sp)
    sp.add_argument("--split", default="seen", help="prompt split: seen, unseen_prompt or unseen_object")
    sp.add_argument("--category", help="only this category (count, color, background, combination)")
    sp.add_argument(
        "--max-prompts", dest="max_prompts", type=int, help="a seeded sample of this many prompts"
    )

    help = "judge a base model per category, seen vs unseen objects"
    sp = subcommand(sub, "evaluate-base", cmd_evaluate_base, help, run=None)
    _add_generate_args(sp, role_default="eval")
    sp.add_argument("--prompts-per-category", dest="prompts_per_category", type=int, default=100)


def _add_evaluate_commands(sub) -> None:
    """Stage 7 and its report."""
    help = (
        "stage 7: alignment per category (seen / unseen), reward, CLIP score and fidelity of several models"
    )
    sp = subcommand(sub, "evaluate", cmd_evaluate, help)
    add_config(sp, "[evaluate]")
    sp.add_argument(
        "--models",
        default="base,finetuned,rejection",
        help="comma-separated: base, finetuned[:NAME], rejection[:MODEL], LABEL=PATH; MODEL@G samples it at "
        "guidance scale G (default: %(default)s)",
    )
    sp.add_argument(
        "--against",
        nargs="+",
        metavar="MODEL",
        help="also pair every model against these models of --models, as written there (a fine-tune "
        "against its control, or one fine-tune against another), on the same judged images",
    )
    sp.add_argument("--n-seen", dest="n_seen", type=int, help="seen evaluation prompts (default 60)")
    sp.add_argument("--n-unseen", dest="n_unseen", type=int, help="unseen evaluation prompts (default 60)")
    sp.add_argument(
        "--images-per-prompt",
        dest="images_per_prompt",
        type=int,
        help="judged images per prompt of every model, the same seeds for all (default 20)",
    )
    sp.add_argument(
        "--best-of",
        dest="best_of",
        type=int,
        help="rejection sampling keeps the best KEEP of BEST_OF (default 4 of 16; evaluated at that ratio)",
    )
    sp.add_argument("--keep", type=int, help="images per Fig. 3 set and rejection sampling's k (default 4)")
    sp.add_argument("--reward", help="reward model folder (default: RUN/reward)")
    sp.add_argument("--inception", help="local Inception-v3 FID weights: adds true FID")

    help = "write RUN/report.html: the paper's tables and figures from this run"
    sp = subcommand(sub, "report", cmd_report, help)
    sp.add_argument("--out", help="output file (default: RUN/report.html)")


def _add_stage_commands(sub) -> None:
    """Stages 3 to 6, each declared by its own package: label, reward, finetune, sample (and dpo)."""
    from t2ialign.dpo import cli as dpo_cli
    from t2ialign.finetune import cli as finetune_cli
    from t2ialign.label import cli_data, cli_serve
    from t2ialign.loop import cli as loop_cli
    from t2ialign.reward import cli as reward_cli
    from t2ialign.rl import cli as rl_cli
    from t2ialign.sample import rejection as sample

    label = sub.add_parser(
        "label", help="stage 3: feedback from labelers (web app), simulated labelers, export"
    )
    label_sub = label.add_subparsers(dest="label_command", required=True)
    cli_serve.add_commands(label_sub)
    cli_data.add_commands(label_sub)

    reward = sub.add_parser("reward", help="stage 4: the reward model on CLIP embeddings (Eq. 1-3, Fig. 4)")
    reward_cli.add_commands(reward.add_subparsers(dest="reward_command", required=True))
    finetune_cli.add_command(sub)
    dpo_cli.add_command(sub)
    rl_cli.add_command(sub)
    sample.add_command(sub)
    loop_cli.add_command(sub)


def _add_world_commands(sub) -> None:
    """``t2ialign world``: the built-in shapes world."""
    world = sub.add_parser("world", help="the built-in shapes world: render, judge, perturb").add_subparsers(
        dest="world_command", required=True
    )
    help = "render images for a caption (the pre-training distribution)"
    sp = subcommand(world, "render", cmd_render, help, run=None)
    sp.add_argument("prompt", help='e.g. "Two blue circles in the forest"')
    add_seed(sp, default=0)
    sp.add_argument(
        "--n", type=int, default=1, help="number of images (seeds seed..seed+n-1), tiled in one PNG"
    )
    sp.add_argument("--size", type=int, default=64, help="image side in pixels")
    sp.add_argument("--out", default="render.png", help="output PNG path")

    help = "judge images against a prompt (good/bad/skip), or validate the judge"
    sp = subcommand(world, "judge", cmd_judge, help, run=None)
    sp.add_argument("images", nargs="*", help="image files")
    sp.add_argument("--prompt", help="the prompt the images should match")
    sp.add_argument(
        "--selftest", action="store_true", help="measure the judge on fresh clean and degraded renders"
    )
    sp.add_argument("--n", type=int, default=2000, help="selftest: number of renders")
    add_seed(sp, default=0, help="selftest: seed of the renders and test prompts")
    sp.add_argument("--weights", help="judge folder (default: the one shipped with t2ialign)")
    sp.add_argument("--json", action="store_true", help="print JSON")

    help = "retrain the judge's CNN on renders (about 15 minutes on 2 cores)"
    sp = subcommand(world, "train-judge", cmd_train_judge, help, run=None)
    sp.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")
    add_config(sp, "[judge]")

    help = "the rule-based perturbations of a prompt (Appendix E)"
    sp = subcommand(world, "perturb", cmd_perturb, help, run=None)
    sp.add_argument("prompt")
    sp.add_argument("--n", type=int, default=8, help="size of the set, the original included")
    add_seed(sp, default=0)


def _add_pretrain_command(sub) -> None:
    help = "train the world's CLIP and Stable Diffusion on D_pre (resumable; over an hour on 2 cores)"
    sp = subcommand(sub, "pretrain", cmd_pretrain, help, run=None)
    sp.add_argument("--out", required=True, help="work folder; rerun the same command to resume")
    add_config(sp, "[pretrain]")
    sp.add_argument(
        "--until",
        choices=("clip", "vae"),
        help="stop after this stage (e.g. to train CLIP and VAE while the UNet's config is still being chosen)",
    )
    sp.add_argument(
        "--vae-from",
        dest="vae_from",
        metavar="PIPELINE",
        help="take the VAE of this pipeline (made by `t2ialign pretrain` under the same VAE settings, pool "
        "and seed) instead of training one; e.g. the shipped world's, for a world whose captions change",
    )
    sp.add_argument(
        "--text-encoder-from",
        dest="text_encoder_from",
        metavar="CLIP",
        help="the pipeline's text encoder and tokenizer are this CLIP's (made by `t2ialign pretrain`) instead "
        "of the run's own CLIP, which stays the reward's; e.g. a CLIP that knows count words",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from t2ialign.core.checkpoint import CheckpointError
    from t2ialign.store import StoreError

    try:
        return args.func(args)
    except (ValueError, ConfigError, StoreError, CheckpointError, FileNotFoundError, FloatingPointError) as e:
        print(f"t2ialign: error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    _tune_allocator()
    sys.exit(main())
