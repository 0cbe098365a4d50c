"""Why the reward's pairwise accuracy (Fig. 4) is what it is: two probes.

1. The ceiling set by the labels: on Fig. 4's evaluation pairs of RUN, the pairwise accuracy of the judge's
   own P(match) (the program the simulated labelers follow before their flips and skips), beside the reward
   saved in RUN/reward and CLIP score. A scorer cannot beat the labels' own noise; the judge shows how close
   to 100% a perfect reader of the images gets. Beside it, each scorer's AUC of good against bad images
   of any prompt: high there and at chance in Fig. 4 means the scorer tells prompts apart, not images.
2. What the CLIP image embedding holds: a linear probe (logistic regression, torch) per attribute on the
   world CLIP's image embeddings of fresh renders (train 3,000 / test 1,000), placed as the shipped world
   pipeline was pre-trained to place its shapes (``--layout`` to choose: dice for v7, random before). The
   reward is an MLP on these embeddings; an attribute the embedding does not hold, the reward cannot score.
3. The same probe on the model's own images: RUN's D_human images (``--generated N`` of them, 0 to skip),
   each attribute's target being the judge's reading where the judge is sure of it (probability >= 0.9),
   train 3/4, test 1/4. Renders are clean; the model's images are what the reward actually scores.

Run: ``python -m benchmarks.reward_probes RUN`` (RUN: a run with labels and a trained reward, e.g.
``runs/demo``; about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from PIL import Image

from t2ialign.config import RewardConfig
from t2ialign.finetune.data import world_layout
from t2ialign.models.embed import Embeddings, embed_images
from t2ialign.models.load import load_clip
from t2ialign.reward.accuracy import EVAL_SETS, eval_sets
from t2ialign.reward.data import preference_pairs
from t2ialign.reward.model import RewardModel
from t2ialign.reward.train import pairwise_accuracy, score_items
from t2ialign.store import Store
from t2ialign.world import vocab
from t2ialign.world.dataset import PretrainDataset
from t2ialign.world.judge import HEAD_VALUES, Judge
from t2ialign.world.render import render


def label_ceiling(run: str, clip, processor) -> None:
    judge = Judge.load()
    with Store.open(run) as store:
        sets = eval_sets(store, RewardConfig())
        emb = Embeddings(store, clip, processor)
        emb.ensure(
            [r["sha256"] for v in sets.values() for r in v],
            sorted({r["prompt"] for v in sets.values() for r in v}),
        )
        reward = RewardModel.load(store.run_dir / "reward")
        for k in EVAL_SETS:
            items, pairs = sets[k], preference_pairs(sets[k])
            if not pairs:
                print(f"{k:15s} no pairs")
                continue
            ims = [store.image_array(r["sha256"]) for r in items]
            verdicts = judge.judge(ims, [r["prompt"] for r in items])
            scorers = {
                "judge P(match)": {r["sha256"]: v.p_match for r, v in zip(items, verdicts, strict=True)},
                "reward": score_items(items, emb, reward),
                "CLIP score": score_items(items, emb, None),
            }
            cats = Counter(a["category"] for a, _ in pairs)
            print(
                f"{k:15s} {len(pairs):6d} pairs ({', '.join(f'{c} {n}' for c, n in cats.most_common())}): "
                + "  ".join(f"{name} {pairwise_accuracy(s, pairs):.1%}" for name, s in scorers.items())
            )
            print(
                f"{k:15s} good against bad images of any prompt (AUC): "
                + "  ".join(f"{name} {across_prompts_auc(s, items):.1%}" for name, s in scorers.items())
            )


def across_prompts_auc(scores: dict[str, float], items: list[dict]) -> float:
    """P(a good image scores above a bad one), over every (good, bad) pair whatever their prompts (the
    labelers' mean ``y`` above or below 1/2). Fig. 4 pairs images of one prompt only; a scorer that has
    learned which prompts the model draws well, and not which of a prompt's images are right, is high here
    and at chance there."""
    good = np.array([scores[r["sha256"]] for r in items if r["y"] > 0.5])
    bad = np.array([scores[r["sha256"]] for r in items if r["y"] < 0.5])
    if not len(good) or not len(bad):
        return float("nan")
    # every (good, bad) pair compared, a tie counting half (Fig. 4's sets hold a few thousand images)
    diff = good[:, None] - bad[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _probe(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int = 500) -> float:
    """Test accuracy of a logistic regression trained on the first ``n_train`` rows, tested on the rest."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[:n_train]), y[:n_train]).backward()
        opt.step()
    with torch.no_grad():
        return (lin(x[n_train:]).argmax(1) == y[n_train:]).float().mean().item()


def linear_probe(clip, processor, layout: str, n_train: int = 3000, n_test: int = 1000) -> None:
    ds = PretrainDataset(n_train + n_test, seed=321)
    specs = [ds.scene(i)[0] for i in range(n_train + n_test)]
    images = [Image.fromarray(render(s, seed=i, layout=layout).image) for i, s in enumerate(specs)]
    x = embed_images(clip, processor, images).float()
    for attr in vocab.ATTRIBUTES:
        values = vocab.values(attr)
        y = torch.tensor([vocab.index(attr, getattr(s, attr)) for s in specs])
        acc = _probe(x, y, n_train)
        print(
            f"linear probe on world-CLIP image embeddings of {layout}-layout renders: "
            f"{attr:10s} {acc:.1%} (chance {1 / len(values):.0%})"
        )


def generated_probe(run: str, clip, processor, n: int, sure: float = 0.9) -> None:
    """The linear probe on RUN's own D_human images, the judge's sure readings as targets."""
    with Store.open(run) as store:
        rows = store.list_images(role="human")
        rng = np.random.default_rng(0)
        # a random order: the store holds each prompt's images together, and the split below is by order
        rows = [rows[i] for i in rng.permutation(len(rows))[:n]]
        shas = [r["sha256"] for r in rows]
        ims = [store.image_array(s) for s in shas]
        emb = Embeddings(store, clip, processor)  # the run's cache: the reward stage embedded these already
        emb.ensure(shas, [])
        x_all = emb.images.get(shas).float()
    verdicts = Judge.load().judge(ims, [r["prompt"] for r in rows])
    for attr in vocab.ATTRIBUTES:
        keep = [i for i, v in enumerate(verdicts) if v.reading[attr][1] >= sure]
        if len(keep) < 40:
            print(f"linear probe on {run}'s own images: {attr:10s} too few sure readings ({len(keep)})")
            continue
        y = torch.tensor([HEAD_VALUES[attr].index(verdicts[i].reading[attr][0]) for i in keep])
        n_train = 3 * len(keep) // 4
        acc = _probe(x_all[keep], y, n_train)
        majority = Counter(y[n_train:].tolist()).most_common(1)[0][1] / (len(keep) - n_train)
        print(
            f"linear probe on {run}'s own images: {attr:10s} {acc:.1%} "
            f"(majority class {majority:.0%}; {len(keep)} of {len(rows)} images read surely)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory with labels and RUN/reward")
    parser.add_argument(
        "--layout", help="layout of the probe's renders (default: the shipped world pipeline's own)"
    )
    parser.add_argument("--generated", type=int, default=8000, help="RUN's own images to probe on (0: skip)")
    args = parser.parse_args()
    clip, processor, _ = load_clip()
    label_ceiling(args.run, clip, processor)
    linear_probe(clip, processor, args.layout or world_layout(None))
    if args.generated:
        generated_probe(args.run, clip, processor, args.generated)


if __name__ == "__main__":
    main()
