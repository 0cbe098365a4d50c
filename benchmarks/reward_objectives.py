"""Can another training objective make the reward rank a prompt's images? And what are Fig. 4's pairs about?

Fig. 4 scores pairs of images of one prompt that labelers judged differently. This benchmark first says
what tells the two images of such a pair apart: the judge reads the worse image, and each pair is put
under the attributes the prompt asks for that the judge reads wrong there ("count", "shape", "count+shape",
"none" where the judge finds nothing wrong: a labeler's flip). Then it trains rewards on RUN's labels with
several objectives, on the same CLIP embeddings, train / validation split and seed as ``t2ialign reward
eval``, and prints each one's Fig. 4 accuracy per evaluation set and per cause, beside CLIP score and the
judge's P(match) (the labels' ceiling):

- ``mse``: the paper's Eq. 1-3 (``reward.train.fit_reward``);
- ``centered``: MSE between the reward and the label with each prompt's mean subtracted from both, on
  batches of whole prompts, so that what a prompt's images share cannot lower the loss;
- ``bt_pairs``: Bradley-Terry (``reward.pairwise.fit_bradley_terry``, with Eq. 2 on the preferred image)
  on every pair of a seen prompt's training images whose labels differ, the pairs Fig. 4 scores, made
  from the binary labels;
- ``tower_bt_pairs``: the same with the CLIP image tower tuned too (``--tower-layers``, ``--tower-lr``,
  ``--tower-epochs``; ImageReward's and PickScore's recipe), about 13 minutes for 3 epochs at paper scale.

Run: ``python -m benchmarks.reward_objectives RUN [--objectives mse,centered,bt_pairs,tower_bt_pairs]
[--clip FOLDER]`` (the first three take about 4 minutes at paper scale on 2 cores; another CLIP first
embeds RUN's labeled images, a few minutes more).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from t2ialign.config import RewardConfig
from t2ialign.models.embed import Embeddings
from t2ialign.models.load import load_clip
from t2ialign.reward.accuracy import EVAL_SETS, eval_sets
from t2ialign.reward.data import labeled_images, preference_pairs, split_train_val
from t2ialign.reward.model import RewardMLP
from t2ialign.reward.pairwise import fit_bradley_terry
from t2ialign.reward.tower import TowerEmbedder
from t2ialign.reward.train import fit_reward, pairwise_accuracy, training_tensors
from t2ialign.store import Store
from t2ialign.world import vocab
from t2ialign.world.judge import Judge
from t2ialign.world.prompts import parse_prompt

OBJECTIVES = ("mse", "centered", "bt_pairs", "tower_bt_pairs")


def wrong_attributes(prompt: str, reading: dict) -> str:
    """The attributes ``prompt`` asks for that a judge's ``reading`` (attribute -> (value, p)) gets
    wrong, joined by "+" in vocab order; "none" when it reads every asked attribute as asked."""
    asked = parse_prompt(prompt).constrained()
    return "+".join(a for a in vocab.ATTRIBUTES if a in asked and reading[a][0] != asked[a]) or "none"


def within_prompt_pairs(prompts: list[str], y: torch.Tensor) -> torch.Tensor:
    """(P, 2) indices (better, worse) of every pair of items of one prompt whose targets y differ."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_prompt[p].append(i)
    pairs = [(i, j) for idx in by_prompt.values() for i in idx for j in idx if y[i] > y[j]]
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


def fit_centered(
    x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, prompts: list[str], cfg: RewardConfig
) -> RewardMLP:
    """The reward MLP fit by MSE between per-prompt centered rewards and targets, 32 prompts a batch."""
    torch.manual_seed(cfg.seed)
    mlp = RewardMLP(x.shape[1], cfg.hidden, cfg.dropout)
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    index = [torch.tensor(v) for v in groups.values()]
    rng = np.random.default_rng(cfg.seed)
    mlp.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(index))
        for s in range(0, len(order), 32):
            batch = [index[k] for k in order[s : s + 32]]
            idx = torch.cat(batch)
            gid = torch.cat([torch.full((len(g),), k) for k, g in enumerate(batch)])
            loss = F.mse_loss(_centered(mlp(x[idx], z[idx]), gid), _centered(y[idx], gid))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.eval()


def _centered(v: torch.Tensor, gid: torch.Tensor) -> torch.Tensor:
    """v (B,) minus the mean of its group; gid (B,) the group of each entry, 0..G-1."""
    n = torch.bincount(gid).float()
    return v - (torch.zeros(len(n)).index_add(0, gid, v) / n)[gid]


def fit_tower_bt(store, clip, processor, train, z, zc, ab, cfg: RewardConfig, args):
    """Bradley-Terry on the pairs ``ab`` of ``train`` with the CLIP image tower tuned: the MLP and a
    function from items to their image embeddings through the tuned tower."""
    tower_cfg = replace(cfg.image_tower, layers=args.tower_layers, lr=args.tower_lr)
    c = replace(cfg, epochs=args.tower_epochs, image_tower=tower_cfg)
    tower = TowerEmbedder(clip, processor, store, args.tower_layers)
    shas = [r["sha256"] for r in train]

    def x_of(idx: torch.Tensor) -> torch.Tensor:
        return tower.embed([shas[i] for i in idx.tolist()])

    ones, keep = torch.ones(len(ab)), torch.ones(len(ab), dtype=torch.bool)
    mlp, _ = fit_bradley_terry(x_of, z[ab[:, 0]], ab, ones, zc[ab[:, 0]], keep, c, True, tower)
    tower.eval()
    return mlp, lambda chunk: tower.embed([r["sha256"] for r in chunk]).float()


def accuracy_line(name: str, scores: dict[str, float], pairs: dict, cause: dict, seconds: float) -> str:
    parts = []
    for k in EVAL_SETS:
        by_cause: dict[str, list] = defaultdict(list)
        for a, b in pairs[k]:
            by_cause[cause[b["sha256"]]].append((a, b))
        top = sorted(by_cause.items(), key=lambda t: -len(t[1]))[:4]
        sub = " ".join(f"{c} {pairwise_accuracy(scores, q):.0%}" for c, q in top)
        parts.append(f"{k} {pairwise_accuracy(scores, pairs[k]):.1%} ({sub})")
    return f"{name:15s} {seconds:5.0f} s  " + " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory with labels")
    parser.add_argument("--objectives", default="mse,centered,bt_pairs", help=f"of {', '.join(OBJECTIVES)}")
    parser.add_argument("--clip", help="a local CLIP folder for the rewards (default: the world CLIP)")
    parser.add_argument("--tower-layers", type=int, default=-1, help="tower_bt_pairs: -1 = the whole tower")
    parser.add_argument("--tower-lr", type=float, default=3e-4)
    parser.add_argument("--tower-epochs", type=int, default=3)
    args = parser.parse_args()
    objectives = args.objectives.split(",")
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        parser.error(f"unknown objectives {sorted(unknown)}; choose from {', '.join(OBJECTIVES)}")

    cfg = RewardConfig(clip=args.clip)
    clip, processor, clip_id = load_clip(cfg.clip)
    with Store.open(args.run) as store:
        items = labeled_images(store)
        train, _ = split_train_val(items, cfg.val_fraction, cfg.seed)
        sets = eval_sets(store, cfg)
        emb = Embeddings(store, clip, processor)
        z, y, good, zc = training_tensors(train, items, emb, cfg, progress=True)
        x = emb.images.get([r["sha256"] for r in train])
        ab = within_prompt_pairs([r["prompt"] for r in train], y)

        evaluated = list({r["sha256"]: r for v in sets.values() for r in v}.values())
        verdicts = Judge.load().judge(
            [store.image_array(r["sha256"]) for r in evaluated], [r["prompt"] for r in evaluated]
        )
        cause = {
            r["sha256"]: wrong_attributes(r["prompt"], v.reading)
            for r, v in zip(evaluated, verdicts, strict=True)
        }
        pairs = {k: preference_pairs(v) for k, v in sets.items()}
        print(
            f"{args.run}, CLIP {clip_id}: {len(train)} training images, {len(ab)} within-prompt pairs of them"
        )
        for k in EVAL_SETS:
            causes = Counter(cause[b["sha256"]] for _, b in pairs[k])
            print(
                f"{k}: {len(pairs[k])} pairs; what the judge reads wrong in the worse image: "
                + ", ".join(f"{c} {n / len(pairs[k]):.0%}" for c, n in causes.most_common(5))
            )

        def scores_of(mlp, images=None) -> dict[str, float]:
            """The reward of every evaluated item; images(chunk) -> embeddings (default: the frozen)."""
            mlp.eval()
            out = {}
            with torch.no_grad():
                for i in range(0, len(evaluated), 1024):
                    chunk = evaluated[i : i + 1024]
                    x_c = images(chunk) if images else emb.images.get([r["sha256"] for r in chunk])
                    z_c = emb.texts.get([r["prompt"] for r in chunk])
                    out |= {r["sha256"]: float(v) for r, v in zip(chunk, mlp(x_c, z_c), strict=True)}
            return out

        ones, keep = torch.ones(len(ab)), torch.ones(len(ab), dtype=torch.bool)
        for name in objectives:
            t0 = time.time()
            if name == "mse":
                scores = scores_of(fit_reward(x, z, y, good, zc, cfg)[0])
            elif name == "centered":
                scores = scores_of(fit_centered(x, z, y, [r["prompt"] for r in train], cfg))
            elif name == "bt_pairs":
                mlp, _ = fit_bradley_terry(x.__getitem__, z[ab[:, 0]], ab, ones, zc[ab[:, 0]], keep, cfg)
                scores = scores_of(mlp)
            else:
                scores = scores_of(*fit_tower_bt(store, clip, processor, train, z, zc, ab, cfg, args))
            print(accuracy_line(name, scores, pairs, cause, time.time() - t0), flush=True)
        xe = emb.images.get([r["sha256"] for r in evaluated])
        ze = emb.texts.get([r["prompt"] for r in evaluated])
        clip_score = {r["sha256"]: float(s) for r, s in zip(evaluated, (xe * ze).sum(-1), strict=True)}
        print(accuracy_line("CLIP score", clip_score, pairs, cause, 0.0))
        ceiling = {r["sha256"]: v.p_match for r, v in zip(evaluated, verdicts, strict=True)}
        print(accuracy_line("judge P(match)", ceiling, pairs, cause, 0.0))


if __name__ == "__main__":
    main()
