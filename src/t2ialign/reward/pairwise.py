"""Beyond the paper (issue 17, part 3): a Bradley-Terry reward from pairwise feedback.

The paper learns r_phi from binary labels (Eq. 1). Feedback in the field is mostly pairwise (Pick-a-Pic,
ImageReward, HPDv2, and ``t2ialign label pairs``): a rater sees two images of one prompt and says which is
better, or tie. The same MLP on the same CLIP features (and, with ``[reward.image_tower]``, the same tuned
image tower) then learns from P(a preferred over b) = sigmoid(r_a - r_b) (``losses.bradley_terry_loss``),
with the paper's prompt-classification loss (Eq. 2) on the preferred image of each decided pair of a world
prompt, as Eq. 3 puts it on the images labeled good. It is saved and loaded as any ``RewardModel`` and
evaluated by the same Fig. 4 pairwise accuracy (``reward.accuracy``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
from torch import nn

from t2ialign.config import RewardConfig, to_dict
from t2ialign.models.embed import Embeddings, clip_fingerprint
from t2ialign.reward.losses import bradley_terry_loss, reward_loss
from t2ialign.reward.model import RewardMLP, RewardModel
from t2ialign.reward.tower import TowerEmbedder
from t2ialign.reward.train import candidate_prompts, pc_term, train_loop
from t2ialign.store import IMPORTED_SPLIT, Store
from t2ialign.world.prompts import parse_prompt

TRAIN_SPLITS = ("seen", IMPORTED_SPLIT)  # prompts whose pairs may be trained on; unseen ones only evaluate
CHOICE_P_A = {"A": 1.0, "B": 0.0, "tie": 0.5}


def preference_items(store: Store, source: str | None = None) -> list[dict]:
    """One item per answered pair (answers of excluded raters left out), in pair order: pair_id, prompt,
    split, category, image_a, image_b (sha256), n (answers) and p_a, the raters' share preferring image_a
    (a tie counts half)."""
    items: dict[int, dict] = {}
    for r in store.preferences(source=source, include_excluded=False):
        it = items.setdefault(
            r["pair_id"],
            {k: r[k] for k in ("pair_id", "prompt", "split", "category", "image_a", "image_b")}
            | {"votes": []},
        )
        it["votes"].append(CHOICE_P_A[r["choice"]])
    out = []
    for pair_id in sorted(items):
        it = items[pair_id]
        votes = it.pop("votes")
        out.append(it | {"n": len(votes), "p_a": sum(votes) / len(votes)})
    return out


def split_pairs(
    items: list[dict], val_fraction: float, seed: int, held_images: frozenset[str] = frozenset()
) -> tuple[list[dict], list[dict]]:
    """(train, validation) pairs of prompts of TRAIN_SPLITS: a seeded share of them is held out, and so is
    every pair with an image in ``held_images`` (the binary labels' held-out images, so that the Fig. 4
    evaluation on those never scores an image the pairwise reward was trained on)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    pool = sorted(
        (r for r in items if r["split"] in TRAIN_SPLITS), key=lambda r: (r["image_a"], r["image_b"])
    )
    order = list(range(len(pool)))
    random.Random(f"pairs-val:{seed}").shuffle(order)
    val_idx = set(order[: round(val_fraction * len(pool))])
    touches = [bool({r["image_a"], r["image_b"]} & held_images) for r in pool]
    train = [r for i, r in enumerate(pool) if i not in val_idx and not touches[i]]
    val = [r for i, r in enumerate(pool) if i in val_idx and not touches[i]]
    return train, val


def decided_pairs(items: list[dict]) -> list[tuple[dict, dict]]:
    """(preferred, other) image pairs of the pairs the raters decided (p_a != 0.5), as Fig. 4 scores them."""
    out = []
    for r in items:
        if r["p_a"] != 0.5:
            a, b = ({"sha256": r[k], "prompt": r["prompt"]} for k in ("image_a", "image_b"))
            out.append((a, b) if r["p_a"] > 0.5 else (b, a))
    return out


def fit_bradley_terry(
    x_of: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    ab: torch.Tensor,
    p_a: torch.Tensor,
    zc: torch.Tensor,
    pc_ok: torch.Tensor,
    cfg: RewardConfig,
    progress: bool = False,
    tower: nn.Module | None = None,
) -> tuple[RewardMLP, list[float]]:
    """Bradley-Terry training on P pairs: x_of maps image indices (B,) to embeddings (B, D); z (P, D) the
    pairs' prompt embeddings; ab (P, 2) the indices of image a and b; p_a (P,) targets; zc (P, N, D) the
    candidate prompts (the original first) for Eq. 2 on the preferred image where pc_ok (P,) holds."""
    torch.manual_seed(cfg.seed)
    mlp = RewardMLP(z.shape[1], cfg.hidden, cfg.dropout)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x = x_of(ab[idx].reshape(-1)).view(len(idx), 2, -1)  # (B, 2, D): image a, image b
        zb = z[idx]
        bt = bradley_terry_loss(mlp(x[:, 0], zb), mlp(x[:, 1], zb), p_a[idx])
        winner = x[torch.arange(len(idx)), (p_a[idx] < 0.5).long()]  # (B, D): the preferred image
        keep = pc_ok[idx] & (p_a[idx] != 0.5)
        return reward_loss(bt, pc_term(mlp, winner, idx, keep, zc, cfg), cfg.pc_weight)

    return mlp, train_loop(mlp, cfg, len(z), batch_loss, progress, tower)


def _candidates(train: list[dict], cfg: RewardConfig) -> dict[str, list[str]]:
    """Eq. 2's candidate prompts of each world prompt among the training pairs (free captions have none)."""
    world = sorted({r["prompt"] for r in train if r["split"] != IMPORTED_SPLIT})
    shapes = sorted({parse_prompt(p).shape for p in world})
    return {p: candidate_prompts(p, cfg.n_prompts, cfg.seed, shapes) for p in world}


def train_pairwise_reward(
    store: Store,
    cfg: RewardConfig,
    clip,
    processor,
    clip_id: str,
    clip_path: str,
    progress: bool = True,
    held_images: frozenset[str] = frozenset(),
    source: str | None = None,
) -> tuple[RewardModel, dict]:
    """Fit a Bradley-Terry r_phi on the run's answered pairs (of ``source``, or all) of seen or imported
    prompts; returns the model and its training report (as ``train.train_reward``)."""
    train, val = split_pairs(preference_items(store, source), cfg.val_fraction, cfg.seed, held_images)
    if len(train) < 2:
        raise ValueError(
            f"only {len(train)} answered pairs to train on: collect pairwise feedback first "
            "(`t2ialign label pairs create` and the app's /pairs page, `label pairs simulate`, or `label import`)"
        )
    cands = _candidates(train, cfg)
    shas = sorted({r[k] for r in train for k in ("image_a", "image_b")})
    row = {s: i for i, s in enumerate(shas)}
    emb = Embeddings(store, clip, processor)
    texts = {t for c in cands.values() for t in c} | {r["prompt"] for r in train}
    emb.ensure([] if cfg.image_tower.layers else shas, sorted(texts), progress)
    z = emb.texts.get([r["prompt"] for r in train])  # (P, D)
    ab = torch.tensor([[row[r["image_a"]], row[r["image_b"]]] for r in train])  # (P, 2)
    p_a = torch.tensor([r["p_a"] for r in train], dtype=torch.float32)  # (P,)
    pc_ok = torch.tensor([r["prompt"] in cands for r in train])  # (P,)
    blank = torch.zeros(cfg.n_prompts, z.shape[1])
    zc = torch.stack([emb.texts.get(cands[r["prompt"]]) if r["prompt"] in cands else blank for r in train])

    t0 = time.time()
    tower = None
    if cfg.image_tower.layers:
        tower = TowerEmbedder(clip, processor, store, cfg.image_tower.layers)
        x_of = lambda idx: tower.embed([shas[i] for i in idx.tolist()])  # noqa: E731
    else:
        x_of = emb.images.get(shas).__getitem__
    mlp, history = fit_bradley_terry(x_of, z, ab, p_a, zc, pc_ok, cfg, progress, tower)
    seconds = round(time.time() - t0, 2)
    meta = {
        "dim": z.shape[1],
        "hidden": list(cfg.hidden),
        "dropout": cfg.dropout,
        "clip": {"model_id": clip_id, "path": clip_path, "fingerprint": clip_fingerprint(clip)},
        "config": to_dict(cfg),
        "n_train_pairs": len(train),
        "n_val_pairs": len(val),
        "seconds": seconds,
    }
    scorer = None if tower is None else tower.clip.requires_grad_(False).eval()
    report = {"n_train": len(train), "n_val": len(val), "loss_history": history, "seconds": seconds}
    return RewardModel(mlp, meta, clip, processor, scorer_clip=scorer), report
