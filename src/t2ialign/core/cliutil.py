"""The command line's shared pieces: the flags many commands take, declared once, and the one map from
parsed flags to a config dataclass.

Every stage's command-line module imports it (core is the lowest layer, so any of them may). Library code
never parses argv: a command builds its config here and calls a function that takes it.
"""

from __future__ import annotations

import argparse
import dataclasses

from t2ialign.core.config import from_dict, to_dict

DB_URL_HELP = "SQLAlchemy URL of the run database (default: SQLite file in the run)"


def subcommand(sub, name: str, func, help: str, run: str | None = "run directory", **kwargs):
    """Register command ``name`` on the subparsers ``sub`` to call ``func(args)``, with a positional RUN
    (``run`` is its help) and ``--db-url`` unless ``run`` is None; ``kwargs`` go to ``add_parser``.
    Returns the command's parser, for its own flags."""
    sp = sub.add_parser(name, help=help, **kwargs)
    if run is not None:
        add_run(sp, run)
    sp.set_defaults(func=func)
    return sp


def add_run(sp: argparse.ArgumentParser, help: str = "run directory", *, flag: bool = False) -> None:
    """The run directory, positional RUN (``--run``, required, where ``flag``), and its ``--db-url``."""
    if flag:
        sp.add_argument("--run", required=True, help=help)
    else:
        sp.add_argument("run", metavar="RUN", help=help)
    sp.add_argument("--db-url", help=DB_URL_HELP)


def add_config(sp: argparse.ArgumentParser, table: str) -> None:
    """``--config FILE``; ``table`` names the table the command reads, e.g. "[reward]"."""
    sp.add_argument("--config", help=f"TOML or JSON config file (table {table})")


def add_seed(sp: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    """``--seed``: with ``default`` None it overrides the config's seed only when given."""
    sp.add_argument("--seed", type=int, default=default, help=help)


def add_sampler_args(sp: argparse.ArgumentParser, model_help: str, seed_help: str | None = None) -> None:
    """How images are sampled (GenerateConfig): model, steps, guidance, scheduler, batch size, precision,
    compile and seed; each overrides the config's field only when given (see :func:`config_from_args`)."""
    sp.add_argument("--model", help=model_help)
    sp.add_argument("--steps", dest="num_inference_steps", type=int, help="sampler steps")
    sp.add_argument("--guidance-scale", dest="guidance_scale", type=float)
    sp.add_argument("--scheduler", help="default, dpm++, ddim, euler, euler_a or pndm")
    sp.add_argument("--batch-size", dest="batch_size", type=int, help="images per pipeline call")
    sp.add_argument(
        "--mixed-precision",
        dest="mixed_precision",
        help="auto (the default: bf16 where the device has it natively), no, bf16 or fp16",
    )
    sp.add_argument(
        "--compile",
        help="no (the default) or a torch.compile backend for the UNet: inductor pays from a few thousand images",
    )
    add_seed(sp, help=seed_help)


def config_from_args(cfg, args: argparse.Namespace, where: str, **fixed):
    """``cfg`` (a config dataclass) with the fields the command line sets, validated.

    A flag whose ``dest`` is the name of a field of ``cfg`` overrides it when given: such flags default to
    None, so a flag left out keeps the config file's value. Where a flag's name differs from its field,
    its ``dest`` is the rename (``--steps`` has dest ``num_inference_steps``). ``fixed`` values override
    both. The result is rebuilt with ``from_dict``, so a bad value on the command line is the same
    ConfigError (``where.field ...``) as in a config file.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return from_dict(type(cfg), to_dict(cfg) | given | fixed, where)
