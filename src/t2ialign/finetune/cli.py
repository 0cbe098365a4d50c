"""``t2ialign finetune RUN``: stage 5 on the command line. Thin: parse, load config, call ``finetune``."""

from __future__ import annotations

import argparse
import json

from t2ialign.config import FINETUNE_WEIGHTS
from t2ialign.store import open_existing

# command-line flags that override fields of the [finetune] table (diffusers' example-script names)
OVERRIDES = (
    "pretrained_model_name_or_path",
    "reward",
    "weights",
    "top_k_per_prompt",
    "beta",
    "pretrain_data",
    "pretrain_images",
    "pretrain_cfg_dropout",
    "max_train_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "mixed_precision",
    "lora_rank",
    "checkpointing_steps",
    "seed",
)


def _config(args):
    from t2ialign.config import from_dict, load_config, to_dict

    cfg = load_config(args.config).finetune
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    if args.use_ema is not None:
        overrides["use_ema"] = args.use_ema
    if args.no_unlabeled:
        overrides["use_unlabeled"] = False
    return from_dict(type(cfg), to_dict(cfg) | overrides, "finetune")


def cmd_finetune(args) -> int:
    from t2ialign.finetune.train import finetune

    cfg = _config(args)
    with open_existing(args.run, args.db_url) as store:
        report = finetune(cfg, store, name=args.name, resume_from_checkpoint=args.resume_from_checkpoint)
        out = store.run_dir / "finetune" / args.name
    print(json.dumps(report, indent=1))
    print(
        f"fine-tuned pipeline: {out / 'pipeline'}"
        + (f"; LoRA weights: {out / 'lora'}" if cfg.lora_rank else "")
    )
    return 0


def add_command(sub) -> None:
    sp = sub.add_parser(
        "finetune", help="stage 5: reward-weighted fine-tuning of the UNet with the pre-training loss (Eq. 4)"
    )
    sp.add_argument("run", help="run directory (with labeled images and a reward model)")
    sp.add_argument("--db-url", help="SQLAlchemy URL of the run database (default: SQLite file in the run)")
    sp.add_argument("--config", help="TOML or JSON config file (table [finetune]); see configs/table2/")
    sp.add_argument("--name", default="default", help="output folder RUN/finetune/NAME")
    sp.add_argument(
        "--resume_from_checkpoint",
        help="'latest' or a checkpoint folder; without it, a NAME that has checkpoints is refused",
    )
    sp.add_argument("--pretrained_model_name_or_path", help="base pipeline folder (default: the world model)")
    sp.add_argument("--reward", help="reward model folder (default: RUN/reward)")
    sp.add_argument("--weights", choices=FINETUNE_WEIGHTS)
    sp.add_argument(
        "--top_k_per_prompt", type=int, help="keep each prompt's k images of highest weight (0: all)"
    )
    sp.add_argument("--beta", type=float, help="weight of the pre-training loss (0: off)")
    sp.add_argument(
        "--pretrain_data", help="D_pre: 'world' (renders), a folder with captions.jsonl, or a .parquet file"
    )
    sp.add_argument("--pretrain_images", type=int, help="D_pre examples encoded once")
    sp.add_argument(
        "--pretrain_cfg_dropout", type=float, help="share of D_pre examples trained on the empty prompt"
    )
    sp.add_argument("--no-unlabeled", dest="no_unlabeled", action="store_true", help="D_model = D_human only")
    sp.add_argument("--max_train_steps", type=int)
    sp.add_argument("--train_batch_size", type=int)
    sp.add_argument("--gradient_accumulation_steps", type=int)
    sp.add_argument("--learning_rate", type=float)
    sp.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"))
    sp.add_argument("--lora_rank", type=int, help="0: train the whole UNet; r > 0: LoRA adapters of rank r")
    sp.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, help="ship the EMA of the weights (default: on)"
    )
    sp.add_argument("--checkpointing_steps", type=int)
    sp.add_argument("--seed", type=int)
    sp.set_defaults(func=cmd_finetune)
