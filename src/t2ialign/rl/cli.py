"""``t2ialign rl RUN``: DDPO on the command line. Thin: parse, load config, call ``rl``.

Flags of the RL objective set [rl]'s fields, --num_inference_steps and friends [rl.sample]'s, --guard_*
[rl.guard]'s, and the training flags (diffusers' example-script names, as ``t2ialign finetune`` and
``t2ialign dpo`` have them) [rl.train]'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from t2ialign.config import GUARD_ACTIONS, to_dict
from t2ialign.core.cliutil import add_config, add_seed, config_from_args, subcommand
from t2ialign.store import open_existing

LORA_RANK = 4  # the rank --lora gives when neither it nor the config names one (ddpo-pytorch's)


def _config(args):
    """The [rl] table with the flags given overriding its fields and its subtables'."""
    from t2ialign.config import RLConfig, RLGuardConfig, RLSampleConfig, load_config

    cfg = load_config(args.config).rl
    flags = dict(vars(args))
    if flags.get("lora_rank") == -1:  # --lora without a rank: the config's, or LORA_RANK
        flags["lora_rank"] = cfg.train.lora_rank or LORA_RANK
    guard = {k[len("guard_") :]: v for k, v in flags.items() if k.startswith("guard_")}
    own = {f.name for f in dataclasses.fields(RLConfig)} - {"sample", "guard", "train"}
    sample_names = {f.name for f in dataclasses.fields(RLSampleConfig)}
    guard_names = {f.name for f in dataclasses.fields(RLGuardConfig)}
    train_flags = {
        k: v for k, v in flags.items() if k not in own | sample_names and not k.startswith("guard_")
    }
    parts = {
        "sample": config_from_args(cfg.sample, argparse.Namespace(**flags), "rl.sample"),
        "guard": config_from_args(
            cfg.guard, argparse.Namespace(**{k: v for k, v in guard.items() if k in guard_names}), "rl.guard"
        ),
        "train": config_from_args(cfg.train, argparse.Namespace(**train_flags), "rl.train"),
    }
    own_flags = argparse.Namespace(**{k: v for k, v in flags.items() if k in own})
    return config_from_args(cfg, own_flags, "rl", **{k: to_dict(v) for k, v in parts.items()})


def cmd_rl(args) -> int:
    from t2ialign.rl.train import rl

    cfg = _config(args)
    with open_existing(args.run, args.db_url) as store:
        report = rl(cfg, store, name=args.name, resume_from_checkpoint=args.resume_from_checkpoint)
        out = store.run_dir / "rl" / args.name
    summary = {k: v for k, v in report.items() if k not in ("config", "guard", "reward_curve")}
    print(json.dumps(summary, indent=1))
    print(
        f"RL pipeline: {out / 'pipeline'}"
        + (f"; LoRA weights: {out / 'lora'}" if cfg.train.lora_rank else "")
    )
    return 0


def add_command(sub) -> None:
    sp = subcommand(
        sub,
        "rl",
        cmd_rl,
        "beyond the paper: DDPO (online RL with PPO clipping) of the UNet on a reward, with a guard "
        "against reward hacking",
        run="run directory (with prompts, and a reward model for --reward learned)",
    )
    add_config(sp, "[rl], [rl.sample], [rl.guard] and [rl.train]")
    sp.add_argument("--name", default="rl", help="output folder RUN/rl/NAME")
    sp.add_argument(
        "--resume_from_checkpoint",
        help="'latest' or a checkpoint folder; without it, a NAME that has checkpoints is refused",
    )
    sp.add_argument(
        "--reward", help="learned (RUN/reward), judge (the world's oracle) or python:module:function"
    )
    sp.add_argument("--reward_path", help="reward model folder for --reward learned (default RUN/reward)")
    sp.add_argument("--kl_weight", type=float, help="DPOK's KL penalty to the base model (0: plain DDPO)")
    sp.add_argument("--clip_range", type=float, help="PPO's clip range of the ratio")
    sp.add_argument("--num_inner_epochs", type=int, help="PPO passes over each step's samples")
    sp.add_argument("--timestep_fraction", type=float, help="share of each trajectory's steps trained on")
    sp.add_argument("--num_inference_steps", type=int, help="DDIM steps of the sampler")
    sp.add_argument("--eta", type=float, help="DDIM noise (0, 1]")
    sp.add_argument("--guidance_scale", type=float)
    sp.add_argument("--prompts_per_epoch", type=int)
    sp.add_argument("--images_per_prompt", type=int)
    sp.add_argument("--guard_every", type=int, help="RL steps between two guard evaluations (0: no guard)")
    sp.add_argument("--guard_action", choices=GUARD_ACTIONS, help="what the guard does when its rule fires")
    sp.add_argument("--pretrained_model_name_or_path", help="base pipeline folder (default: the world model)")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument(
        "--lora",
        dest="lora_rank",
        action="store_const",
        const=-1,
        help=f"train LoRA adapters (the default; rank: --lora_rank, the config's, or {LORA_RANK})",
    )
    mode.add_argument("--full", dest="lora_rank", action="store_const", const=0, help="train the whole UNet")
    mode.add_argument("--lora_rank", type=int, help="0: the whole UNet; r > 0: LoRA adapters of rank r")
    sp.add_argument("--max_train_steps", type=int, help="RL steps (each: sample, reward, PPO updates)")
    sp.add_argument("--train_batch_size", type=int, help="trajectories per process per optimizer step")
    sp.add_argument("--gradient_accumulation_steps", type=int)
    sp.add_argument("--learning_rate", type=float)
    sp.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"))
    sp.add_argument("--use_ema", action=argparse.BooleanOptionalAction, help="ship the EMA of the weights")
    sp.add_argument("--checkpointing_steps", type=int)
    add_seed(sp)
