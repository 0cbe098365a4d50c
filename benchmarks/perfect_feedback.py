"""The perfect-feedback bound: the shapes world's acceptance test (issue 14).

Can feedback move alignment in this world at all? Fine-tune the base on its own samples of the feedback
prompts, weighted by the judge's true verdicts (perfect labels: one labeler, no flips, no skips beyond the
judge's own), with the pre-training loss on D_pre, exactly as ``t2ialign finetune --weights labels`` does.
Beside it, the same compute on D_pre alone (``--weights none``): what more pre-training gives without
feedback. Both are evaluated against the base with the paired evaluation (same prompts and seeds, 95%
bootstrap intervals over prompts). The world is fit for the paper's question only if the bound raises
count alignment clearly (the issue's targets: +30 points on seen prompts, +15 on unseen prompts and
unseen objects) while D_pre alone gains little.

    python -m benchmarks.perfect_feedback RUN [--model PIPELINE] [--prompts 600] [--per-prompt 10]
        [--steps 1000] [--learning-rate 1e-4] [--no-use-ema] [--eval-images 20] [--min-weight 0.5]
        [--beta 1.0] [--name perfect] [--no-control] [--control-name dpre_only] [--control-only]
        [--compile inductor] [--pretrain-data FOLDER] [--eval-guidance 3]
        [--categories count combination] [--continue-from NAME]
        [--timestep-bias range --timestep-bias-multiplier 4 --timestep-bias-begin 400 --timestep-bias-end 800]
        [--rounds 3 [--round-guidance 5] [--round-data all]]

Every stage reuses what RUN already holds (images, labels, and a fine-tune of the same name and settings;
one of the same name and other settings is refused rather than overwritten or reused: pass another RUN
or another --name / --control-name; an interrupted fine-tune continues from its last checkpoint, and
``--continue-from NAME`` starts the perfect-feedback fine-tune from NAME's last checkpoint, a run of the
same settings but fewer --steps: with the constant learning rate after warm-up and every step's batch
drawn from (seed, step) alone, that is the longer run itself, without training its first steps again).
With the control, the
feedback's own share is measured too: the perfect-feedback model paired against the control (the same
evaluation images, judged again with the control as the reference). Results:
RUN/perfect_feedback_NAME.json (NAME_gG with --eval-guidance G) and the printed tables.

``--rounds K`` iterates the bound, as ``t2ialign loop`` iterates the paper's method but with perfect labels:
round k >= 2 (fine-tune NAME_rK) samples round k-1's model on the same feedback prompts (of --categories
only, when given) and seeds, at --eval-guidance (or --round-guidance G: then the fine-tunes are NAME_rK_gG),
has the judge label those images, and fine-tunes round k-1's pipeline on them (D_model = this round's
images only, on-policy as DDPO's RWR rounds; ``--round-data all``: every round's images so far, the
base's included, fine-tunes NAME_rK_all) with the same settings and D_pre. Every round's model is
evaluated beside the base (RUN/perfect_feedback_NAME_rK...).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from t2ialign.config import (
    TIMESTEP_BIAS,
    EvaluateConfig,
    FinetuneConfig,
    GenerateConfig,
    RewardConfig,
    to_dict,
)
from t2ialign.core.checkpoint import latest_checkpoint
from t2ialign.evaluate.run import (
    balanced_sample,
    evaluate_models,
    feedback_prompts,
    format_report,
    parse_models,
)
from t2ialign.finetune.data import images_digest, model_examples
from t2ialign.finetune.train import finetune
from t2ialign.generate.images import generate, images_made
from t2ialign.label.simulate import simulate_labels
from t2ialign.models.load import load_clip, resolve_clip_path
from t2ialign.reward.train import train_reward
from t2ialign.store import Store
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import build_prompt_set

GROUPS = ("seen", "unseen_prompt", "unseen_object")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", default=None, help="base pipeline folder (default: the shipped world model)")
    ap.add_argument("--prompts", type=int, default=600, help="feedback prompts (balanced over categories)")
    ap.add_argument("--per-prompt", type=int, default=10, help="the base's samples per feedback prompt")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--no-use-ema", dest="use_ema", action="store_false")
    ap.add_argument("--pretrain-images", type=int, default=20_000, help="D_pre examples")
    ap.add_argument(
        "--pretrain-data",
        default="world",
        help="D_pre: 'world' (web-like captions) or a folder (benchmarks/dpre_folder.py writes one)",
    )
    ap.add_argument("--eval-images", type=int, default=20, help="judged images per evaluation prompt")
    ap.add_argument("--no-control", dest="control", action="store_false", help="skip the D_pre-alone run")
    ap.add_argument(
        "--control-name",
        default="dpre_only",
        help="the D_pre-alone fine-tune's name (another D_pre: another name)",
    )
    ap.add_argument(
        "--control-only", action="store_true", help="only the D_pre-alone run (e.g. the ceiling of a D_pre)"
    )
    ap.add_argument("--min-weight", type=float, default=0.0, help="0.5: train on the good images only")
    ap.add_argument("--beta", type=float, default=1.0, help="weight of the pre-training loss")
    ap.add_argument(
        "--balance-prompts",
        action="store_true",
        help="draw every feedback prompt equally often, however many of its images are good",
    )
    ap.add_argument(
        "--categories",
        nargs="+",
        default=(),
        metavar="CATEGORY",
        help="train on the feedback images of prompts of these categories only (count combination: the "
        "count-bearing ones); the control is unchanged",
    )
    ap.add_argument(
        "--timestep-bias",
        choices=TIMESTEP_BIAS,
        default="none",
        help="favour some timesteps of the feedback term (later: the noisiest, where the count is settled)",
    )
    ap.add_argument("--timestep-bias-multiplier", type=float, default=1.0)
    ap.add_argument("--timestep-bias-portion", type=float, default=0.25, help="later, earlier")
    ap.add_argument("--timestep-bias-begin", type=int, default=0, help="range: first favoured timestep")
    ap.add_argument("--timestep-bias-end", type=int, default=1000, help="range: end, excluded")
    ap.add_argument(
        "--continue-from",
        metavar="NAME",
        default=None,
        help="start from the last checkpoint of the fine-tune NAME in RUN (the same settings, fewer steps); "
        "with --control-only, the control starts there",
    )
    ap.add_argument("--name", default="perfect", help="the perfect-feedback fine-tune's name in RUN")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of perfect feedback: round k >= 2 samples round k-1's model at --eval-guidance and "
        "fine-tunes it on those images (fine-tune NAME_rK)",
    )
    ap.add_argument(
        "--round-guidance",
        type=float,
        default=None,
        help="rounds >= 2 sample the previous round's model at this guidance scale (default: --eval-guidance; "
        "another scale names the fine-tunes NAME_rK_gG)",
    )
    ap.add_argument(
        "--round-data",
        choices=("round", "all"),
        default="round",
        help="D_model of rounds >= 2: the round's own images, or every round's so far with the base's "
        "(fine-tunes NAME_rK_all), as t2ialign loop's d_model",
    )
    ap.add_argument(
        "--compile", default="no", help="generate.compile for every sampling: inductor, 1.2-1.9x in bf16"
    )
    ap.add_argument(
        "--eval-guidance",
        type=float,
        default=None,
        help="sample the fine-tuned models at this guidance scale in the evaluation (the base keeps 5): a "
        "model fine-tuned on its guided samples, sampled at full guidance, is guided twice",
    )
    args = ap.parse_args(argv)
    if args.control_only and not args.control:
        ap.error("--control-only and --no-control exclude each other")
    for name in ("prompts", "per_prompt", "steps", "pretrain_images", "eval_images", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("eval_guidance", "round_guidance"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1 (1 switches guidance off)")
    if args.rounds > 1 and (args.control_only or args.continue_from):
        ap.error(
            "--rounds > 1 iterates the perfect-feedback fine-tune: not with --control-only or --continue-from"
        )
    at = "" if args.eval_guidance is None else f"@{args.eval_guidance:g}"  # parse_models' MODEL@G

    def evaluated(name: str) -> str:  # a fine-tune's name in the evaluation report
        return f"finetuned:{name}{at}"

    judge = Judge.load()
    with Store.open(args.run) as store:
        if not store.list_prompts():
            store.add_prompts(build_prompt_set())
        rows = feedback_prompts(store)
        feedback = balanced_sample(rows, args.prompts, "perfect-feedback")
        print(f"{len(feedback)} feedback prompts x {args.per_prompt} samples of the base", flush=True)
        gcfg = GenerateConfig(
            model=args.model, images_per_prompt=args.per_prompt, role="human", compile=args.compile
        )
        base_images = images_made(store, generate(gcfg, store, feedback), gcfg, feedback)
        labels = _perfect_labels(store, judge, base_images)
        print(f"perfect labels (the judge's verdicts): {labels['judge_verdicts']}", flush=True)
        # evaluate needs a reward model (mean reward, rejection sampling): fit one on the same labels
        clip, processor, clip_id = load_clip(None)
        clip_path = str(resolve_clip_path(None)[0])
        if not (args.run / "reward" / "config.json").is_file():
            reward, _ = train_reward(
                store, RewardConfig(), clip, processor, clip_id, clip_path, progress=False
            )
            reward.save(args.run / "reward")
        common = dict(
            pretrained_model_name_or_path=args.model,
            use_unlabeled=False,
            beta=args.beta,
            max_train_steps=args.steps,
            learning_rate=args.learning_rate,
            use_ema=args.use_ema,
            pretrain_images=args.pretrain_images,
            pretrain_data=args.pretrain_data,
        )
        runs = {}
        if not args.control_only:
            runs[args.name] = feedback_cfg = FinetuneConfig(
                weights="labels",
                min_weight=args.min_weight,
                prompt_categories=tuple(args.categories),
                balance_prompts=args.balance_prompts,
                timestep_bias_strategy=args.timestep_bias,
                timestep_bias_multiplier=args.timestep_bias_multiplier,
                timestep_bias_portion=args.timestep_bias_portion,
                timestep_bias_begin=args.timestep_bias_begin,
                timestep_bias_end=args.timestep_bias_end,
                **common,
            )
        if args.control:
            runs[args.control_name] = FinetuneConfig(weights="none", **common)
        trained = args.control_name if args.control_only else args.name  # the one --continue-from continues
        # every run checked before any is trained: a mismatch is refused before the hours of the first
        digests = {args.name: _d_model(store, runs[args.name], base_images)} if args.name in runs else {}
        todo = [
            n
            for n, cfg in runs.items()
            if not _reusable(args.run / "finetune" / n / "pipeline", cfg, n, digests.get(n))
        ]
        for name in todo:
            start = args.continue_from if name == trained else None
            images = base_images if name == args.name else None  # the control has no D_model
            resume = _resume(args.run, name, start)
            finetune(runs[name], store, name=name, resume_from_checkpoint=resume, images=images)
        rounds = {}  # round k >= 2: its name -> the judge's verdicts of its images
        # rounds >= 2 sample as the evaluation samples (a fine-tuned model at the base's guidance is guided
        # twice) unless told otherwise; another scale is another chain of fine-tunes, named by it
        sample_at = args.eval_guidance if args.round_guidance is None else args.round_guidance
        chain = ("" if sample_at == args.eval_guidance else f"_g{sample_at:g}") + (
            "_all" if args.round_data == "all" else ""
        )
        guidance = {} if sample_at is None else {"guidance_scale": sample_at}
        prompts = _of_categories(store, feedback, args.categories)  # those the rounds train on
        so_far = list(base_images)  # --round-data all: D_model grows by each round's images
        for k in range(2, args.rounds + 1):
            name = f"{args.name}_r{k}{chain}"
            previous = args.name if k == 2 else f"{args.name}_r{k - 1}{chain}"
            current = str(args.run / "finetune" / previous / "pipeline")
            gk = replace(gcfg, model=current, **guidance)
            print(f"round {k}: {len(prompts)} prompts x {args.per_prompt} samples of {previous}", flush=True)
            shas = images_made(store, generate(gk, store, prompts), gk, prompts)
            rounds[name] = _perfect_labels(store, judge, shas)["judge_verdicts"]
            print(f"round {k}: perfect labels {rounds[name]}", flush=True)
            so_far += shas
            d_model = so_far if args.round_data == "all" else shas
            runs[name] = replace(feedback_cfg, pretrained_model_name_or_path=current)
            digest = _d_model(store, runs[name], d_model)
            if not _reusable(args.run / "finetune" / name / "pipeline", runs[name], name, digest):
                finetune(runs[name], store, name=name, resume_from_checkpoint="latest", images=d_model)
        spec = ("base" if args.model is None else f"base={args.model}") + "".join(
            f",{evaluated(n)}" for n in runs
        )
        models = parse_models(spec, args.run)
        ecfg = EvaluateConfig(
            images_per_prompt=args.eval_images, generate=GenerateConfig(role="eval", compile=args.compile)
        )
        # the feedback's own share: the same judged images, paired against the control as well
        against = (evaluated(args.control_name),) if args.control and not args.control_only else ()
        report = evaluate_models(store, models, ecfg, judge=judge, also_against=against)
        print(format_report(report))
        share = report["paired_vs"][against[0]] if against else None
    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "judge_verdicts_of_feedback": labels["judge_verdicts"],
        "judge_verdicts_of_rounds": rounds,
        "paired": report["paired"],
        "paired_attribute": report["paired_attribute"],
        "fd_clip": {m: r["fd_clip"] for m, r in report["models"].items()},
    }
    if share is not None:
        summary["minus_control"] = {
            "control": args.control_name,
            "paired": share["paired"][evaluated(args.name)],
            "paired_attribute": share["paired_attribute"][evaluated(args.name)],
        }
    suffix = f"_r{args.rounds}{chain}" if args.rounds > 1 else ""
    out_name = (args.control_name if args.control_only else args.name + suffix) + at.replace("@", "_g")
    (args.run / f"perfect_feedback_{out_name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name in runs:
        cells = []
        for g in GROUPS:
            c = report["paired"][evaluated(name)][g]["count"]
            a = report["paired_attribute"][evaluated(name)][g]["count"]
            cells.append(f"{g}: count {_pts(c)}, count read {_pts(a)}")
        print(f"{name}{at}: " + "; ".join(cells))
    if share is not None:
        cells = [f"{g}: count {_pts(summary['minus_control']['paired'][g]['count'])}" for g in GROUPS]
        print(f"{args.name}{at} minus {args.control_name}{at}: " + "; ".join(cells))
    return 0


def _perfect_labels(store, judge: Judge, images: list[str]) -> dict:
    """Perfect labels of ``images``: one simulated labeler who gives the judge's verdict (no flips, no skips
    beyond the judge's own)."""
    return simulate_labels(
        store, n_labelers=1, noise=0.0, skip=0.0, judge=judge, progress=False, images=images
    )


def _of_categories(store, prompts: list[str], categories) -> list[str]:
    """The prompts of these categories (all of them when none are named), in their order."""
    if not categories:
        return prompts
    category = {r["text"]: r["category"] for r in store.list_prompts()}
    return [p for p in prompts if category[p] in categories]


def _reusable(pipeline: Path, cfg: FinetuneConfig, name: str, digest: str | None = None) -> bool:
    """True when ``pipeline`` is a finished fine-tune of exactly ``cfg`` (and, given ``digest``, of the
    D_model whose ``images_digest`` it is); refuses one of other settings or other images (another
    --per-prompt or --prompts under the same --name)."""
    if not (pipeline / "model_index.json").is_file():
        return False
    stamp = json.loads((pipeline / "t2ialign_finetune.json").read_text())
    made = stamp["config"]
    differ = sorted(k for k, v in to_dict(cfg).items() if k in made and made[k] != v)  # older: fewer keys
    held = stamp.get("report", {}).get("d_model_images")  # None: a stamp from before it was recorded
    if digest is not None and held is not None and held != digest:
        differ.append("D_model's images")
    if differ:
        raise SystemExit(
            f"error: the fine-tune {name!r} in this run was made with other settings ({', '.join(differ)}): "
            "pass another --name / --control-name or another RUN"
        )
    return True


def _d_model(store: Store, cfg: FinetuneConfig, images) -> str:
    """The ``images_digest`` of the D_model that ``finetune(cfg, store, images=images)`` would train on."""
    return images_digest(r["sha256"] for r in model_examples(store, cfg, None, False, images))


def _resume(run: Path, name: str, start: str | None) -> str:
    """What ``finetune`` continues: the run's own last checkpoint (an interrupted run), else ``start``'s
    last one; "latest" with no checkpoint at all starts at step 0."""
    own = latest_checkpoint(run / "finetune" / name / "checkpoints")
    if own is not None or start is None:
        return "latest"
    found = latest_checkpoint(run / "finetune" / start / "checkpoints")
    if found is None:
        raise SystemExit(f"error: --continue-from {start}: no checkpoint under {run / 'finetune' / start}")
    return str(found)


def _pts(s: dict) -> str:
    if s["delta"] is None:
        return "n/a"
    ci = "" if s["ci95"] is None else f" [{100 * s['ci95'][0]:+.1f}, {100 * s['ci95'][1]:+.1f}]"
    return f"{100 * s['delta']:+.1f}{ci}"


if __name__ == "__main__":
    raise SystemExit(main())
