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
from t2ialign.reward.pairwise import (
    TRAIN_SPLITS,
    decided_pairs,
    preference_items,
    split_pairs,
    train_pairwise_reward,
)
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
    """Pairwise accuracy (mean, std over seeds) of each scorer on each evaluation set.

    The paper's variants (reward, reward_no_pc, reward_half_data) read the frozen CLIP embedding. Beyond
    the paper, ``reward_image_tower`` (when ``cfg.image_tower.layers`` is set) also tunes the image tower,
    and ``reward_bradley_terry`` (when the run has answered pairs) learns from pairwise feedback; both are
    scored on the same pairs. With pairwise feedback, ``preference_pairs`` holds every scorer's accuracy
    on the raters' decided pairs that no scorer trained on (``n_preference_pairs`` counts them)."""
    sets = eval_sets(store, cfg)
    pairs = {k: preference_pairs(v) for k, v in sets.items()}
    frozen = replace(cfg, image_tower=replace(cfg.image_tower, layers=0), objective="mse")
    variants = {
        "reward": lambda s: replace(frozen, seed=s),
        "reward_no_pc": lambda s: replace(frozen, seed=s, pc_weight=0.0),
        "reward_half_data": lambda s: replace(frozen, seed=s, half_data=True),
    }
    if cfg.image_tower.layers:
        variants["reward_image_tower"] = lambda s: replace(cfg, seed=s, objective="mse")
    held = frozenset(r["sha256"] for r in sets["seen_prompts"])
    pref_sets = preference_eval_pairs(store, cfg, held)
    if pref_sets is not None:
        variants["reward_bradley_terry"] = lambda s: replace(frozen, seed=s, objective="bradley_terry")
    emb = Embeddings(store, clip, processor)
    scored = [p for v in pairs.values() for pair in v for p in pair]
    scored += [p for v in (pref_sets or {}).values() for pair in v for p in pair]
    emb.ensure([r["sha256"] for r in scored], sorted({r["prompt"] for r in scored}))
    results: dict = {"n_pairs": {k: len(v) for k, v in pairs.items()}, "seeds": list(seeds), "scorers": {}}
    if pref_sets is not None:
        results |= {"n_preference_pairs": {k: len(v) for k, v in pref_sets.items()}, "preference_pairs": {}}

    def train(name: str, c: RewardConfig):
        if name == "reward_bradley_terry":
            return train_pairwise_reward(store, c, clip, processor, clip_id, clip_path, progress, held)[0]
        # the validation split stays that of cfg.seed, so no variant trains on the pairs it is scored on
        return train_reward(store, c, clip, processor, clip_id, clip_path, progress, split_seed=cfg.seed)[0]

    for name, make in variants.items():
        models = [train(name, make(s)) for s in seeds]
        results["scorers"][name] = _accuracies(pairs, emb, models)
        if pref_sets is not None:
            results["preference_pairs"][name] = _accuracies(pref_sets, emb, models)
    results["scorers"]["clip_score"] = _accuracies(pairs, emb, [None])
    if pref_sets is not None:
        results["preference_pairs"]["clip_score"] = _accuracies(pref_sets, emb, [None])
    return results


def preference_eval_pairs(store: Store, cfg: RewardConfig, held: frozenset[str]) -> dict[str, list] | None:
    """The raters' decided pairs (preferred, other) that no scorer trains on, by evaluation set; None when
    the run has no answered pairs of prompts that a pairwise reward could train on. Seen prompts: the
    pairwise reward's held-out pairs that hold no image the binary reward trains on."""
    items = preference_items(store)
    if not any(r["split"] in TRAIN_SPLITS for r in items):
        return None
    trained = {r["sha256"] for r in labeled_images(store) if r["split"] == "seen"} - held
    _, val = split_pairs(items, cfg.val_fraction, cfg.seed, held)
    val = [r for r in val if not {r["image_a"], r["image_b"]} & trained]
    by_split = {"unseen_prompts": "unseen_prompt", "unseen_objects": "unseen_object"}
    out = {"seen_prompts": decided_pairs(val)}
    out |= {k: decided_pairs([r for r in items if r["split"] == sp]) for k, sp in by_split.items()}
    return out


def _accuracies(pairs: dict[str, list], emb: Embeddings, models: list) -> dict[str, dict]:
    """{set: _summary over models} of pairwise accuracy; a None model is CLIP score (one, no spread)."""
    out = {}
    for k in EVAL_SETS:
        items = list({r["sha256"]: r for pair in pairs[k] for r in pair}.values())
        accs = [
            pairwise_accuracy(score_items(items, emb, m), pairs[k]) if pairs[k] else np.nan for m in models
        ]
        out[k] = _summary(accs) if models != [None] else {"mean": _round(accs[0]), "std": 0.0, "per_seed": []}
    return out


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
