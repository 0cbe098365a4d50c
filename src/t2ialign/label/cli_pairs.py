"""``t2ialign label pairs create | simulate | export | import``: pairwise feedback (issue 17), the data side.

Thin, as ``cli_data``: parse, open the run, call the library function, print. ``label stats`` reports the
pairs' agreement too (``stats_pairs``); raters answer pairs in the app at ``/pairs``.
"""

from __future__ import annotations

import json

from t2ialign.core.cliutil import add_seed, subcommand
from t2ialign.store import open_existing


def cmd_pairs_create(args) -> int:
    from t2ialign.label.pairs import create_pairs

    with open_existing(args.run, args.db_url) as store:
        counts = create_pairs(store, per_prompt=args.per_prompt, role=args.role, seed=args.seed)
    print(
        f"{counts['pairs']} pairs of {counts['prompts']} prompts ({counts['new']} new); raters answer them "
        "at /pairs, or run `t2ialign label pairs simulate`"
    )
    return 0


def cmd_pairs_simulate(args) -> int:
    from t2ialign.label.simulate_pairs import simulate_pairs
    from t2ialign.label.stats_pairs import format_preference_summary

    with open_existing(args.run, args.db_url) as store:
        report = simulate_pairs(
            store, n_raters=args.raters, noise=args.noise, tie_margin=args.tie_margin, seed=args.seed
        )
        summary = report.pop("summary")
        store.update_metrics(pairs_simulate={**report, "agreement": summary["agreement"]})
    a = report["answers"]
    print(
        f"{report['pairs']} pairs x {len(report['raters'])} simulated raters (noise {args.noise}, tie margin "
        f"{args.tie_margin}, seed {args.seed}): {a['new']} new, {a['replaced']} replaced, "
        f"{a['unchanged']} unchanged answers"
    )
    print(format_preference_summary(summary))
    return 0


def cmd_pairs_export(args) -> int:
    from t2ialign.label.export_pairs import export_preferences

    with open_existing(args.run, args.db_url) as store:
        n = export_preferences(store, args.out)
    print(f"{n} preferences written to {args.out}")
    return 0


def cmd_pairs_import(args) -> int:
    from t2ialign.label.export_pairs import import_preferences_file

    with open_existing(args.run, args.db_url) as store:
        counts = import_preferences_file(store, args.input)
    print(json.dumps(counts, indent=2))
    return 0


def add_pairs_commands(label_subparsers) -> None:
    """Register ``pairs create | simulate | export | import`` on the ``t2ialign label`` subparsers."""
    pairs = label_subparsers.add_parser(
        "pairs", help="pairwise feedback: two images of one prompt, A, B or tie"
    ).add_subparsers(dest="pairs_command", required=True)

    help = "pairs of two generated images of each prompt, for the app's /pairs page"
    sp = subcommand(pairs, "create", cmd_pairs_create, help)
    sp.add_argument("--per-prompt", type=int, help="pairs per prompt at most (default: every pair)")
    sp.add_argument("--role", default="human", help="which images: human, unlabeled or eval")
    add_seed(sp, default=0, help="seed of which pairs are drawn")

    help = "simulated raters answer every pair from the world judge's P(match)"
    sp = subcommand(pairs, "simulate", cmd_pairs_simulate, help)
    sp.add_argument("--raters", type=int, default=3, help="simulated raters sim-1..sim-N")
    sp.add_argument("--noise", type=float, default=0.1, help="probability of flipping A <-> B, 0-0.5")
    sp.add_argument(
        "--tie-margin", type=float, default=0.05, help="tie when the two P(match) are this close, 0-1"
    )
    add_seed(sp, default=0)

    sp = subcommand(pairs, "export", cmd_pairs_export, "write every preference to a .jsonl or .parquet file")
    sp.add_argument("out", metavar="OUT", help="output file, .jsonl or .parquet")

    sp = subcommand(pairs, "import", cmd_pairs_import, "read preferences of an export into a run")
    sp.add_argument("input", metavar="IN", help="a .jsonl or .parquet preference export (images in the run)")
