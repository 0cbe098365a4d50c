"""``t2ialign label simulate | export | import | stats``: the data side of stage 3 on the command line.

Thin: parse, open the run, call the library function, print. ``add_commands(label_subparsers)`` registers
the commands on the ``label`` subparsers of the main CLI; each sets ``func`` to a function of ``args`` that
returns 0 or raises ValueError for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..store import open_existing


def _add_run_args(sp) -> None:
    sp.add_argument("run", metavar="RUN", help="run directory")
    sp.add_argument("--db-url", help="SQLAlchemy URL of the run database (default: SQLite file in the run)")


def cmd_simulate(args) -> int:
    from .simulate import simulate_labels
    from .stats import PAPER_TABLE1, format_table1

    with open_existing(args.run, args.db_url) as store:
        report = simulate_labels(
            store, n_labelers=args.labelers, noise=args.noise, skip=args.skip, seed=args.seed, role=args.role
        )
        summary = report.pop("summary")
        store.update_metrics(
            table1={"run": summary["table1"], "paper": PAPER_TABLE1},
            label_simulate={
                **report,
                "fleiss_kappa": summary["fleiss_kappa"],
                "majority_share": summary["majority_share"],
                "progress": summary["progress"],
            },
        )
    labels = report["labels"]
    print(
        f"{report['images']} images x {len(report['labelers'])} simulated labelers "
        f"(noise {args.noise}, skip {args.skip}, seed {args.seed}): {labels['new']} new, "
        f"{labels['replaced']} replaced, {labels['unchanged']} unchanged labels"
    )
    print(f"\nTable 1 (% of labels; paper: Lee et al. 2023)\n{format_table1(summary['table1'])}")
    print(f"\nFleiss' kappa {summary['fleiss_kappa']}; written to {Path(args.run) / 'metrics.json'}")
    return 0


def cmd_export(args) -> int:
    from .export import export_labels

    with open_existing(args.run, args.db_url) as store:
        n = export_labels(store, args.out)
    print(f"{n} labels written to {args.out}")
    return 0


def cmd_import(args) -> int:
    from ..store import Store
    from .export import read_labels, write_labels

    rows = read_labels(
        args.input
    )  # validated before Store.open, which may create the run: a bad file writes nothing
    with Store.open(args.run, db_url=args.db_url) as store:
        counts = write_labels(store, rows)
    print(json.dumps(counts, indent=2))
    return 0


def cmd_stats(args) -> int:
    from .stats import format_table1, label_summary

    with open_existing(args.run, args.db_url) as store:
        summary = label_summary(store)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"Table 1 (% of labels; paper: Lee et al. 2023)\n{format_table1(summary['table1'])}\n")
    print(f"Fleiss' kappa: {summary['fleiss_kappa']}")
    for c, share in summary["majority_share"].items():
        if share["n"]:
            print(
                f"majority {c:12s} good {share['good']:.1%}  bad {share['bad']:.1%}  tie {share['tie']:.1%}"
            )
    p = summary["progress"]
    print(
        f"progress: {p['labels']} labels on {p['images']} human images; labels per image {p['labeled_k_times']}"
    )
    for name, n in summary["per_labeler"].items():
        print(f"  {name}: {n}")
    return 0


def add_commands(label_subparsers) -> None:
    """Register simulate, export, import and stats on the ``t2ialign label`` subparsers."""
    sp = label_subparsers.add_parser(
        "simulate", help="label every image by simulated labelers (the world judge with noise and skips)"
    )
    _add_run_args(sp)
    sp.add_argument("--labelers", type=int, default=3, help="number of simulated labelers sim-1..sim-N")
    sp.add_argument("--noise", type=float, default=0.05, help="probability of flipping good <-> bad, 0-0.5")
    sp.add_argument("--skip", type=float, default=0.05, help="probability of answering skip, 0-0.5")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--role", default="human", help="which images: human, unlabeled or eval")
    sp.set_defaults(func=cmd_simulate)

    sp = label_subparsers.add_parser("export", help="write every label to a .jsonl or .parquet file")
    _add_run_args(sp)
    sp.add_argument("out", metavar="OUT", help="output file, .jsonl or .parquet")
    sp.set_defaults(func=cmd_export)

    sp = label_subparsers.add_parser("import", help="read labels from an export into a run")
    _add_run_args(sp)
    sp.add_argument("input", metavar="IN", help="a .jsonl or .parquet label export")
    sp.set_defaults(func=cmd_import)

    sp = label_subparsers.add_parser("stats", help="Table 1 class balance, agreement, progress")
    _add_run_args(sp)
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(func=cmd_stats)
