"""``t2ialign dpo RUN``: Diffusion-DPO on the command line. Thin: parse, load config, call ``dpo``.

Flags of the DPO loss and pairs set [dpo]'s fields; the training flags (diffusers' example-script names,
as ``t2ialign finetune`` has them) set [dpo.train]'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from t2ialign.config import DPO_PAIR_SOURCES, to_dict
from t2ialign.core.cliutil import add_config, add_seed, config_from_args, subcommand
from t2ialign.store import open_existing

LORA_RANK = 8  # the rank --lora gives when neither it nor the config names one


def _config(args):
    """The [dpo] table with the flags given overriding its fields (and [dpo.train]'s)."""
    from t2ialign.config import DPOConfig, load_config

    cfg = load_config(args.config).dpo
    flags = dict(vars(args))
    if flags.get("lora_rank") == -1:  # --lora without a rank: the config's, or LORA_RANK
        flags["lora_rank"] = cfg.train.lora_rank or LORA_RANK
    # [dpo]'s own flags (DPO's beta is not Eq. 4's) set [dpo]; the others set [dpo.train]
    own = {f.name for f in dataclasses.fields(DPOConfig)} - {"train"}
    train_flags = argparse.Namespace(**{k: v for k, v in flags.items() if k not in own})
    train = config_from_args(cfg.train, train_flags, "dpo.train")
    dpo_flags = argparse.Namespace(**{k: v for k, v in flags.items() if k in own})
    return config_from_args(cfg, dpo_flags, "dpo", train=to_dict(train))


def cmd_dpo(args) -> int:
    from t2ialign.dpo.train import dpo

    cfg = _config(args)
    with open_existing(args.run, args.db_url) as store:
        report = dpo(cfg, store, name=args.name, resume_from_checkpoint=args.resume_from_checkpoint)
        out = store.run_dir / "dpo" / args.name
    print(json.dumps(report, indent=1))
    print(
        f"DPO pipeline: {out / 'pipeline'}"
        + (f"; LoRA weights: {out / 'lora'}" if cfg.train.lora_rank else "")
    )
    return 0


def add_command(sub) -> None:
    sp = subcommand(
        sub,
        "dpo",
        cmd_dpo,
        "beyond the paper: Diffusion-DPO of the UNet on good/bad pairs of one prompt (Wallace et al. 2023)",
        run="run directory (with labeled images)",
    )
    add_config(sp, "[dpo] and [dpo.train]")
    sp.add_argument("--name", default="dpo", help="output folder RUN/dpo/NAME")
    sp.add_argument(
        "--resume_from_checkpoint",
        help="'latest' or a checkpoint folder; without it, a NAME that has checkpoints is refused",
    )
    sp.add_argument("--beta", type=float, help="DPO's KL strength (the paper: 5000 for SD1.5)")
    sp.add_argument("--pairs", choices=DPO_PAIR_SOURCES, help="where the preference pairs come from")
    sp.add_argument("--max_pairs_per_prompt", type=int, help="a seeded draw of k pairs per prompt (0: all)")
    sp.add_argument("--pretrained_model_name_or_path", help="base pipeline folder (default: the world model)")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument(
        "--lora",
        dest="lora_rank",
        action="store_const",
        const=-1,
        help=f"train LoRA adapters (rank: --lora_rank, the config's, or {LORA_RANK})",
    )
    mode.add_argument("--full", dest="lora_rank", action="store_const", const=0, help="train the whole UNet")
    mode.add_argument("--lora_rank", type=int, help="0: the whole UNet; r > 0: LoRA adapters of rank r")
    sp.add_argument("--max_train_steps", type=int)
    sp.add_argument("--train_batch_size", type=int, help="pairs (2 images each) per process per micro-step")
    sp.add_argument("--gradient_accumulation_steps", type=int)
    sp.add_argument("--learning_rate", type=float)
    sp.add_argument("--lr_warmup_steps", type=int)
    sp.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"))
    sp.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, help="ship the EMA of the weights (default: on)"
    )
    sp.add_argument("--checkpointing_steps", type=int)
    add_seed(sp)
