"""``t2ialign label simulate | export | import | gold | backup | stats | compare``: stage 3, the data side.

Thin: parse, open the run, call the library function, print. ``add_commands(label_subparsers)`` registers
the commands on the ``label`` subparsers of the main CLI; each sets ``func`` to a function of ``args`` that
returns 0 or raises ValueError for bad input.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from t2ialign.core.cliutil import add_seed, subcommand
from t2ialign.label.cli_pairs import add_pairs_commands
from t2ialign.store import open_existing


def cmd_simulate(args) -> int:
    from t2ialign.label.simulate import simulate_labels
    from t2ialign.label.stats import PAPER_TABLE1, format_table1

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
    from t2ialign.label.export import export_imagefolder, export_labels

    fmt = args.format or Path(args.out).suffix.lower().lstrip(".")
    if fmt != "imagefolder" and f".{fmt}" != Path(args.out).suffix.lower():
        raise ValueError(f"--format {fmt} writes a .{fmt} file, not {args.out}")
    with open_existing(args.run, args.db_url) as store:
        if fmt == "imagefolder":
            n = export_imagefolder(store, args.out, only_good=args.only_good)
            print(f"{n} images and metadata.jsonl written to {args.out}")
            return 0
        n = export_labels(store, args.out, images=fmt == "parquet" and not args.no_images)
    print(f"{n} labels written to {args.out}")
    return 0


def cmd_import(args) -> int:
    from t2ialign.label.export import has_images, read_labels, write_labels
    from t2ialign.label.formats import detect_format, import_preferences, read_preferences
    from t2ialign.store import Store

    fmt = detect_format(args.input) if args.format == "auto" else args.format
    if fmt != "t2ialign":  # a public preference set: into an existing run (a typo must not make one)
        with open_existing(args.run, args.db_url) as store:
            records = read_preferences(args.input, fmt, image_root=args.image_root)
            counts = import_preferences(store, records, fmt)
        print(json.dumps({"format": fmt, **counts}, indent=2))
        return 0
    rows = read_labels(
        args.input
    )  # validated before Store.open, which may create the run: a bad file writes nothing
    with Store.open(args.run, db_url=args.db_url) as store:
        images_file = args.input if has_images(args.input) else None  # an export that carries its images
        counts = write_labels(store, rows, images_from=args.images_from, images_file=images_file)
    print(json.dumps(counts, indent=2))
    return 0


def cmd_stats(args) -> int:
    from t2ialign.label.stats import format_table1, label_summary
    from t2ialign.label.stats_pairs import format_preference_summary, preference_summary

    with open_existing(args.run, args.db_url) as store:
        summary = label_summary(store)
        pairs = preference_summary(store)
    if args.json:
        print(json.dumps({**summary, "pairs": pairs}, indent=2, sort_keys=True))
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
    print(format_preference_summary(pairs))
    return 0


def cmd_gold(args) -> int:
    from t2ialign.label.simulate import add_gold_images

    with open_existing(args.run, args.db_url) as store:
        counts = add_gold_images(store, args.n, seed=args.seed)
    print(
        f"{counts['good']} right and {counts['bad']} wrong gold images added; serve with --gold-rate RATE "
        "to mix them into the queue (their labels are never feedback)"
    )
    return 0


def backup_sqlite(store, dest: str | Path) -> Path:
    """A consistent copy of a run's SQLite database at ``dest``, taken with SQLite's online backup API
    while the app may be writing (it copies a snapshot page by page; writers wait at most briefly).
    Refuses an existing ``dest`` and a PostgreSQL run (use pg_dump there)."""
    import sqlite3

    dest = Path(dest)
    if store.engine.dialect.name != "sqlite":
        raise ValueError("the run's database is not SQLite: back it up with pg_dump (README, Deploying)")
    if dest.exists():
        raise ValueError(f"{dest} exists already: back up to a new file")
    if not dest.parent.is_dir():
        raise ValueError(f"no folder {dest.parent} for the backup")
    src_path = store.engine.url.database
    try:
        with (
            contextlib.closing(sqlite3.connect(src_path)) as src,
            contextlib.closing(sqlite3.connect(dest)) as out,
        ):
            src.backup(out)
            ok = out.execute("PRAGMA integrity_check").fetchone()[0]
    except (sqlite3.Error, OSError) as e:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise ValueError(f"cannot back up {src_path} to {dest}: {e}") from e
    if ok != "ok":
        dest.unlink()
        raise ValueError(f"the backup failed its integrity check: {ok}")
    return dest


def cmd_backup(args) -> int:
    with open_existing(args.run, args.db_url) as store:
        dest = backup_sqlite(store, args.out)
    print(
        f"{args.run} database backed up to {dest} (integrity_check ok); restore: stop the server, copy it to "
        f"{Path(args.run) / 't2ialign.db'}"
    )
    return 0


def _read_sets(path: str) -> dict[str, tuple[list[str], list[str]]]:
    """A sets file for ``compare create --sets``: a JSON object, prompt -> [[first's sha256s], [second's]]."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read --sets {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"--sets {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(
            f"--sets {path} must hold a non-empty JSON object: prompt -> [[sha256, ...], [sha256, ...]]"
        )
    sets = {}
    for prompt, pair in data.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(side, list) and all(isinstance(x, str) for x in side) for side in pair)
        ):
            raise ValueError(f"--sets {path}: {prompt!r} must map to [[sha256, ...], [sha256, ...]]")
        sets[prompt] = (pair[0], pair[1])
    return sets


def cmd_compare_create(args) -> int:
    from t2ialign.label.sidebyside import create_comparison, sets_from_evaluate

    sets = _read_sets(args.sets) if args.sets is not None else None  # read before the run is touched
    with open_existing(args.run, args.db_url) as store:
        if sets is None:
            sets = sets_from_evaluate(store.run_dir / "evaluate" / "images.json", args.first, args.second)
        create_comparison(
            store, args.name, args.first, args.second, sets, raters_per_query=args.raters, seed=args.seed
        )
    print(
        f"comparison {args.name}: {args.first} vs {args.second}, {len(sets)} queries, {args.raters} raters "
        "each; raters answer at /compare"
    )
    return 0


def cmd_compare_simulate(args) -> int:
    from t2ialign.label.sidebyside import simulate_votes

    with open_existing(args.run, args.db_url) as store:
        report = simulate_votes(
            store,
            args.name,
            n_raters=args.raters,
            noise=args.noise,
            fidelity_noise=args.fidelity_noise,
            tie_margin=args.tie_margin,
            seed=args.seed,
        )
    print(json.dumps(report, indent=2))
    return 0


def cmd_compare_tally(args) -> int:
    from t2ialign.label.sidebyside import format_tally, plot_fig3, tally

    with open_existing(args.run, args.db_url) as store:
        result = tally(store, args.name)
        sections = store.read_metrics().get("side_by_side", {})
        store.update_metrics(side_by_side={**sections, args.name: result})
        plot = plot_fig3(result, args.plot or Path(args.run) / f"fig3_{args.name}.png")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_tally(result))
    print(f"\nwritten to {Path(args.run) / 'metrics.json'} (side_by_side.{args.name}); plot {plot}")
    return 0


def cmd_compare_list(args) -> int:
    with open_existing(args.run, args.db_url) as store:
        comparisons = store.list_comparisons()
    if not comparisons:
        print("no comparisons")
    for c in comparisons:
        print(
            f"{c['name']}: {c['first_model']} vs {c['second_model']}, {c['queries']} queries, "
            f"{c['votes']} votes of {c['queries'] * c['raters_per_query']} wanted"
        )
    return 0


def _add_compare_commands(label_subparsers) -> None:
    compare = label_subparsers.add_parser(
        "compare", help="side-by-side human evaluation of two models (paper Fig. 3)"
    ).add_subparsers(dest="compare_command", required=True)

    help = "a comparison: one query per prompt, two anonymous sets A and B"
    sp = subcommand(compare, "create", cmd_compare_create, help)
    sp.add_argument("name", metavar="NAME", help="comparison name: letters, digits, . _ @ -")
    sp.add_argument(
        "--first",
        required=True,
        help="the model whose votes count as positive: a model name of `t2ialign evaluate` (e.g. finetuned), "
        "or with --sets any label",
    )
    sp.add_argument("--second", required=True, help="the other model (e.g. base)")
    sp.add_argument(
        "--sets",
        help="JSON file: prompt -> [[first model's sha256s], [second model's sha256s]] "
        "(default: the two models' images in RUN/evaluate/images.json)",
    )
    sp.add_argument("--raters", type=int, default=9, help="votes wanted per query, from distinct raters")
    add_seed(sp, default=0, help="seed of the A/B order and of the query order")

    sp = subcommand(compare, "simulate", cmd_compare_simulate, "simulated raters vote from the world judge")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--raters", type=int, help="simulated raters sim-1..sim-N (default: the comparison's)")
    sp.add_argument(
        "--noise", type=float, default=0.1, help="alignment: chance of misjudging an image, 0-0.5"
    )
    sp.add_argument(
        "--fidelity-noise", type=float, default=0.25, help="fidelity: sd of a rater's error on log distance"
    )
    sp.add_argument(
        "--tie-margin", type=float, default=0.15, help="fidelity: mean log distances closer than this tie"
    )
    add_seed(sp, default=0)

    sp = subcommand(compare, "tally", cmd_compare_tally, "Fig. 3: vote histograms, to metrics.json and a PNG")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--plot", help="PNG path (default: RUN/fig3_NAME.png)")
    sp.add_argument("--json", action="store_true", help="print the tally as JSON")

    subcommand(compare, "list", cmd_compare_list, "the run's comparisons and their progress")


def add_commands(sub) -> None:
    """Register simulate, export, import, gold, backup, stats and compare on the ``t2ialign label``
    subparsers ``sub``."""
    help = "label every image by simulated labelers (the world judge with noise and skips)"
    sp = subcommand(sub, "simulate", cmd_simulate, help)
    sp.add_argument("--labelers", type=int, default=3, help="number of simulated labelers sim-1..sim-N")
    sp.add_argument("--noise", type=float, default=0.05, help="probability of flipping good <-> bad, 0-0.5")
    sp.add_argument("--skip", type=float, default=0.05, help="probability of answering skip, 0-0.5")
    add_seed(sp, default=0)
    sp.add_argument("--role", default="human", help="which images: human, unlabeled or eval")

    help = "write every label to a .jsonl or .parquet file, or the labeled images to an imagefolder"
    sp = subcommand(sub, "export", cmd_export, help)
    sp.add_argument("out", metavar="OUT", help="output file, .jsonl or .parquet; a folder with imagefolder")
    sp.add_argument(
        "--format",
        choices=("jsonl", "parquet", "imagefolder"),
        help="default: by OUT's suffix; imagefolder: OUT/images/*.png and OUT/metadata.jsonl (file_name, "
        "text, label columns) for datasets and diffusers' train_text_to_image.py --train_data_dir",
    )
    sp.add_argument(
        "--no-images", action="store_true", help="parquet: leave out the image column (sha256 names only)"
    )
    sp.add_argument(
        "--only-good", action="store_true", help="imagefolder: only the images labeled good by majority"
    )

    help = "read labels from an export, or preferences from a public set (Pick-a-Pic, ImageReward, HPDv2)"
    sp = subcommand(sub, "import", cmd_import, help)
    sp.add_argument("input", metavar="IN", help="a .jsonl or .parquet label export, or a public set's file")
    sp.add_argument(
        "--format",
        choices=("auto", "t2ialign", "pickapic", "imagereward", "hpdv2"),
        default="auto",
        help="IN's schema (default auto: Pick-a-Pic's columns, ImageReward's or HPDv2's keys, else a "
        "t2ialign label export); see docs/formats.md",
    )
    sp.add_argument(
        "--image-root",
        metavar="DIR",
        help="imagereward / hpdv2: the folder their image paths are relative to (default: IN's folder)",
    )
    sp.add_argument(
        "--images-from",
        metavar="RUN",
        help="run directory holding the image files of images new to RUN (a .jsonl export, or a .parquet "
        "one written with --no-images, carries none)",
    )

    help = "add gold images (world renders with a known answer) to measure raters' accuracy"
    sp = subcommand(sub, "gold", cmd_gold, help)
    sp.add_argument("--n", type=int, default=40, help="how many: half right renders, half wrong ones")
    add_seed(sp, default=0)

    help = "copy a run's SQLite database with SQLite's online backup API (safe while serving)"
    sp = subcommand(sub, "backup", cmd_backup, help)
    sp.add_argument("out", metavar="OUT", help="the backup file to create, e.g. backups/run-2026-12-01.db")

    sp = subcommand(sub, "stats", cmd_stats, "Table 1 class balance, agreement, progress")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")

    _add_compare_commands(sub)
    add_pairs_commands(sub)
