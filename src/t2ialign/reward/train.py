"""Training r_phi on D_human with Eq. 3 (MSE + lambda * prompt classification), and the paper's Fig. 4
evaluation: pairwise accuracy against human preferences, for the reward and for CLIP score."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection

import numpy as np
import torch
from torch import nn

from t2ialign.config import RewardConfig, to_dict
from t2ialign.core.training import TrainState, fit
from t2ialign.models.embed import Embeddings, clip_fingerprint
from t2ialign.reward.data import halve_per_prompt, labeled_images, split_train_val
from t2ialign.reward.losses import mse_loss, prompt_classification_loss, reward_loss
from t2ialign.reward.model import RewardMLP, RewardModel
from t2ialign.reward.tower import TowerEmbedder
from t2ialign.store import Store
from t2ialign.world.prompts import parse_prompt, perturb


def candidate_prompts(prompt: str, n: int, seed: int, shapes: list[str]) -> list[str]:
    """The original prompt first, then its N - 1 perturbations (Appendix E)."""
    return [parse_prompt(prompt).text(), *perturb(prompt, n, seed=seed, shapes=shapes)]


def fit_reward(
    x: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    y: torch.Tensor,
    good: torch.Tensor,
    zc: torch.Tensor,
    cfg: RewardConfig,
    progress: bool = False,
    tower: nn.Module | None = None,
) -> tuple[RewardMLP, list[float]]:
    """The training loop of Eq. 3 on embeddings: x, z (M, D) image and prompt embeddings, y (M,) targets,
    good (M,) bool (which images the PC loss uses), zc (M, N, D) candidate prompts, the original first.

    With an image tower being tuned (``reward.tower``), ``x`` is instead a function from example indices
    (B,) to their embeddings (B, D) through ``tower``, whose trainable weights learn at
    ``cfg.image_tower.lr`` beside the MLP's ``cfg.lr``."""
    torch.manual_seed(cfg.seed)
    x_of = x if callable(x) else x.__getitem__
    mlp = RewardMLP(z.shape[1], cfg.hidden, cfg.dropout)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x_of(idx)  # (B, D)
        mse = mse_loss(mlp(xb, z[idx]), y[idx])
        return reward_loss(mse, pc_term(mlp, xb, idx, good[idx], zc, cfg), cfg.pc_weight)

    return mlp, train_loop(mlp, cfg, len(z), batch_loss, progress, tower)


def pc_term(
    mlp, xb: torch.Tensor, idx: torch.Tensor, keep: torch.Tensor, zc: torch.Tensor, cfg: RewardConfig
):
    """Eq. 2 on the batch's examples where ``keep`` (B,) holds (None if none, or lambda = 0): each kept
    image xb (B, D) against its candidate prompts zc[idx] (N, D each), the original first."""
    if cfg.pc_weight <= 0 or not bool(keep.any()):
        return None
    g, n = idx[keep], zc.shape[1]
    r_pc = mlp(xb[keep].repeat_interleave(n, 0), zc[g].reshape(-1, zc.shape[2])).view(len(g), n)
    return prompt_classification_loss(r_pc, torch.zeros(len(g), dtype=torch.long), cfg.temperature)


def train_loop(
    mlp: RewardMLP,
    cfg: RewardConfig,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    progress: bool,
    tower: nn.Module | None = None,
) -> list[float]:
    """AdamW over ``cfg.epochs`` epochs of ``n`` examples in a new seeded order each epoch, on
    ``batch_loss(indices)``; the MLP (and the tower's trainable weights, at ``cfg.image_tower.lr``) learn.
    Returns the last loss of each epoch."""
    groups = [{"params": list(mlp.parameters())}]
    if tower is not None:  # set_lr scales each group's rate by its lr_scale
        tuned = [p for p in tower.parameters() if p.requires_grad]
        groups.append({"params": tuned, "lr_scale": cfg.image_tower.lr / cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch = math.ceil(n / cfg.batch_size)
    order = None

    def loss_fn(step: int) -> torch.Tensor:
        nonlocal order
        if step % per_epoch == 0:  # each epoch a new order of the examples
            order = torch.randperm(n, generator=gen)
        i = (step % per_epoch) * cfg.batch_size
        return batch_loss(order[i : i + cfg.batch_size])

    module = mlp if tower is None else nn.ModuleDict({"mlp": mlp, "tower": tower})
    state = TrainState(module, opt, config={})
    losses = fit(
        state,
        loss_fn,
        name="reward",
        steps=cfg.epochs * per_epoch,
        lr=cfg.lr,
        schedule="constant",
        max_grad_norm=None,
        progress=progress,
    )
    state.finish()
    return losses[per_epoch - 1 :: per_epoch]


def training_tensors(
    train: list[dict], items: list[dict], emb: Embeddings, cfg: RewardConfig, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 3's inputs for the ``train`` images, after embedding every image of ``items`` and every prompt
    and candidate prompt: z (M, D) prompt embeddings, y (M,) targets, good (M,) bool (the images the PC
    loss uses) and zc (M, N, D) candidate prompts, the original first."""
    seen_shapes = sorted({parse_prompt(r["prompt"]).shape for r in train})
    cands = {
        p: candidate_prompts(p, cfg.n_prompts, cfg.seed, seen_shapes) for p in {r["prompt"] for r in train}
    }
    emb.ensure(
        [r["sha256"] for r in items],
        sorted({t for c in cands.values() for t in c} | {r["prompt"] for r in items}),
        progress,
    )
    z = emb.texts.get([r["prompt"] for r in train])
    y = torch.tensor([r["y"] for r in train])
    good = torch.tensor([r["y"] >= 0.5 for r in train])  # PC loss on images labeled good (Sec. 3.2)
    zc = torch.stack([emb.texts.get(cands[r["prompt"]]) for r in train])
    return z, y, good, zc


def train_reward(
    store: Store,
    cfg: RewardConfig,
    clip,
    processor,
    clip_id: str,
    clip_path: str,
    progress: bool = True,
    split_seed: int | None = None,
    images: Collection[str] | None = None,
) -> tuple[RewardModel, dict]:
    """Fit r_phi on the run's labeled seen-prompt images; returns the model and its training report.

    ``split_seed`` fixes the train / validation split (default: ``cfg.seed``), so that models of several
    seeds can be scored on the same held-out images. ``images`` (sha256s) keeps only those labeled images:
    the labels of one iterated loop (``t2ialign loop``) in a run that holds others.
    """
    items = labeled_images(store)
    if images is not None:
        keep = set(images)
        items = [r for r in items if r["sha256"] in keep]
    train, val = split_train_val(items, cfg.val_fraction, cfg.seed if split_seed is None else split_seed)
    if cfg.half_data:
        train = halve_per_prompt(train, cfg.seed)
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} labeled images of seen prompts: label more before training a reward"
        )
    emb = Embeddings(store, clip, processor)
    z, y, good, zc = training_tensors(train, items, emb, cfg, progress)

    t0 = time.time()
    tower = None
    if cfg.image_tower.layers:  # beyond the paper: the image tower learns too (reward/tower.py)
        tower = TowerEmbedder(clip, processor, store, cfg.image_tower.layers)
        shas = [r["sha256"] for r in train]
        mlp, history = fit_reward(
            lambda idx: tower.embed([shas[i] for i in idx.tolist()]), z, y, good, zc, cfg, progress, tower
        )
    else:
        x = emb.images.get([r["sha256"] for r in train])  # (M, D)
        mlp, history = fit_reward(x, z, y, good, zc, cfg, progress)
    meta = {
        "dim": z.shape[1],
        "hidden": list(cfg.hidden),
        "dropout": cfg.dropout,
        "clip": {"model_id": clip_id, "path": clip_path, "fingerprint": clip_fingerprint(clip)},
        "config": to_dict(cfg),
        "n_train": len(train),
        "n_val": len(val),
        "seconds": round(time.time() - t0, 2),
    }
    scorer = None if tower is None else tower.clip.requires_grad_(False).eval()
    model = RewardModel(mlp, meta, clip, processor, scorer_clip=scorer)
    return model, {
        "n_train": len(train),
        "n_val": len(val),
        "loss_history": history,
        "seconds": meta["seconds"],
    }


def pairwise_accuracy(scores: dict[str, float], pairs: list[tuple[dict, dict]]) -> float:
    """Share of pairs where the preferred image scores higher (ties count half)."""
    if not pairs:
        return math.nan
    hits = [
        1.0
        if scores[a["sha256"]] > scores[b["sha256"]]
        else 0.5
        if scores[a["sha256"]] == scores[b["sha256"]]
        else 0.0
        for a, b in pairs
    ]
    return float(np.mean(hits))


def score_items(items: list[dict], emb: Embeddings, model: RewardModel | None) -> dict[str, float]:
    """Reward of each image with its prompt, or CLIP score (cosine of the embeddings of ``emb``'s CLIP)
    when model is None."""
    shas, prompts = [r["sha256"] for r in items], [r["prompt"] for r in items]
    if model is not None:
        s = model.score_store(emb.store, shas, prompts)
    else:
        s = (emb.images.get(shas) * emb.texts.get(prompts)).sum(-1)
    return {r["sha256"]: float(v) for r, v in zip(items, s, strict=True)}
