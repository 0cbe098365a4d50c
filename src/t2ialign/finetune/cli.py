"""``t2ialign finetune RUN``: stage 5 on the command line. Thin: parse, load config, call ``finetune``."""

from __future__ import annotations

import argparse
import json

from t2ialign.config import FINETUNE_WEIGHTS, TIMESTEP_BIAS
from t2ialign.core.cliutil import add_config, add_seed, config_from_args, subcommand
from t2ialign.store import open_existing


def _config(args):
    """The [finetune] table with the flags given (diffusers' example-script names) overriding its fields."""
    from t2ialign.config import load_config

    return config_from_args(load_config(args.config).finetune, args, "finetune")


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
    sp = subcommand(
        sub,
        "finetune",
        cmd_finetune,
        "stage 5: reward-weighted fine-tuning of the UNet with the pre-training loss (Eq. 4)",
        run="run directory (with labeled images and a reward model)",
    )
    add_config(sp, "[finetune]; see configs/table2/")
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
    sp.add_argument(
        "--prompt_categories",
        nargs="+",
        metavar="CATEGORY",
        help="keep only D_model images of prompts of these categories (e.g. count combination)",
    )
    sp.add_argument(
        "--balance_prompts",
        action=argparse.BooleanOptionalAction,
        help="draw every prompt of D_model equally often, however many of its images are kept",
    )
    sp.add_argument("--beta", type=float, help="weight of the pre-training loss (0: off)")
    sp.add_argument(
        "--timestep_bias_strategy",
        choices=TIMESTEP_BIAS,
        help="favour some timesteps of the D_model term, as diffusers' SDXL script (later: the noisiest)",
    )
    sp.add_argument("--timestep_bias_multiplier", type=float, help="odds of the favoured timesteps")
    sp.add_argument(
        "--timestep_bias_portion", type=float, help="share of timesteps favoured (later, earlier)"
    )
    sp.add_argument("--timestep_bias_begin", type=int, help="first favoured timestep (range)")
    sp.add_argument("--timestep_bias_end", type=int, help="end of the favoured timesteps, excluded (range)")
    sp.add_argument(
        "--pretrain_data", help="D_pre: 'world' (renders), a folder with captions.jsonl, or a .parquet file"
    )
    sp.add_argument("--pretrain_images", type=int, help="D_pre examples encoded once")
    sp.add_argument(
        "--pretrain_cfg_dropout", type=float, help="share of D_pre examples trained on the empty prompt"
    )
    sp.add_argument(
        "--no-unlabeled",
        dest="use_unlabeled",
        action="store_false",
        default=None,
        help="D_model = D_human only",
    )
    sp.add_argument("--max_train_steps", type=int)
    sp.add_argument("--train_batch_size", type=int)
    sp.add_argument("--gradient_accumulation_steps", type=int)
    sp.add_argument(
        "--learning_rate",
        type=float,
        help="default: 1e-4 on a shapes-world pipeline (its perfect-feedback bound), 1e-5 on any other model",
    )
    sp.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"))
    sp.add_argument("--lora_rank", type=int, help="0: train the whole UNet; r > 0: LoRA adapters of rank r")
    sp.add_argument(
        "--use_ema", action=argparse.BooleanOptionalAction, help="ship the EMA of the weights (default: on)"
    )
    sp.add_argument("--checkpointing_steps", type=int)
    add_seed(sp)
