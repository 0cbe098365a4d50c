"""The paper's Fig. 4: how often a scorer prefers the image that labelers preferred.

Over pairs of images of one prompt that labelers judged differently, the share where the scorer ranks the
preferred image higher; on held-out images of seen prompts, on images of unseen prompts, and of unseen
objects. Scorers: our reward, our reward without the PC loss (lambda = 0), our reward trained on half the
images per prompt (Fig. 4b), and CLIP score. Every trained variant is repeated over several seeds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from t2ialign.config import RewardConfig
from t2ialign.models.embed import Embeddings
from t2ialign.reward.data import labeled_images, preference_pairs, split_train_val
from t2ialign.reward.train import pairwise_accuracy, score_items, train_reward
from t2ialign.store import Store

EVAL_SETS = ("seen_prompts", "unseen_prompts", "unseen_objects")


def eval_sets(store: Store, cfg: RewardConfig) -> dict[str, list[dict]]:
    """Labeled images that no variant trains on, by kind of prompt."""
    items = labeled_images(store)
    _, val = split_train_val(items, cfg.val_fraction, cfg.seed)
    return {
        "seen_prompts": val,
        "unseen_prompts": [r for r in items if r["split"] == "unseen_prompt"],
        "unseen_objects": [r for r in items if r["split"] == "unseen_object"],
    }


def evaluate_rewards(
    store: Store,
    cfg: RewardConfig,
    clip,
    processor,
    clip_id: str,
    clip_path: str,
    seeds=(0, 1, 2),
    progress: bool = True,
) -> dict:
    """Pairwise accuracy (mean, std over seeds) of each scorer on each evaluation set."""
    sets = eval_sets(store, cfg)
    pairs = {k: preference_pairs(v) for k, v in sets.items()}
    variants = {
        "reward": lambda s: replace(cfg, seed=s),
        "reward_no_pc": lambda s: replace(cfg, seed=s, pc_weight=0.0),
        "reward_half_data": lambda s: replace(cfg, seed=s, half_data=True),
    }
    emb = Embeddings(store, clip, processor)
    emb.ensure(
        [r["sha256"] for v in sets.values() for r in v],
        sorted({r["prompt"] for v in sets.values() for r in v}),
    )
    results: dict = {"n_pairs": {k: len(v) for k, v in pairs.items()}, "seeds": list(seeds), "scorers": {}}
    for name, make in variants.items():
        per_seed = {k: [] for k in EVAL_SETS}
        for s in seeds:
            # the validation split stays that of cfg.seed, so no variant trains on the pairs it is scored on
            model, _ = train_reward(
                store, make(s), clip, processor, clip_id, clip_path, progress=progress, split_seed=cfg.seed
            )
            for k in EVAL_SETS:
                per_seed[k].append(
                    pairwise_accuracy(score_items(sets[k], emb, model), pairs[k]) if pairs[k] else np.nan
                )
        results["scorers"][name] = {k: _summary(v) for k, v in per_seed.items()}
    results["scorers"]["clip_score"] = {
        k: {
            "mean": _round(pairwise_accuracy(score_items(sets[k], emb, None), pairs[k]))
            if pairs[k]
            else None,
            "std": 0.0,
            "per_seed": [],
        }
        for k in EVAL_SETS
    }
    return results


def _summary(values: list[float]) -> dict:
    """Mean and spread over seeds (None where the set has no pairs)."""
    finite = [v for v in values if not np.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "per_seed": [None] * len(values)}
    return {
        "mean": _round(np.mean(finite)),
        "std": _round(np.std(finite)),
        "per_seed": [_round(x) for x in values],
    }


def _round(x) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)


def plot_fig4(results: dict, path: str | Path) -> Path:
    """A grouped bar chart like the paper's Fig. 4: accuracy per scorer and evaluation set, std as error bars."""
    from t2ialign.core import figures  # matplotlib only when a figure is drawn

    return figures.write_png(figures.fig4(results, sets=list(EVAL_SETS)), path)
