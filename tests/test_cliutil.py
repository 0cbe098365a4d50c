"""The command line's shared pieces: shared flags declared once, and flags mapped onto config fields."""

import argparse
from dataclasses import dataclass

import pytest

from t2ialign.config import ConfigError, GenerateConfig
from t2ialign.core.cliutil import (
    DB_URL_HELP,
    add_config,
    add_run,
    add_sampler_args,
    add_seed,
    config_from_args,
    subcommand,
)


@dataclass
class Toy:
    steps: int = 10
    name: str = "a"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"toy.steps must be >= 1, got {self.steps}")


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int)
    p.add_argument("--label", dest="name")  # a flag named otherwise: its dest is the field's name
    p.add_argument("--other", default="x")  # no such field: ignored
    return p


def test_flags_override_only_when_given():
    cfg = Toy(steps=3, name="from-file")
    assert config_from_args(cfg, _parser().parse_args([]), "toy") == cfg
    assert config_from_args(cfg, _parser().parse_args(["--steps", "7"]), "toy") == Toy(7, "from-file")
    assert config_from_args(cfg, _parser().parse_args(["--label", "b"]), "toy") == Toy(3, "b")


def test_fixed_values_win_and_bad_values_are_config_errors():
    args = _parser().parse_args(["--steps", "7", "--label", "b"])
    assert config_from_args(Toy(), args, "toy", name="fixed") == Toy(7, "fixed")
    with pytest.raises(ConfigError, match="toy.steps must be >= 1, got 0"):
        config_from_args(Toy(), _parser().parse_args(["--steps", "0"]), "toy")
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_args(Toy(), args, "toy", nope=1)


def test_sampler_flags_fill_a_generate_config():
    p = argparse.ArgumentParser()
    add_sampler_args(p, model_help="model")
    args = p.parse_args(["--steps", "5", "--guidance-scale", "2", "--mixed-precision", "no", "--seed", "3"])
    cfg = config_from_args(GenerateConfig(), args, "generate", role="eval")
    assert (cfg.num_inference_steps, cfg.guidance_scale, cfg.mixed_precision, cfg.seed) == (5, 2.0, "no", 3)
    assert (cfg.role, cfg.batch_size, cfg.scheduler) == ("eval", 64, "default")
    with pytest.raises(ConfigError, match="generate.scheduler must be one of"):
        config_from_args(GenerateConfig(), p.parse_args(["--scheduler", "magic"]), "generate")


def test_subcommand_declares_run_db_url_and_func():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    sp = subcommand(sub, "go", len, "do it")
    add_config(sp, "[toy]")
    add_seed(sp, default=0)
    sp = subcommand(sub, "flagged", print, "no positional run", run=None)
    add_run(sp, flag=True)
    args = p.parse_args(["go", "R", "--db-url", "sqlite://"])
    assert (args.run, args.db_url, args.config, args.seed, args.func) == ("R", "sqlite://", None, 0, len)
    args = p.parse_args(["flagged", "--run", "R"])
    assert (args.run, args.db_url, args.func) == ("R", None, print)
    assert "SQLAlchemy URL" in DB_URL_HELP
    assert "table [toy]" in sub.choices["go"].format_help()
