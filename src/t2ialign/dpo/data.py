"""Preference pairs for Diffusion-DPO, and their latents encoded once.

A pair is (prompt, winner, loser): two images of one prompt, the winner preferred. ``pairs_from_labels``
forms them from the paper's binary feedback; a sibling function over pairwise feedback (a store table of
A-versus-B choices) can return the same ``PreferencePair`` list, and the trainer takes either.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from t2ialign.core.seeds import stable_seed
from t2ialign.finetune.data import LatentSet, build_model_set
from t2ialign.store import Store


@dataclass(frozen=True)
class PreferencePair:
    """Two images of one prompt, ``winner_sha256`` preferred over ``loser_sha256``."""

    prompt: str
    winner_sha256: str
    loser_sha256: str


def majority_label(labels: list[str]) -> str | None:
    """ "good" or "bad" when more labelers said so than the other; None for skips only or a tie."""
    good, bad = labels.count("good"), labels.count("bad")
    return "good" if good > bad else "bad" if bad > good else None


def pairs_from_labels(
    store: Store,
    max_pairs_per_prompt: int = 0,
    seed: int = 0,
    role: str = "human",
    split: str | None = "seen",
) -> list[PreferencePair]:
    """Every (good, bad) pair of images of one prompt, by each image's majority label among the
    (non-excluded) labelers; skips are no vote, and a tie leaves the image out.

    Images of ``role`` and of prompts of ``split`` (None: any split; "seen": the feedback prompts, as
    finetune's D_model). ``max_pairs_per_prompt`` = k > 0 keeps a draw of k of a prompt's pairs, seeded
    by (seed, prompt), so the same store and seed give the same pairs. Sorted by prompt, winner, loser.
    """
    from t2ialign.reward.data import labeled_images

    if max_pairs_per_prompt < 0:
        raise ValueError(f"max_pairs_per_prompt must be >= 0, got {max_pairs_per_prompt}")
    votes: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"good": [], "bad": []})
    for r in labeled_images(store, role):
        label = majority_label(r["labels"])
        if label is not None and (split is None or r["split"] == split):
            votes[r["prompt"]][label].append(r["sha256"])
    pairs = []
    for prompt in sorted(votes):
        good, bad = sorted(votes[prompt]["good"]), sorted(votes[prompt]["bad"])
        group = [PreferencePair(prompt, w, lo) for w in good for lo in bad]
        if max_pairs_per_prompt and len(group) > max_pairs_per_prompt:
            rng = random.Random(stable_seed("dpo-pairs", seed, prompt, bits=64))
            group = sorted(rng.sample(group, max_pairs_per_prompt), key=_order)
        pairs += group
    return pairs


def pairs_from_preferences(
    store: Store, max_pairs_per_prompt: int = 0, seed: int = 0
) -> list[PreferencePair]:
    """The pairs that pairwise feedback decided (``t2ialign label pairs``, or an imported public set): for
    each answered pair of a seen or imported prompt, its two images, the one most raters preferred
    first; ties (as many for each, or all "tie") are left out. Answers of excluded raters do not count.
    ``max_pairs_per_prompt`` and ``seed`` as in :func:`pairs_from_labels`. Sorted by prompt, winner, loser.
    """
    from t2ialign.reward.pairwise import TRAIN_SPLITS, decided_pairs, preference_items

    if max_pairs_per_prompt < 0:
        raise ValueError(f"max_pairs_per_prompt must be >= 0, got {max_pairs_per_prompt}")
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    items = [r for r in preference_items(store) if r["split"] in TRAIN_SPLITS]
    for won, lost in decided_pairs(items):
        by_prompt[won["prompt"]].append(PreferencePair(won["prompt"], won["sha256"], lost["sha256"]))
    pairs = []
    for prompt in sorted(by_prompt):
        group = sorted(by_prompt[prompt], key=_order)
        if max_pairs_per_prompt and len(group) > max_pairs_per_prompt:
            rng = random.Random(stable_seed("dpo-pairs", seed, prompt, bits=64))
            group = sorted(rng.sample(group, max_pairs_per_prompt), key=_order)
        pairs += group
    return pairs


def _order(p: PreferencePair) -> tuple[str, str, str]:
    return p.prompt, p.winner_sha256, p.loser_sha256


@dataclass
class PairSet:
    """P pairs over N distinct images: the images' latents once, and each pair's two rows of them."""

    images: LatentSet  # (N, ...) every image of a pair, once, sorted by sha256
    winner: torch.Tensor  # (P,) long: row of the winner in ``images``
    loser: torch.Tensor  # (P,) long: row of the loser
    pairs: list[PreferencePair]

    def __len__(self) -> int:
        return len(self.pairs)


def build_pair_set(store: Store, pipe, pairs: list[PreferencePair], progress: bool = False) -> PairSet:
    """Encode the pairs' images once (VAE posteriors and text states, cached as finetune's D_model is)."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    prompt_of: dict[str, str] = {}
    for p in pairs:
        for sha in (p.winner_sha256, p.loser_sha256):
            if prompt_of.setdefault(sha, p.prompt) != p.prompt:
                raise ValueError(
                    f"image {sha} appears in pairs of two prompts: {prompt_of[sha]!r}, {p.prompt!r}"
                )
        if p.winner_sha256 == p.loser_sha256:
            raise ValueError(f"pair of prompt {p.prompt!r} has the same image {p.winner_sha256} twice")
    items = [{"sha256": sha, "prompt": prompt_of[sha], "weight": 1.0} for sha in sorted(prompt_of)]
    images = build_model_set(store, pipe, items, progress)
    row = {k: i for i, k in enumerate(images.keys)}
    return PairSet(
        images=images,
        winner=torch.tensor([row[p.winner_sha256] for p in pairs]),
        loser=torch.tensor([row[p.loser_sha256] for p in pairs]),
        pairs=pairs,
    )
