"""``t2ialign loop RUN --rounds K``: the iterated loop on the command line. Thin: parse, load the [loop]
table, call ``run_loop``, print the curve's numbers."""

from __future__ import annotations

import sys

from t2ialign.config import LOOP_D_MODEL, LOOP_LABELERS, to_dict
from t2ialign.core.cliutil import add_config, add_seed, config_from_args, subcommand


def _config(args):
    from t2ialign.config import load_config

    cfg = load_config(args.config).loop
    fixed = {}
    if args.finetune_steps is not None:
        fixed["finetune"] = to_dict(cfg.finetune) | {"max_train_steps": args.finetune_steps}
    return config_from_args(cfg, args, "loop", **fixed)


def _line(r: dict) -> str:
    delta = (r.get("evaluate") or {}).get("all", {}).get("all", {}).get("delta")
    count = (r.get("evaluate") or {}).get("all", {}).get("count", {}).get("delta")
    pts = lambda d: "—" if d is None else f"{100 * d:+.1f}"  # noqa: E731
    return (
        f"  round {r['round']}: {r['labels_total']:>6} labeled images so far; alignment - base: all "
        f"{pts(0.0 if r['round'] == 0 else delta)}, count {pts(0.0 if r['round'] == 0 else count)} points; "
        f"FD_CLIP {r['fd_clip']:.4f}"
    )


def cmd_loop(args) -> int:
    from t2ialign.loop.labels import LabelWaitTimeout
    from t2ialign.loop.run import run_loop
    from t2ialign.store import open_existing

    cfg = _config(args)
    with open_existing(args.run, args.db_url) as store:
        try:
            section = run_loop(cfg, store, args.name)
        except LabelWaitTimeout as e:
            print(f"t2ialign: error: {e}", file=sys.stderr)
            return 2
    print(f"\nloop {args.name}: {len(section['rounds']) - 1} rounds (metrics.json loop.{args.name})")
    for r in section["rounds"]:
        print(_line(r))
    if section.get("figure"):
        print(f"curve: {section['figure']}; `t2ialign report {args.run}` shows it")
    return 0


def add_command(sub) -> None:
    sp = subcommand(
        sub,
        "loop",
        cmd_loop,
        "beyond the paper: iterated rounds of generate, label, reward, fine-tune, evaluate (docs/loop.md)",
        run="run directory (with prompts: `t2ialign prompts`)",
    )
    add_config(sp, "[loop], with [loop.generate], [loop.reward], [loop.finetune], [loop.evaluate]")
    sp.add_argument("--name", default="default", help="the loop's folder RUN/loop/NAME (rerun to resume)")
    sp.add_argument("--rounds", type=int, help="rounds to run (raise it to continue a finished loop)")
    sp.add_argument(
        "--labels-per-round", dest="labels_per_round", type=int, help="labeled images per round (budget)"
    )
    sp.add_argument(
        "--images-per-prompt", dest="images_per_prompt", type=int, help="labeled images per prompt"
    )
    sp.add_argument("--unlabeled-per-prompt", dest="unlabeled_per_prompt", type=int)
    sp.add_argument(
        "--d-model", dest="d_model", choices=LOOP_D_MODEL, help="D_model: this round's images or all"
    )
    sp.add_argument("--labelers", choices=LOOP_LABELERS, help="simulated (the world) or people (the web app)")
    sp.add_argument("--k", dest="n_labelers", type=int, help="labels per image (the web app's --k)")
    sp.add_argument("--poll-seconds", dest="poll_seconds", type=float, help="people: seconds between looks")
    sp.add_argument("--timeout-seconds", dest="timeout_seconds", type=float, help="people: give up after")
    sp.add_argument("--finetune-steps", dest="finetune_steps", type=int, help="fine-tuning steps per round")
    sp.add_argument("--model", help="base pipeline folder (default: the shipped world model)")
    add_seed(sp, help="seed of the prompts' draw")
