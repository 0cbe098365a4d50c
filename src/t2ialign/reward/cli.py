"""``t2ialign reward embed | train | score | eval``: stage 4 on the command line. Thin: parse, load, call."""

from __future__ import annotations

import json
from pathlib import Path

from t2ialign.core.cliutil import add_config, add_seed, config_from_args, subcommand
from t2ialign.core.config import to_dict
from t2ialign.store import open_existing


def _config(args):
    from t2ialign.config import load_config

    cfg = config_from_args(load_config(args.config).reward, args, "reward")
    tower = {k: getattr(args, f"image_tower_{k}", None) for k in ("layers", "lr")}
    if any(v is not None for v in tower.values()):  # the nested [reward.image_tower] table
        tower = {k: v for k, v in tower.items() if v is not None}
        cfg = config_from_args(cfg, args, "reward", image_tower=to_dict(cfg.image_tower) | tower)
    return cfg


def _clip(cfg):
    from t2ialign.models.load import load_clip, resolve_clip_path

    folder, _ = resolve_clip_path(cfg.clip)
    clip, processor, clip_id = load_clip(cfg.clip)
    return clip, processor, clip_id, str(folder)


def cmd_embed(args) -> int:
    from t2ialign.core import dist
    from t2ialign.models.embed import Embeddings
    from t2ialign.reward.data import labeled_images

    cfg = _config(args)
    clip, processor, clip_id, _ = _clip(cfg)
    with open_existing(args.run, args.db_url) as store:
        images = store.list_images()
        emb = Embeddings(store, clip, processor)
        # under torchrun each process embeds its share of the images and rank 0 merges them
        emb.ensure_shared(
            [r["sha256"] for r in images],
            sorted({p["text"] for p in store.list_prompts()}),
            progress=dist.is_main(),
        )
        n_labeled = len(labeled_images(store))
    if dist.is_main():
        print(
            f"{len(emb.images.keys)} image and {len(emb.texts.keys)} text embeddings of {clip_id} in "
            f"{emb.images.dir} ({n_labeled} labeled images)"
        )
    return 0


def cmd_train(args) -> int:
    from t2ialign.reward.pairwise import train_pairwise_reward
    from t2ialign.reward.train import train_reward

    cfg = _config(args)
    clip, processor, clip_id, clip_path = _clip(cfg)
    train = train_pairwise_reward if cfg.objective == "bradley_terry" else train_reward
    with open_existing(args.run, args.db_url) as store:
        model, report = train(store, cfg, clip, processor, clip_id, clip_path)
        out = Path(args.out) if args.out else store.run_dir / "reward"
        model.save(out)
        store.update_metrics(reward_train={k: v for k, v in report.items() if k != "loss_history"})
    print(f"reward model ({report['n_train']} training images, {report['seconds']} s) written to {out}")
    return 0


def cmd_score(args) -> int:
    from PIL import Image

    from t2ialign.reward.model import RewardModel

    model = RewardModel.load(args.model, clip_path=args.clip)
    for p in args.images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no image at {p}")
    images = [Image.open(p).convert("RGB") for p in args.images]
    scores = model.score([args.prompt] * len(images), images)
    for p, s in zip(args.images, scores.tolist(), strict=True):
        print(f"{s:.4f}  {p}")
    return 0


def cmd_eval(args) -> int:
    from t2ialign.reward.accuracy import evaluate_rewards, plot_fig4

    cfg = _config(args)
    clip, processor, clip_id, clip_path = _clip(cfg)
    with open_existing(args.run, args.db_url) as store:
        results = evaluate_rewards(
            store, cfg, clip, processor, clip_id, clip_path, seeds=tuple(range(args.seeds))
        )
        png = plot_fig4(results, store.run_dir / "reward_fig4.png")
        store.update_metrics(reward_eval=results)
    print(json.dumps(results["scorers"], indent=1))
    print(f"figure: {png}")
    return 0


def _add_run_command(sub, name: str, func, help: str):
    """A command over a run that reads the [reward] table and a CLIP."""
    sp = subcommand(sub, name, func, help)
    add_config(sp, "[reward]")
    sp.add_argument("--clip", help="local transformers CLIP folder (default: the shipped world CLIP)")
    return sp


def _add_training_args(sp) -> None:
    """The [reward] fields that ``train`` and ``eval`` take from the command line."""
    sp.add_argument("--pc-weight", dest="pc_weight", type=float, help="lambda of Eq. 3")
    sp.add_argument("--temperature", type=float, help="T of Eq. 2")
    sp.add_argument("--epochs", type=int)
    sp.add_argument(
        "--image-tower-layers",
        type=int,
        help="beyond the paper: also tune the CLIP image tower's last N layers (-1: all; 0: frozen, the paper)",
    )
    sp.add_argument("--image-tower-lr", type=float, help="learning rate of the tuned image tower")
    sp.add_argument(
        "--objective",
        choices=("mse", "bradley_terry"),
        help="mse: Eq. 1-3 on binary labels (the paper); bradley_terry: on pairwise preferences",
    )
    add_seed(sp)


def add_commands(sub) -> None:
    """Register ``embed``, ``train``, ``score`` and ``eval`` on the ``reward`` subparsers."""
    _add_run_command(sub, "embed", cmd_embed, "CLIP embeddings of every image and prompt of the run, cached")

    help = "train r_phi: MSE (Eq. 1) + lambda * prompt classification (Eq. 2)"
    sp = _add_run_command(sub, "train", cmd_train, help)
    sp.add_argument("--out", help="output folder (default: RUN/reward)")
    _add_training_args(sp)

    sp = subcommand(
        sub, "score", cmd_score, "score images against a prompt with a trained reward model", run=None
    )
    sp.add_argument("model", help="reward model folder")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--prompt", required=True)
    sp.add_argument(
        "--clip", help="where its CLIP is, if not where it was trained (it must be the same CLIP)"
    )

    help = "pairwise accuracy vs labelers (Fig. 4): reward, no PC, half data, CLIP score"
    sp = _add_run_command(sub, "eval", cmd_eval, help)
    sp.add_argument("--seeds", type=int, default=3, help="number of seeds per trained variant")
    _add_training_args(sp)
